// Bundles the TypeScript with esbuild: the extension host entry, the CLI and (with --tests) the node:test suites.
//   node tools/build.mjs [--tests] [--production] [--watch]
import * as esbuild from 'esbuild';
import { readdirSync, existsSync, rmSync } from 'node:fs';
import { join, dirname, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = new Set(process.argv.slice(2));
const production = args.has('--production');

const common = {
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  sourcemap: production ? false : 'linked',
  minify: production,
  logLevel: 'warning',
  absWorkingDir: root,
  // The addon is loaded at run time from build/Release (engine/addon.ts); vscode is provided by the host.
  external: ['vscode', '*.node'],
};

const builds = [
  { ...common, entryPoints: ['extension/src/extension.ts'], outfile: 'dist/extension.js' },
  { ...common, entryPoints: ['extension/src/cli/main.ts'], outfile: 'dist/cli.js' },
];

function testEntries(dir) {
  if (!existsSync(join(root, dir))) return [];
  return readdirSync(join(root, dir), { recursive: true })
    .map(String)
    .filter((f) => f.endsWith('.test.ts'))
    .map((f) => join(dir, f));
}

if (args.has('--tests')) {
  rmSync(join(root, 'test/out'), { recursive: true, force: true });
  const entries = [...testEntries('test/unit'), ...testEntries('test/cli')];
  for (const entry of entries) {
    const out = join('test/out', relative('test', entry)).replace(/\.ts$/, '.js');
    builds.push({ ...common, entryPoints: [entry], outfile: out });
  }
}

try {
  if (args.has('--watch')) {
    for (const options of builds) await (await esbuild.context(options)).watch();
    console.log('routescope: watching for changes');
  } else {
    await Promise.all(builds.map((options) => esbuild.build(options)));
  }
} catch (error) {
  // esbuild has already printed the diagnostics.
  process.exitCode = 1;
}
