// `npm test`: the engine's C++ tests (build/rs_tests test/fixtures), then node --test over the bundled unit and CLI
// tests in test/out (built by `node tools/build.mjs --tests`), then a short seeded fuzz run of every fuzz target
// (tools/fuzz.mjs --quick, about a minute), then the end-to-end tests. Ends with node's summary lines.
//   node test/helpers/run-tests.mjs [--native-only] [--no-e2e] [--no-fuzz]
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const nativeOnly = process.argv.includes('--native-only');

const candidates = ['build/rs_tests', 'build/Release/rs_tests'].map((p) => join(root, p));
const rsTests = candidates.find((p) => existsSync(p));
let failed = false;
if (!rsTests) {
  console.error(`routescope: the engine tests are not built (${candidates.join(' or ')} missing): run npm ci`);
  failed = true;
} else {
  console.log(`# ${rsTests} test/fixtures`);
  const native = spawnSync(rsTests, [join(root, 'test', 'fixtures')], { stdio: 'inherit', cwd: root });
  if (native.status !== 0) {
    console.error(`routescope: engine tests failed (${native.signal ?? `exit ${native.status}`})`);
    failed = true;
  }
}
if (nativeOnly) process.exit(failed ? 1 : 0);

const outDir = join(root, 'test', 'out');
const files = existsSync(outDir)
  ? readdirSync(outDir, { recursive: true })
      .map(String)
      .filter((f) => f.endsWith('.test.js') && !f.split('/').includes('node_modules'))
      .sort()
      .map((f) => join('test', 'out', f))
  : [];
if (files.length === 0) {
  console.error('routescope: no bundled tests in test/out: run node tools/build.mjs --tests');
  process.exit(1);
}
// The end-to-end tests (a real VS Code: code-server + chromium, test/e2e) run last, on their own, so the unit and
// CLI results come first and the browser has the machine to itself. --no-e2e leaves them out.
const isE2e = (f) => f.startsWith(join('test', 'out', 'e2e') + '/');
const unit = files.filter((f) => !isE2e(f));
const e2e = process.argv.includes('--no-e2e') ? [] : files.filter(isE2e);
const node = spawnSync(process.execPath, ['--test', '--test-reporter=spec', ...unit], { stdio: 'inherit', cwd: root });
if (node.status !== 0) failed = true;
if (!process.argv.includes('--no-fuzz')) {
  // Hostile inputs: every fuzz target for a few seconds from the committed corpus and every past crash.
  const fuzz = spawnSync(process.execPath, [join(root, 'tools', 'fuzz.mjs'), '--quick'], { stdio: 'inherit', cwd: root });
  if (fuzz.status !== 0) {
    console.error('routescope: the short fuzz run failed (see above)');
    failed = true;
  }
}
if (e2e.length > 0) {
  const started = Date.now();
  console.log(`# end-to-end tests in VS Code (code-server + chromium): ${e2e.join(' ')}`);
  // One file at a time: packaging rebuilds dist/ in production mode.
  const run = spawnSync(process.execPath, ['--test', '--test-concurrency=1', '--test-reporter=spec', ...e2e], { stdio: 'inherit', cwd: root });
  console.log(`# end-to-end tests took ${((Date.now() - started) / 1000).toFixed(0)} s`);
  if (run.status !== 0) failed = true;
}
process.exit(failed ? 1 : 0);
