// Loads the native engine (build/Release/routescope.node). The bundles live in dist/ (and test bundles in
// test/out/<suite>/), so the addon is found by walking up from the bundle to the package root.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { NativeAddon } from './native';

export const ADDON_RELATIVE_PATH = path.join('build', 'Release', 'routescope.node');

export class AddonMissingError extends Error {
  readonly code = 'NO_ENGINE';
}

/** The package root: the nearest folder above the running bundle that holds package.json. */
export function packageRoot(from: string = __dirname): string {
  let dir = from;
  for (let i = 0; i < 6; i++) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return path.resolve(from, '..');
}

export function addonPath(): string {
  return process.env.ROUTESCOPE_ADDON || path.join(packageRoot(), ADDON_RELATIVE_PATH);
}

let cached: NativeAddon | undefined;

export function loadAddon(): NativeAddon {
  if (cached) return cached;
  const file = addonPath();
  if (!fs.existsSync(file)) {
    throw new AddonMissingError(`native engine not built: run npm ci (${file} is missing)`);
  }
  try {
    // A plain require at run time: esbuild leaves *.node external.
    cached = require(file) as NativeAddon;
  } catch (error) {
    const reason = error instanceof Error ? error.message.split('\n')[0] : String(error);
    throw new AddonMissingError(`native engine failed to load (${file}): ${reason}; rebuild it with npm ci`);
  }
  return cached;
}
