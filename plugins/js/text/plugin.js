// The text plugin: `upper TEXT` and `json-get PATH JSON`, written in
// JavaScript against plugboard's WIT contract and built with componentize-js.
//
// A returned string is the reply; a thrown Error (or string) is an error
// reply with its message.

import { log } from 'plugboard:plugin/host@0.1.4';

export function commands() {
  return [
    { name: 'upper', summary: 'Reply with the text in upper case' },
    { name: 'json-get', summary: 'Reply with the value at a dotted PATH in a JSON document' },
  ];
}

export function handle(request) {
  switch (request.command) {
    case 'upper':
      return request.rawArgs.toUpperCase();
    case 'json-get':
      return jsonGet(request.rawArgs);
    default:
      throw new Error(`unexpected command '${request.command}'`);
  }
}

/// `a.b.0 {"a":{"b":[42]}}` -> `42`. Strings come back without quotes.
function jsonGet(rawArgs) {
  const space = rawArgs.search(/\s/);
  if (space < 0) {
    throw new Error('usage: json-get PATH JSON');
  }
  const path = rawArgs.slice(0, space);
  let value;
  try {
    value = JSON.parse(rawArgs.slice(space + 1));
  } catch (err) {
    throw new Error(`invalid JSON: ${err.message}`);
  }
  for (const key of path.split('.')) {
    if (value === null || typeof value !== 'object' || !(key in value)) {
      throw new Error(`no value at '${path}'`);
    }
    value = value[key];
  }
  log('debug', `json-get ${path}`);
  return typeof value === 'string' ? value : JSON.stringify(value);
}
