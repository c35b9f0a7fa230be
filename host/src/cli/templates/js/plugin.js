// The {{name}} plugboard plugin.
//
// A returned string is the reply (`text<EOF>`); a thrown string is an error
// reply (`error: message<EOF>`).

import { log } from 'plugboard:plugin/host@0.1.1';

export function commands() {
  return [{ name: 'hello', summary: 'Greet the first argument (or the world)' }];
}

export function handle(request) {
  if (request.command !== 'hello') {
    throw `{{name}} does not handle '${request.command}'`;
  }
  const who = request.args[0] ?? 'world';
  log('info', `greeting ${who}`);
  return `hello, ${who}`;
}
