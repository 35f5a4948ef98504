// Bad-input checks shared by the CLI tests: corrupt a COPY of a fixture checkpoint, run the real CLI, expect one
// clear line on stderr naming the file and the problem, a non-zero exit, no stack trace, the folder untouched.
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { copyDir, runCli, snapshot, tempDir } from './cli';
import { readSafetensorsRaw, writeSafetensorsRaw, type SafetensorsFile } from './safetensors';

export const TOKENS = '1,2,3,4';

export interface Expectation {
  /** The problem, as a pattern over the message. */
  problem: RegExp;
  /** The file (or argument) the message must name; a base name. */
  names: string | RegExp;
  args?: string[];
}

/** Copies `source` into a temp dir, lets `corrupt` damage it, runs the CLI and checks the failure. */
export function expectRejected(source: string, corrupt: (dir: string) => void, expected: Expectation): void {
  const tmp = tempDir();
  const dir = path.join(tmp, 'model');
  try {
    copyDir(source, dir);
    corrupt(dir);
    const before = snapshot(dir);
    const args = (expected.args ?? ['inspect', '--model', 'MODEL', '--tokens', TOKENS, '--json']).map((a) => (a === 'MODEL' ? dir : a));
    const result = runCli(args);
    assert.notEqual(result.code, 0, `expected a failure, got exit 0 with ${result.stdout.slice(0, 200)}`);
    assert.equal(result.signal, null, 'killed by a signal (crash?)');
    assert.equal(result.stdout, '', 'nothing on stdout');
    const lines = result.stderr.split('\n').filter((l) => l !== '');
    assert.equal(lines.length, 1, `one line on stderr, got:\n${result.stderr}`);
    const line = lines[0];
    if (process.env.ROUTESCOPE_SHOW_ERRORS) console.log(`    ${line}`);
    assert.match(line, /^routescope: /);
    assert.doesNotMatch(line, /\bat .*:\d+:\d+|internal error/i, 'no stack trace or internal error');
    if (typeof expected.names === 'string') assert.ok(line.includes(expected.names), `"${line}" should name ${expected.names}`);
    else assert.match(line, expected.names);
    assert.match(line, expected.problem);
    assert.deepEqual(snapshot(dir), before, 'the model folder changed');
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** Rewrites model.safetensors through `edit` (header and data may both change). */
export function editSafetensors(dir: string, edit: (st: SafetensorsFile) => void, file = 'model.safetensors'): void {
  const st = readSafetensorsRaw(path.join(dir, file));
  st.data = Buffer.from(st.data);
  edit(st);
  writeSafetensorsRaw(path.join(dir, file), st);
}

export function byOffset(st: SafetensorsFile): string[] {
  return Object.keys(st.header).sort((a, b) => st.header[a].data_offsets[0] - st.header[b].data_offsets[0]);
}

export function editConfig(dir: string, edit: (config: Record<string, unknown>) => void): void {
  const file = path.join(dir, 'config.json');
  const config = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  edit(config);
  fs.writeFileSync(file, JSON.stringify(config, null, 2));
}

