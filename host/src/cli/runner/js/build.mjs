// Builds the JavaScript runner: node build.mjs OUTPUT.wasm [PROJECT_DIR]
//
// The runner is built once; it reads plugin.js at run time. With PROJECT_DIR,
// the `dependencies` of PROJECT_DIR/package.json (installed in its
// node_modules) are bundled into the runner, so that plugin.js can import
// them by name: rebuild the runner when package.json changes.
//
// componentize-js takes one source file, and StarlingMonkey resolves only
// relative imports at build time (no node_modules lookup), so runner.js,
// rewrite.js and the dependencies are bundled by rolldown first.
import { readFile, writeFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join, resolve } from 'node:path';
import { rolldown } from 'rolldown';
import { componentize } from '@bytecodealliance/componentize-js';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const output = resolve(process.argv[2] ?? 'runner.wasm');
const project = process.argv[3] && resolve(process.argv[3]);

// The dependencies module: { 'name': namespace } for each dependency.
let depsPath = here('./.runner-deps.js');
let names = [];
if (project) {
  const pkg = JSON.parse(await readFile(join(project, 'package.json'), 'utf8'));
  names = Object.keys(pkg.dependencies ?? {}).sort();
  // Written beside the project's node_modules, so that names resolve there.
  depsPath = join(project, '.runner-deps.js');
}
await writeFile(depsPath,
  names.map((name, i) => `import * as d${i} from ${JSON.stringify(name)};\n`).join('') +
  `export const packages = { ${names.map((name, i) => `${JSON.stringify(name)}: d${i}`).join(', ')} };\n`);

const started = Date.now();
const bundlePath = here('./.runner-bundle.js');
const bundle = await rolldown({
  input: here('./runner.js'),
  platform: 'neutral',
  external: [/^plugboard:/, /^wasi:/],
  plugins: [{
    name: 'runner-deps',
    resolveId: (id) => (id === './.runner-deps.js' ? depsPath : null),
  }],
  logLevel: 'warn',
});
await bundle.write({ file: bundlePath, format: 'esm' });
await bundle.close();
const bundled = Date.now();

try {
  const { component } = await componentize({
    sourcePath: bundlePath,
    witPath: here('./wit'),
    worldName: 'runner',
    // wasi:http and fetch are left out; the component stays smaller.
    disableFeatures: ['http', 'fetch-event'],
  });
  await writeFile(output, component);
  console.log(`built ${output} (${component.length} bytes; ` +
    `${names.length ? `dependencies: ${names.join(', ')}; ` : ''}` +
    `bundle ${bundled - started} ms, componentize ${Date.now() - bundled} ms)`);
} catch (err) {
  console.error(`cannot build ${output}:\n${err.message}`);
  process.exit(1);
} finally {
  if (project && existsSync(depsPath)) await rm(depsPath);
}
