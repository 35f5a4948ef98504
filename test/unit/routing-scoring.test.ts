// Router entropy and mean shares follow the router's scoring: softmax probabilities, or for sigmoid routers
// (DeepSeek-V3, GLM-4.5) the sigmoid scores as shares of their sum.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { LayerRouting } from '../../common/src/routing';
import { routerScores, scoreSharesInto } from '../../common/src/math';

test('sigmoid routers: entropy and mean share over sigmoid(z) / sum, not softmax(z)', () => {
  const z = [2, 0, -1, -3];
  const rows = { routerLogits: [...z, ...z], experts: [0, 1, 0, 1], weights: [0.6, 0.4, 0.6, 0.4] };
  const sig = z.map((v) => 1 / (1 + Math.exp(-v)));
  const total = sig.reduce((a, b) => a + b, 0);
  const shares = sig.map((s) => s / total);
  const want = -shares.reduce((h, p) => h + p * Math.log(p), 0);
  const r = new LayerRouting(5, 4, 2, 2, 'sigmoid');
  r.write({ layer: 5, start: 0, count: 2, numExperts: 4, topK: 2, routerLogits: Float32Array.from(rows.routerLogits), experts: Int32Array.from(rows.experts), weights: Float32Array.from(rows.weights) });
  assert.ok(Math.abs(r.routerEntropy()[0] - want) < 1e-6, `${r.routerEntropy()[0]} vs ${want}`);
  assert.ok(Math.abs(r.stats().experts[2].meanProb - shares[2]) < 1e-6);
  const soft = LayerRouting.of(5, 4, 2, rows);
  assert.ok(Math.abs(soft.routerEntropy()[0] - want) > 1e-3, 'softmax routers keep the softmax entropy');
  const out = scoreSharesInto(new Float64Array(4), z, 0, 'sigmoid');
  shares.forEach((s, i) => assert.ok(Math.abs(out[i] - s) < 1e-12));
  assert.deepEqual([...routerScores('sigmoid', [0])], [0.5]);
});
