// The {{name}} plugboard plugin.
//
// A returned string is the reply (`text<EOF>`). A thrown Error (or string)
// is an error reply (`error: <its message><EOF>`), its stack in the server's
// log: see build.mjs.

import { log } from 'plugboard:plugin/host@0.1.4';

const COMMAND = '{{name}}';

export function commands() {
  return [{ name: COMMAND, summary: 'Greet the first argument (or the world)' }];
}

export function handle(request) {
  if (request.command !== COMMAND) {
    throw new Error(`${COMMAND} does not handle '${request.command}'`);
  }
  const who = request.args[0] ?? 'world';
  log('info', `greeting ${who}`);
  return `hello, ${who}`;
}

// To run another command, as a client would send it (grant it in
// `allow_commands` of [plugins.{{name}}] in the server's config):
//   import { call } from 'plugboard:plugin/commands@0.1.4';
//   const reply = call('on'); // throws for an error reply
