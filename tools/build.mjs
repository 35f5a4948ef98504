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
  // onnxruntime-node (optional text embedder, adapt/embedder.ts) ships its own binaries and is required lazily.
  external: ['vscode', '*.node', 'onnxruntime-node'],
};

const builds = [
  { ...common, entryPoints: ['extension/src/extension.ts'], outfile: 'dist/extension.js' },
  { ...common, entryPoints: ['extension/src/cli/main.ts'], outfile: 'dist/cli.js' },
  // The engine process the extension host forks (engine/host.ts): a native crash there spares the host.
  { ...common, entryPoints: ['extension/src/engineProcess.ts'], outfile: 'dist/engine-worker.js' },
  // The routing panel's webview app (webview/src) and its stylesheet, loaded by extension/src/views/routingPanel.ts.
  {
    ...common,
    platform: 'browser',
    format: 'iife',
    target: 'es2022',
    external: [],
    entryPoints: { routing: 'webview/src/main.ts', 'routing-style': 'webview/src/routing.css' },
    outdir: 'dist/webview',
    entryNames: '[name]',
  },
  // The statistics panel's webview app (webview/src/stats), loaded by extension/src/views/statsPanel.ts.
  {
    ...common,
    platform: 'browser',
    format: 'iife',
    target: 'es2022',
    external: [],
    entryPoints: { stats: 'webview/src/stats/main.ts', 'stats-style': 'webview/src/stats/stats.css' },
    outdir: 'dist/webview',
    entryNames: '[name]',
  },
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
  const entries = [...testEntries('test/unit'), ...testEntries('test/cli'), ...testEntries('test/e2e')];
  for (const entry of entries) {
    const out = join('test/out', relative('test', entry)).replace(/\.ts$/, '.js');
    // The end-to-end tests drive chromium through playwright-core, loaded from node_modules at run time.
    builds.push({ ...common, entryPoints: [entry], outfile: out, external: [...common.external, 'playwright-core'] });
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
