// DeepSeek-V2-Lite's, Moonlight's, gpt-oss-20b's and Llama-4-Scout-17B-16E's exact config.json (two layers:
// DeepSeek's dense first one and one MoE layer; gpt-oss a sliding and a full layer; Scout one layer, its vision-language
// config with the text model nested; head dims, expert counts and routing fields as released) with random weights
// (bf16; gpt-oss's experts MXFP4 as released), written at test time by the bench's checkpoint writer into .cache/
// (about 2.2, 2.6, 3.1 and 8.5 GB, written once and reused while the writer's stamp matches). The engine
// opens them, reports the routing rule, decodes token by token exactly as one full forward (gpt-oss: past its
// 128-token sliding window), and its router-bias gradient matches central differences of the loss at full size.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
// @ts-expect-error the bench writer is plain ESM JavaScript
import { ensureCheckpoint } from '../../bench/checkpoint.mjs';
import { loadAddon } from '../../extension/src/engine/addon';
import type { NativeModel } from '../../extension/src/engine/native';
import { ROOT } from '../helpers/cli';

const CACHE = path.join(process.env.ROUTESCOPE_CACHE ?? path.join(ROOT, '.cache'), 'realistic');

interface Shape {
  name: string;
  rule: string;
  /** experts, top-k, expert width, shared width, head dim */
  dims: number[];
  moeLayers: number[];
  /** prompt length and where its prefill stops before token-by-token decoding */
  tokens: number;
  split: number;
  /** layers written (default 2) and the MoE layer whose router-bias gradient is checked (default 1) */
  layers?: number;
  gradLayer?: number;
}
const SHAPES: Shape[] = [
  { name: 'deepseek-v2-lite', rule: 'softmax, top-6 of 64, not renormalised', dims: [64, 6, 1408, 2816, 192], moeLayers: [1], tokens: 8, split: 3 },
  { name: 'moonlight', rule: 'sigmoid + selection bias, top-6 of 64, renormalised, ×2.446', dims: [64, 6, 1408, 2816, 192], moeLayers: [1], tokens: 8, split: 3 },
  { name: 'gpt-oss-20b', rule: 'softmax, top-4 of 32, renormalised', dims: [32, 4, 2880, 0, 64], moeLayers: [0, 1], tokens: 136, split: 130 },
  // One layer (its 16 experts and 202048-row embedding and LM head are 8.5 GB in bf16): RoPE, QK-norm, llama3 scaling.
  { name: 'llama4-scout', rule: "sigmoid, top-1 of 16 by logit, not renormalised, the weight scales the expert's input", dims: [16, 1, 8192, 8192, 128],
    moeLayers: [0], tokens: 8, split: 3, layers: 1, gradLayer: 0 },
];

/** The check prompt: fixed tokens, then a deterministic walk over the vocabulary. */
function prompt(n: number): Int32Array {
  const head = [11, 4096, 77, 50000, 999, 31, 2048, 7];
  return Int32Array.from({ length: n }, (_, i) => (i < head.length ? head[i] : (i * 7919 + 13) % 100000));
}

function open(shape: string, layers: number): NativeModel {
  const dir = path.join(CACHE, `${shape}-L${layers}`);
  ensureCheckpoint(dir, layers, 7, (line: string) => console.log(`    ${line}`), shape);
  return loadAddon().loadModel(dir, { threads: 2 });
}

function loss(logits: Float32Array, tokens: Int32Array, V: number): number {
  let total = 0;
  for (let j = 1; j < tokens.length; j++) {
    const row = logits.subarray((j - 1) * V, j * V);
    let max = -Infinity;
    for (const x of row) max = Math.max(max, x);
    let sum = 0;
    for (const x of row) sum += Math.exp(x - max);
    total += -(row[tokens[j]] - max - Math.log(sum));
  }
  return total / (tokens.length - 1);
}

for (const shape of SHAPES) {
  const layers = shape.layers ?? 2;
  const gl = String(shape.gradLayer ?? 1);
  test(`${shape.name} (exact config, ${layers} layer${layers > 1 ? 's' : ''}, random weights): opens, decodes like a full forward, gradients match differences`, async () => {
    const model = open(shape.name, layers);
    try {
      const info = model.info();
      assert.equal(info.routingRule, shape.rule);
      assert.deepEqual([info.numExperts, info.topK, info.expertWidth, info.sharedExpertWidth, info.headDim], shape.dims);
      assert.deepEqual(info.moeLayers, shape.moeLayers);
      assert.deepEqual(info.warnings, []);
      const V = info.vocabSize;
      const tokens = prompt(shape.tokens);
      const full = await model.createSession().forward(tokens, { logits: 'all' });
      assert.ok(full.logits.every(Number.isFinite), 'finite logits');
      // Prefill in two pieces, then token by token: the KV cache (expanded MLA keys and values) reproduces the rows.
      const session = model.createSession();
      await session.forward(tokens.subarray(0, shape.split), { logits: 'none' });
      let worst = 0;
      for (let i = shape.split; i < tokens.length; i++) {
        const step = await session.forward(tokens.subarray(i, i + 1), { logits: 'last' });
        const want = full.logits.subarray(i * V, (i + 1) * V);
        for (let v = 0; v < V; v++) worst = Math.max(worst, Math.abs(step.logits[v] - want[v]));
      }
      assert.ok(worst < 1e-3, `decode vs full forward: max |diff| ${worst}`);
      // Router-bias gradient of the MoE layer vs central differences through bias patches, at the three experts with
      // the largest gradient; a step that changes a selection (the one-sided quotients disagree) is skipped.
      const g = await model.createSession().grad(tokens, { layers: [Number(gl)] });
      const grad = g.biasGrad[gl];
      const order = [...grad.keys()].sort((a, b) => Math.abs(grad[b]) - Math.abs(grad[a]));
      const h = 1e-2;
      const at = async (e: number, d: number): Promise<number> => {
        const patch = JSON.stringify({ layers: { [gl]: { bias: { [String(e)]: d } } } });
        return loss((await model.createSession().forward(tokens, { logits: 'all', patch })).logits, tokens, V);
      };
      const base = loss(full.logits, tokens, V);
      assert.ok(Math.abs(base - g.loss) < 1e-4 * Math.max(1, Math.abs(base)), `loss ${g.loss} vs ${base}`);
      let compared = 0;
      for (const e of order.slice(0, 3)) {
        const up = await at(e, h);
        const down = await at(e, -h);
        const central = (up - down) / (2 * h);
        const forward = (up - base) / h;
        const backward = (base - down) / h;
        if (Math.abs(forward - backward) > 0.2 * Math.abs(central) + 1e-6) continue;  // a selection changed: no FD there
        assert.ok(Math.abs(central - grad[e]) <= 0.02 * Math.abs(grad[e]) + 1e-6, `expert ${e}: gradient ${grad[e]} vs differences ${central}`);
        compared++;
      }
      assert.ok(compared > 0, 'every finite-difference step changed a selection');
    } finally {
      model.close();
    }
  });
}
