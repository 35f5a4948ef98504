// `npm run package` makes a linux-x64 .vsix with runtime files only; it installs into code-server, and the
// installed copy's engine process (dist/engine-worker.js + build/Release/routescope.node) opens a model and runs.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT, PARITY_DIR } from '../helpers/cli';
import { EngineHost } from '../../extension/src/engine/host';

// The .vsix and the code-server profile it is installed into (outside test/out, where the suites are collected).
const OUT = path.join(ROOT, '.cache', 'e2e', 'package');

test('npm run package → a linux-x64 .vsix that installs into code-server and whose engine runs', async () => {
  fs.rmSync(OUT, { recursive: true, force: true });
  fs.mkdirSync(OUT, { recursive: true });
  const vsix = path.join(OUT, 'routescope.vsix');
  const made = spawnSync(process.execPath, [path.join(ROOT, 'tools', 'package.mjs'), '--out', vsix], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(made.status, 0, made.stdout + made.stderr);
  const size = fs.statSync(vsix).size;
  console.log(`# ${path.relative(ROOT, vsix)}: ${(size / 2 ** 20).toFixed(1)} MiB`);

  const tools = (await import(pathToFileURL(path.join(ROOT, 'tools', 'code-server.mjs')).href)) as {
    ensureCodeServer(): { nodeBin: string; entry: string };
  };
  const install = tools.ensureCodeServer();
  const extensions = path.join(OUT, 'ext');
  const env = { ...process.env, TMPDIR: OUT, XDG_CONFIG_HOME: path.join(OUT, 'config'), XDG_DATA_HOME: path.join(OUT, 'data') };
  const codeServer = (...args: string[]) =>
    spawnSync(install.nodeBin, [install.entry, '--user-data-dir', path.join(OUT, 'ud'), '--extensions-dir', extensions, ...args], { encoding: 'utf8', env, timeout: 120_000 });
  const installed = codeServer('--install-extension', vsix);
  assert.equal(installed.status, 0, installed.stdout + installed.stderr);
  const listed = codeServer('--list-extensions', '--show-versions');
  const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { publisher: string; name: string; version: string };
  assert.match(listed.stdout, new RegExp(`${manifest.publisher}\\.${manifest.name}@${manifest.version.replace(/\./g, '\\.')}`), listed.stdout + listed.stderr);

  const folder = fs.readdirSync(extensions).find((d) => d.startsWith(`${manifest.publisher}.${manifest.name}-`));
  assert.ok(folder, `installed folder in ${fs.readdirSync(extensions).join(', ')}`);
  const dir = path.join(extensions, folder);
  for (const file of ['package.json', 'dist/extension.js', 'dist/engine-worker.js', 'dist/webview/routing.js', 'build/Release/routescope.node', 'media/routescope.svg']) {
    assert.ok(fs.existsSync(path.join(dir, file)), `${file} is in the package`);
  }
  const all = fs.readdirSync(dir, { recursive: true }).map(String);
  const stray = all.filter((f) => /\.(ts|map|cpp|h|cu)$/.test(f) && !f.endsWith('.d.ts') || /^(test|native|extension|webview|tools|bench)\//.test(f));
  assert.deepEqual(stray, [], 'only runtime files');

  // The installed engine, forked from the installed folder, opens a model and routes tokens.
  const host = new EngineHost({ workerPath: path.join(dir, 'dist', 'engine-worker.js') });
  try {
    const loaded = await host.load({ dir: path.join(PARITY_DIR, 'qwen3_moe-fused-f32', 'model'), threads: 1 });
    assert.equal(loaded.info.modelType, 'qwen3_moe');
    const result = await host.request('inspect', { tokens: Int32Array.of(1, 2, 3), logits: 'last' });
    assert.equal(result.rows, 1);
  } finally {
    host.dispose();
  }
});
