// The lock files `npm ci` installs from are complete: every dependency edge of every locked package (optional and
// required peer dependencies included) resolves to a locked entry the way npm resolves node_modules, exact pins
// match, and the root entry matches package.json. npm 11's `npm ci` refuses a lock that fails this ("package.json
// and package-lock.json ... are not in sync ... Missing: X from lock file"), which is how `npm run bench` once could
// not install its llama.cpp peer: a registry mirror without node-llama-cpp's mac/win/riscv packages had dropped
// them from bench/peers' lock.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT } from '../helpers/cli';

interface LockEntry {
  version?: string;
  link?: boolean;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
}

/** What `npm ci` would reject in dir's package-lock.json, one line each. */
function lockProblems(dir: string): string[] {
  const lock = JSON.parse(fs.readFileSync(path.join(dir, 'package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };
  const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as LockEntry;
  const packages = lock.packages;
  const problems: string[] = [];
  const root = packages[''] ?? {};
  for (const field of ['dependencies', 'optionalDependencies', 'devDependencies'] as const) {
    if (JSON.stringify(root[field] ?? {}) !== JSON.stringify(pkg[field] ?? {})) problems.push(`the lock's ${field} differ from package.json's`);
  }
  /** node_modules resolution from the package at `from` ('' = the root). */
  const resolve = (from: string, name: string): string | null => {
    let base = from;
    for (;;) {
      const candidate = `${base ? `${base}/` : ''}node_modules/${name}`;
      if (packages[candidate]) return candidate;
      if (!base) return null;
      const i = base.lastIndexOf('/node_modules/');
      base = i < 0 ? '' : base.slice(0, i);
    }
  };
  for (const [at, entry] of Object.entries(packages)) {
    if (entry.link) continue;
    const edges: Record<string, string> = { ...entry.dependencies, ...entry.optionalDependencies, ...(at === '' ? entry.devDependencies : {}) };
    for (const [name, spec] of Object.entries(entry.peerDependencies ?? {})) if (!entry.peerDependenciesMeta?.[name]?.optional) edges[name] = spec;
    for (const [name, spec] of Object.entries(edges)) {
      const found = resolve(at, name);
      if (!found) problems.push(`${at || 'the root'} needs ${name}@${spec}: missing from the lock file`);
      else if (/^\d+\.\d+\.\d+$/.test(spec) && packages[found]?.version !== spec) problems.push(`${at || 'the root'} pins ${name}@${spec}, the lock has ${packages[found]?.version}`);
    }
  }
  return problems;
}

test('bench/peers/package-lock.json lists every package npm ci needs, optional platform packages included', () => {
  assert.deepEqual(lockProblems(path.join(ROOT, 'bench', 'peers')), []);
});

test('the product package-lock.json lists every package npm ci needs', () => {
  assert.deepEqual(lockProblems(ROOT), []);
});

test('the peers install pins exact versions, with integrity wherever the package is installed on linux-x64', () => {
  const lock = JSON.parse(fs.readFileSync(path.join(ROOT, 'bench', 'peers', 'package-lock.json'), 'utf8')) as {
    packages: Record<string, LockEntry & { integrity?: string; os?: string[]; cpu?: string[]; optional?: boolean }>;
  };
  for (const [at, entry] of Object.entries(lock.packages)) {
    if (at === '') continue;
    assert.match(entry.version ?? '', /^\d+\.\d+\.\d+/, `${at} has no exact version`);
    const installedHere = !entry.optional || ((entry.os ?? ['linux']).includes('linux') && (entry.cpu ?? ['x64']).includes('x64'));
    if (installedHere) assert.match((entry as { integrity?: string }).integrity ?? '', /^sha512-/, `${at} has no sha512 integrity`);
  }
});
