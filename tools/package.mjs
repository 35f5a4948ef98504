// `npm run package`: a linux-x64 .vsix with the production bundles, the prebuilt native engine
// (build/Release/routescope.node) and only the runtime files .vscodeignore lets through. Prints its path and size.
//   node tools/package.mjs [--out FILE]
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(fileURLToPath(import.meta.url), '..', '..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const target = 'linux-x64';
const outIndex = process.argv.indexOf('--out');
const out = resolve(outIndex > 0 ? process.argv[outIndex + 1] : join(root, `${pkg.name}-${target}-${pkg.version}.vsix`));

if (process.platform !== 'linux' || process.arch !== 'x64') {
  console.error(`routescope: the package targets ${target} and carries the addon built here; this machine is ${process.platform}-${process.arch}`);
  process.exit(1);
}
if (!existsSync(join(root, 'build', 'Release', 'routescope.node'))) {
  console.error('routescope: build/Release/routescope.node is missing: run npm ci (or npm run build:native) first');
  process.exit(1);
}
if (!existsSync(join(root, 'media', 'demo-model', 'config.json'))) {
  console.warn('routescope: warning: media/demo-model is missing; the package will not contain the demo model');
}

mkdirSync(dirname(out), { recursive: true });
const vsce = join(root, 'node_modules', '@vscode', 'vsce', 'vsce');
// vscode:prepublish (the production bundles) runs inside vsce package.
const result = spawnSync(
  process.execPath,
  [vsce, 'package', '--target', target, '--out', out, '--skip-license', '--allow-missing-repository', '--no-rewrite-relative-links'],
  { cwd: root, stdio: 'inherit' },
);
if (result.status !== 0) {
  console.error('routescope: vsce package failed');
  process.exit(1);
}
const bytes = statSync(out).size;
console.log(`routescope: ${relative(process.cwd(), out)}: ${(bytes / 2 ** 20).toFixed(1)} MiB (${bytes} bytes)`);
