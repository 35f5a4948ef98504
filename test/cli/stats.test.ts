// `routescope stats --json` on the demo model's task suite: the JSON contract's shapes (co-activation [layer][i][j]
// and flow [pair][i][j] are E × E matrices), and its figures agree with each other — the co-activation diagonal is the
// activation rate, every flow matrix sums to the tokens, per-group rates average to the overall rate, and the
// .safetensors export holds the same counts.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, runCli, tempDir } from '../helpers/cli';
import { decodeTensor, readSafetensorsRaw } from '../helpers/safetensors';

const DEMO = path.join(ROOT, 'media', 'demo-model');
const TASKS = path.join(ROOT, 'media', 'tasks', 'eval.jsonl');

test('stats --json: E × E co-activation and flow matrices consistent with the rates and the export', { skip: !fs.existsSync(path.join(DEMO, 'config.json')) && 'no demo model' }, () => {
  const dir = tempDir();
  try {
    const out = path.join(dir, 'stats.safetensors');
    const r = runCli(['stats', '--model', DEMO, '--data', TASKS, '--limit', '60', '--json', '--threads', '1', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as {
      tokens: number; layers: number[]; experts: number;
      groups: { tokens: number; activation_rate: number[][] }[];
      activation_rate: number[][];
      co_activation: number[][][];
      flow: { tokens: number[][] }[];
    };
    const { layers, experts: E } = j;
    assert.equal(j.co_activation.length, layers.length);
    j.co_activation.forEach((m, r) => {
      assert.equal(m.length, E, `co_activation[${r}] rows`);
      m.forEach((row, i) => {
        assert.equal(row.length, E);
        assert.ok(Math.abs(row[i] - j.activation_rate[r][i]) < 1e-12, `layer ${layers[r]}: the diagonal is the activation rate`);
        row.forEach((v, k) => assert.ok(Math.abs(v - m[k][i]) < 1e-12, 'symmetric'));
      });
    });
    assert.equal(j.flow.length, layers.length - 1);
    for (const f of j.flow) {
      assert.equal(f.tokens.length, E);
      assert.equal(f.tokens.flat().reduce((a, b) => a + b, 0), j.tokens, 'every token has a top-1 path');
    }
    for (let r = 0; r < layers.length; r++) {
      for (let e = 0; e < E; e++) {
        const weighted = j.groups.reduce((s, g) => s + g.activation_rate[r][e] * g.tokens, 0) / j.tokens;
        assert.ok(Math.abs(weighted - j.activation_rate[r][e]) < 1e-12);
      }
    }
    const st = readSafetensorsRaw(out);
    const co = decodeTensor(st, 'co_activation');
    assert.deepEqual(co.shape, [layers.length, E, E]);
    for (let r = 0; r < layers.length; r++) for (let i = 0; i < E; i++) for (let k = 0; k < E; k++) {
      assert.ok(Math.abs(co.values[(r * E + i) * E + k] / j.tokens - j.co_activation[r][i][k]) < 1e-12);
    }
    const flow = decodeTensor(st, 'flow');
    assert.deepEqual(Array.from(flow.values.subarray(0, E * E)), j.flow[0].tokens.flat());
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
