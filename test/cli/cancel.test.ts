// Ctrl-C: SIGINT while the engine is generating cancels the call cleanly (exit 130, one line, no stack trace).
// Needs a model slow enough to still be running when the signal lands: a random OLMoE-shaped one written here.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { interruptCli, tempDir } from '../helpers/cli';
import { writeRandomOlmoe } from '../helpers/random-model';


test('SIGINT during generate cancels the engine call: exit 130, "routescope: cancelled"', async () => {
  const tmp = tempDir();
  try {
    writeRandomOlmoe(tmp);
    // Generated ids follow the "1 2 3 | " prompt echo: the engine is running now.
    const { code, stdout, stderr, interrupted: signalled } = await interruptCli(['generate', '--model', tmp, '--tokens', '1,2,3', '--max-new-tokens', '4000', '--threads', '1'], (o) => /\|\s+\d+/.test(o.stdout));
    assert.ok(signalled, `the generation ended before it could be interrupted: ${stdout.slice(0, 200)}`);
    assert.equal(code, 130, `exit ${code}, stderr: ${stderr}`);
    assert.equal(stderr, 'routescope: cancelled\n');
    const generated = stdout.split('|')[1].trim().split(/\s+/);
    assert.ok(generated.length < 4000, 'stopped early');
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
