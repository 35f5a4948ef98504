// What a user reads: counts with the right noun ("1 token"), one name and unit per quantity, axis ticks, the run diff's
// "what changed" (top-1 replacements per layer, a next-token distribution that did not move said as such).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { oneLineText, plural } from '../../common/src/format';
import { describeEntropy, QUANTITY, quantityLabel } from '../../common/src/quantities';
import { LayerRouting } from '../../common/src/routing';
import { changedNextTokens, describeNextTokenChange, diffRuns, nextTokenChange } from '../../common/src/runDiff';
import { labelStep, niceTicks, tickDigits } from '../../webview/src/charts/ticks';

test('counts take the right noun: "1 token", "2 tokens", "10,000 prompts"', () => {
  assert.equal(plural(1, 'token'), '1 token');
  assert.equal(plural(0, 'token'), '0 tokens');
  assert.equal(plural(2, 'token'), '2 tokens');
  assert.equal(plural(10000, 'prompt'), '10,000 prompts');
  assert.equal(plural(3, 'match', 'matches'), '3 matches');
  assert.equal(oneLineText('Q: How much\n is 2 + 2?\nA:', 14), 'Q: How much i…');
});

test('one name and one unit per quantity; router entropy always in nats with its uniform maximum', () => {
  assert.equal(quantityLabel(QUANTITY.routerEntropy), 'router entropy (nats)');
  assert.equal(quantityLabel(QUANTITY.activationRate), 'activation rate (% of tokens)');
  assert.equal(quantityLabel(QUANTITY.top1Weight), 'top-1 weight');
  assert.equal(describeEntropy(1.6822, 8, 3), '1.682 nats (uniform: ln 8 = 2.079 nats)');
  // The old "0.809 × ln 8" wording mixed a fraction with a unit; nothing writes it now.
  assert.doesNotMatch(describeEntropy(1.6822, 8), /×/);
});

test('axis ticks: 1–2–5 steps covering the range, digits that tell neighbours apart, labels that do not overlap', () => {
  assert.deepEqual(niceTicks(0, 1, 5).map((v) => Number(v.toFixed(6))), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  const ticks = niceTicks(-2.3, 3.1, 6);
  assert.ok(ticks[0] >= -2.3 - 1e-9 && ticks.at(-1)! <= 3.1 + 1e-9);
  assert.ok(ticks.includes(0), `zero is a tick: ${ticks}`);
  for (let i = 1; i < ticks.length; i++) assert.ok(Math.abs(ticks[i] - ticks[i - 1] - 1) < 1e-9, `step 1: ${ticks}`);
  assert.equal(tickDigits([0, 0.05, 0.1]), 2);
  assert.equal(tickDigits([0, 10, 20]), 0);
  assert.deepEqual(niceTicks(3, 3), [3]);
  assert.equal(labelStep(20, 10), 1);
  assert.equal(labelStep(3, 14), 8);
});

function layer(experts: number[][]): LayerRouting {
  const E = 8;
  const k = experts[0].length;
  return LayerRouting.of(0, E, k, { routerLogits: new Float32Array(experts.length * E), experts: experts.flat(), weights: experts.flat().map(() => 1 / k) });
}

test('the run diff lists which top-1 experts were replaced by which, most frequent first', () => {
  const a = { routing: [layer([[3, 1], [3, 2], [3, 1], [5, 6]])], tokens: [1, 2, 3, 4] };
  const b = { routing: [layer([[4, 1], [4, 2], [6, 3], [5, 6]])], tokens: [1, 2, 3, 4] };
  const d = diffRuns(a, b);
  assert.deepEqual(d.layers[0].top1Swaps, [{ from: 3, to: 4, count: 2 }, { from: 3, to: 6, count: 1 }]);
  assert.equal(d.changedTop1, 3);
});

test('a next-token distribution that did not move is said to be unchanged, and no row of 0.0 % is listed', () => {
  const certain = new Float32Array(16).fill(1e-9);
  certain[7] = 1 - 15e-9;
  const same = nextTokenChange({ nextTokenProbs: certain }, { nextTokenProbs: Float32Array.from(certain) })!;
  assert.match(describeNextTokenChange(same), /^next-token distribution: unchanged \(total variation 0\.000/);
  assert.deepEqual(changedNextTokens(same), []);
  const moved = Float32Array.from(certain);
  moved[7] = 0.9;
  moved[3] = 0.1;
  const change = nextTokenChange({ nextTokenProbs: certain }, { nextTokenProbs: moved })!;
  assert.doesNotMatch(describeNextTokenChange(change), /unchanged/);
  assert.deepEqual(changedNextTokens(change).map((r) => r.token).sort(), [3, 7]);
});
