// Ctrl-C: SIGINT while the engine is generating cancels the call cleanly (exit 130, one line, no stack trace).
// Needs a model slow enough to still be running when the signal lands: a random OLMoE-shaped one written here.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, tempDir } from '../helpers/cli';
import { writeRandomOlmoe } from '../helpers/random-model';


test('SIGINT during generate cancels the engine call: exit 130, "routescope: cancelled"', async () => {
  const tmp = tempDir();
  try {
    writeRandomOlmoe(tmp);
    const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'routescope.js'), 'generate', '--model', tmp, '--tokens', '1,2,3', '--max-new-tokens', '4000', '--threads', '1'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let signalled = false;
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      // Generated ids follow the "1 2 3 | " prompt echo: the engine is running now.
      if (!signalled && /\|\s+\d+/.test(stdout)) {
        signalled = true;
        child.kill('SIGINT');
      }
    });
    const code = await exit;
    assert.ok(signalled, `the generation ended before it could be interrupted: ${stdout.slice(0, 200)}`);
    assert.equal(code, 130, `exit ${code}, stderr: ${stderr}`);
    assert.equal(stderr, 'routescope: cancelled\n');
    const generated = stdout.split('|')[1].trim().split(/\s+/);
    assert.ok(generated.length < 4000, 'stopped early');
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
