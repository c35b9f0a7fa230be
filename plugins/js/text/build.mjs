// Builds plugin.js into a component: node build.mjs OUTPUT.wasm
// Uses componentize-js's API (its CLI through jco failed here).
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { componentize } from '@bytecodealliance/componentize-js';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const output = process.argv[2] ?? 'text.wasm';

const { component } = await componentize({
  sourcePath: here('./plugin.js'),
  witPath: here('../../../wit'),
  worldName: 'plugin',
  // The default features pull in wasi:http; plugboard offers plugins no network.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(output, component);
console.log(`built ${output} (${component.length} bytes)`);
