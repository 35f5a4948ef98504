// Runs the real CLI (bin/routescope.js) in a child process, and helpers around fixture folders.
import { spawn, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** The repository root, found from the bundled test file (test/out/<suite>/x.test.js) or the source. */
export const ROOT = (() => {
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'bin', 'routescope.js'))) return dir;
    dir = path.dirname(dir);
  }
  throw new Error(`repository root not found above ${__dirname}`);
})();

export const PARITY_DIR = path.join(ROOT, 'test', 'fixtures', 'parity');

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], options: { cwd?: string; timeoutMs?: number } = {}): CliResult {
  const result = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'routescope.js'), ...args], {
    cwd: options.cwd ?? ROOT,
    encoding: 'utf8',
    timeout: options.timeoutMs ?? 120_000,
    maxBuffer: 256 * 1024 * 1024,
    env: { ...process.env, ROUTESCOPE_DEBUG: '' },
  });
  if (result.error) throw result.error;
  return { code: result.status, signal: result.signal, stdout: result.stdout, stderr: result.stderr };
}

export function runCliJson<T = unknown>(args: string[]): T {
  const r = runCli(args);
  if (r.code !== 0) throw new Error(`routescope ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as T;
}

/** Runs the CLI and sends it Ctrl-C (SIGINT) once `ready(output so far)` holds (checked as output arrives and every
 *  20 ms), not at a fixed time: a loaded machine may take longer than any delay to get under way. */
export async function interruptCli(args: string[], ready: (out: { stdout: string; stderr: string }) => boolean): Promise<CliResult & { interrupted: boolean }> {
  const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'routescope.js'), ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ROUTESCOPE_DEBUG: '' },
  });
  const out = { stdout: '', stderr: '' };
  let interrupted = false;
  const check = (): void => {
    if (!interrupted && child.exitCode === null && ready(out)) {
      interrupted = true;
      child.kill('SIGINT');
    }
  };
  child.stdout.on('data', (d: Buffer) => {
    out.stdout += d.toString();
    check();
  });
  child.stderr.on('data', (d: Buffer) => {
    out.stderr += d.toString();
    check();
  });
  const timer = setInterval(check, 20);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('close', (c, s) => resolve([c, s])));
  clearInterval(timer);
  return { code, signal, ...out, interrupted };
}

export const DEMO_CASE_DIR = path.join(ROOT, 'test', 'fixtures', 'demo');

export interface ParityCase {
  name: string;
  dir: string;
  model: string;
  cases: {
    arch: string;
    dtype: string;
    layout: string;
    sharded: boolean;
    /** Checkpoint folder relative to `dir` when the case has no model/ of its own (the demo model). */
    model?: string;
    /** Text whose tokenisation (no special tokens added) is `tokens`. */
    prompt?: string;
    tokens: number[];
    runs: { name: string; patch: unknown }[];
    grads: {
      name: string;
      patch: unknown;
      layers: number[];
      target: [number, number] | null;
      mix: { layer: number; position: number; logits: number[] } | null;
    }[];
  };
}

function readCase(name: string, dir: string): ParityCase {
  const cases = JSON.parse(fs.readFileSync(path.join(dir, 'cases.json'), 'utf8')) as ParityCase['cases'];
  return { name, dir, model: path.resolve(dir, cases.model ?? 'model'), cases };
}

/** Every case under test/fixtures/parity/<case>/, plus the demo model's case test/fixtures/demo/ when present. */
export function parityCases(): ParityCase[] {
  const out: ParityCase[] = [];
  if (fs.existsSync(PARITY_DIR)) {
    for (const d of fs.readdirSync(PARITY_DIR, { withFileTypes: true })) {
      const dir = path.join(PARITY_DIR, d.name);
      if (d.isDirectory() && fs.existsSync(path.join(dir, 'cases.json'))) out.push(readCase(d.name, dir));
    }
  }
  out.sort((a, b) => a.name.localeCompare(b.name));
  if (fs.existsSync(path.join(DEMO_CASE_DIR, 'cases.json'))) out.push(readCase('demo', DEMO_CASE_DIR));
  return out;
}

export function tempDir(prefix = 'routescope-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function copyDir(from: string, to: string): void {
  fs.cpSync(from, to, { recursive: true });
}

/** name → sha256 of every file below dir (relative names), to prove a run wrote nothing. */
export function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const entry of fs.readdirSync(dir, { recursive: true, withFileTypes: true })) {
    const full = path.join(entry.parentPath ?? (entry as unknown as { path: string }).path, entry.name);
    const rel = path.relative(dir, full);
    if (entry.isFile()) out.set(rel, crypto.createHash('sha256').update(fs.readFileSync(full)).digest('hex'));
    else out.set(rel, entry.isDirectory() ? 'dir' : 'other');
  }
  return out;
}

export function writeJson(file: string, value: unknown): void {
  fs.writeFileSync(file, JSON.stringify(value));
}
