// Builds plugin.js into a component: node build.mjs OUTPUT.wasm
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { componentize } from '@bytecodealliance/componentize-js';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const output = process.argv[2] ?? '{{file}}.wasm';

const { component } = await componentize({
  sourcePath: here('./plugin.js'),
  witPath: here('./wit'),
  worldName: 'plugin',
  // The default features import wasi:http; plugboard offers plugins no network.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(output, component);
console.log(`built ${output}`);
