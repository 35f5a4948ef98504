// The house's layering, checked on the sources: common/ imports nothing outside itself (no vscode, no DOM, no
// Node); the webview imports only itself and common/; the extension never imports the webview; the engine (engine/)
// never imports adaptation (adapt/ registers its requests instead); views/ never import the CLI. And a TypeScript
// file over 400 lines says why in its opening comment.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT } from '../helpers/cli';

function sources(dir: string): string[] {
  const abs = path.join(ROOT, dir);
  if (!fs.existsSync(abs)) return [];
  return fs
    .readdirSync(abs, { recursive: true })
    .map(String)
    .filter((f) => f.endsWith('.ts') && !f.split(path.sep).includes('out'))
    .map((f) => path.join(dir, f));
}

interface Import {
  /** A repository path for a relative import, else the package name. */
  target: string;
  relative: boolean;
}

/** Every module a file imports (static and import() forms). */
function imports(file: string): Import[] {
  const text = fs.readFileSync(path.join(ROOT, file), 'utf8');
  const out: Import[] = [];
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s*'([^']+)'|import\(\s*'([^']+)'\s*\)/g)) {
    const spec = m[1] ?? m[2];
    const relative = spec.startsWith('.');
    out.push({ target: relative ? path.normalize(path.join(path.dirname(file), spec)) : spec, relative });
  }
  return out;
}

const within = (i: Import, dir: string): boolean => i.relative && (i.target === dir || i.target.startsWith(dir + path.sep));

function violations(files: string[], allowed: (i: Import) => boolean): string[] {
  return files.flatMap((f) => imports(f).filter((i) => !allowed(i)).map((i) => `${f} imports ${i.target}`));
}

test('common/ imports only common/ (no vscode, DOM or Node)', () => {
  assert.deepEqual(violations(sources('common/src'), (i) => within(i, 'common/src')), []);
});

/** A package the webview bundle includes (e.g. culori): not vscode, not a Node built-in. */
const bundledPackage = (i: Import): boolean => !i.relative && !i.target.startsWith('node:') && i.target !== 'vscode';

test('the webview imports only webview/, common/ and bundled packages', () => {
  assert.deepEqual(violations(sources('webview/src'), (i) => within(i, 'webview/src') || within(i, 'common/src') || bundledPackage(i)), []);
});

test('the extension never imports the webview', () => {
  assert.deepEqual(violations(sources('extension/src'), (i) => !within(i, 'webview')), []);
});

test('engine/ never imports adapt/; views/ never import cli/', () => {
  assert.deepEqual(violations(sources('extension/src/engine'), (i) => !within(i, 'extension/src/adapt')), []);
  assert.deepEqual(violations(sources('extension/src/views'), (i) => !within(i, 'extension/src/cli')), []);
});

test('a TypeScript file over 400 lines says why in its opening comment', () => {
  const long = [...sources('common/src'), ...sources('extension/src'), ...sources('webview/src'), ...sources('test')]
    .map((f) => ({ f, text: fs.readFileSync(path.join(ROOT, f), 'utf8') }))
    .filter(({ text }) => text.split('\n').length > 400)
    .filter(({ text }) => !/^(\/\/[^\n]*\n)*?\/\/[^\n]*\b400 lines\b/.test(text))
    .map(({ f, text }) => `${f}: ${text.split('\n').length} lines`);
  assert.deepEqual(long, []);
});
