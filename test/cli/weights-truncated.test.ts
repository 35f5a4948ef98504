// Weights truncated while a model is in use, through the real CLI: mapped weights fail the next call with one line
// naming the file ("the model file changed while it was in use"), exit 1, no SIGBUS; resident weights (what `auto`
// picks for a small model) no longer depend on the file, so the run goes on and prints what it would have printed.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, runCli, tempDir } from '../helpers/cli';
import { writeRandomOlmoe } from '../helpers/random-model';

function withTemp(body: (tmp: string) => void | Promise<void>): Promise<void> {
  const tmp = tempDir();
  return Promise.resolve(body(tmp)).finally(() => fs.rmSync(tmp, { recursive: true, force: true }));
}

test('mapped weights truncated while generate runs: "the model file changed while it was in use", exit 1', () =>
  withTemp(async (tmp) => {
    writeRandomOlmoe(tmp);
    const file = path.join(tmp, 'model.safetensors');
    const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'routescope.js'), 'generate', '--model', tmp, '--tokens', '1,2,3', '--max-new-tokens', '4000', '--threads', '1', '--weights', 'mapped'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let truncated = false;
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (!truncated && /\|\s+\d+/.test(stdout)) {
        truncated = true;
        fs.truncateSync(file, 4096);
      }
    });
    const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => child.on('close', (c, s) => resolve([c, s])));
    assert.ok(truncated, 'the generation ended before the file was truncated');
    assert.equal(signal, null, `killed by ${signal}`);
    assert.equal(code, 1, `exit ${code}: ${stderr}`);
    assert.match(stderr, new RegExp(`^routescope: ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: the model file changed while it was in use[^\\n]*\\n$`));
  }));

test('resident weights (the default for a small model): the file truncated while generate runs changes nothing', () =>
  withTemp(async (tmp) => {
    writeRandomOlmoe(tmp);
    const file = path.join(tmp, 'model.safetensors');
    const args = ['generate', '--model', tmp, '--tokens', '1,2,3', '--max-new-tokens', '300', '--threads', '1'];
    const before = runCli(args);
    assert.equal(before.code, 0, before.stderr);
    const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'routescope.js'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let truncatedAt = -1;
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (truncatedAt < 0 && /\|\s+\d+/.test(stdout)) {
        truncatedAt = stdout.length;
        fs.truncateSync(file, 4096);
      }
    });
    const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => child.on('close', (c, sig) => resolve([c, sig])));
    assert.ok(truncatedAt >= 0, 'the generation printed nothing to truncate after');
    assert.equal(signal, null, `killed by ${signal}`);
    assert.equal(code, 0, `exit ${code}: ${stderr}`);
    assert.ok(stdout.length > truncatedAt, 'nothing was generated after the file was truncated');
    assert.equal(stdout, before.stdout);
  }));
