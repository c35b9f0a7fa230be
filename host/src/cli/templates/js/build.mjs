// Builds plugin.js into a component: node build.mjs OUTPUT.wasm
//
// The component's entry is a small module (written next to plugin.js as
// .plugboard-entry.js) that calls plugin.js and turns whatever handle()
// throws into an error reply: componentize-js itself takes only a thrown
// string, and aborts the call on an Error, losing its message. The Error's
// stack goes to the server's log. A syntax error is reported with its line.
// The entry also serves batches (the `batched-plugin` world): a client's
// pipelined commands in one call, each through handle() as alone, since a
// call into the component costs more than a small command; plugboard.js
// (the SDK) decodes them.
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { componentize } from '@bytecodealliance/componentize-js';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const output = process.argv[2] ?? '{{file}}.wasm';

const entry = `import * as plugin from './plugin.js';
import { batchRequests, reply } from '{{sdk}}';
import { log } from 'plugboard:plugin/host@0.1.4';

export function commands() {
  return plugin.commands();
}

export function handle(request) {
  try {
    return plugin.handle(request);
  } catch (thrown) {
    throw errorMessage(request, thrown);
  }
}

export function serveBatch() {
  for (const request of batchRequests()) {
    try {
      reply({ tag: 'ok', val: plugin.handle(request) });
    } catch (thrown) {
      reply({ tag: 'err', val: errorMessage(request, thrown) });
    }
  }
}

function errorMessage(request, thrown) {
  if (thrown instanceof Error) {
    const stack = (thrown.stack ?? '').split('\\n').filter((line) => line && !line.includes('plugboard-entry.js') && !line.includes('initializer.js'));
    log('warn', [\`\${request.command}: \${thrown.name}: \${thrown.message}\`, ...stack].join('\\n    at '));
    return thrown.message;
  }
  return String(thrown);
}
`;
await writeFile(here('./.plugboard-entry.js'), entry);

try {
  const { component } = await componentize({
    sourcePath: here('./.plugboard-entry.js'),
    witPath: here('{{wit}}'),
    worldName: 'batched-plugin',
    // wasi:http and fetch are left out; the component stays smaller.
    disableFeatures: ['http', 'fetch-event'],
  });
  await writeFile(output, component);
  console.log(`built ${output} (${component.length} bytes)`);
} catch (err) {
  // componentize-js's message names the file, line and column.
  console.error(`cannot build ${output}:\n${err.message}`);
  process.exit(1);
}
