// `npm test`: the engine's C++ tests (build/rs_tests test/fixtures), then node --test over the bundled unit and CLI
// tests in test/out (built by `node tools/build.mjs --tests`). Ends with node's summary lines.
//   node test/helpers/run-tests.mjs [--native-only]
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
      .filter((f) => f.endsWith('.test.js'))
      .sort()
      .map((f) => join('test', 'out', f))
  : [];
if (files.length === 0) {
  console.error('routescope: no bundled tests in test/out: run node tools/build.mjs --tests');
  process.exit(1);
}
const node = spawnSync(process.execPath, ['--test', '--test-reporter=spec', ...files], { stdio: 'inherit', cwd: root });
process.exit(failed || node.status !== 0 ? 1 : 0);
