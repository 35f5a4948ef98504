// The pure numerics of C3PO on constructed data: neighbours (kNN, ε-ball, de-duplication, σ), the Gaussian kernel,
// kernel regression, the α search and mean-shift.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { alphaGrid, findNeighbours, gaussianKernel, interpolate, meanShift, median, searchAlpha, weightedMean } from '../../extension/src/adapt/math';
import { criticalLayers } from '../../extension/src/adapt/settings';

const close = (a: number, b: number, tol = 1e-6): void => assert.ok(Math.abs(a - b) <= tol, `${a} vs ${b}`);

// Unit vectors at known angles from the query (1, 0): cos = 1, 0.99, 0.9, 0.8, 0.5, 0.
const angle = (c: number): number[] => [c, Math.sqrt(1 - c * c)];
const REFS = [angle(1), angle(0.99), angle(0.9), angle(0.8), angle(0.5), angle(0)].map((v) => v.map((x) => x * 3)); // unnormalised on purpose
const BASE = { mode: 'knn' as const, k: 3, epsilon: 0.7, dedup: 'similarity' as const, dedupThreshold: 0.95, sigma: 'median' as const };

test('kNN on cosine: near-duplicates (> 0.95) dropped, the k most similar kept, σ = median distance', () => {
  const h = findNeighbours([2, 0], REFS, BASE);
  assert.deepEqual(h.dropped, [0, 1]);
  assert.deepEqual(h.neighbours.map((n) => n.index), [2, 3, 4]);
  const d = [0.9, 0.8, 0.5].map((c) => Math.sqrt(2 - 2 * c));
  h.neighbours.forEach((n, i) => close(n.distance, d[i]));
  close(h.sigma, d[1]);
  h.neighbours.forEach((n, i) => close(n.weight, Math.exp(-(d[i] ** 2) / (2 * d[1] ** 2))));
  close(h.neighbours[1].weight, Math.exp(-0.5));
});

test('ε-ball keeps every item with similarity >= ε; a fixed σ is used as given; exclusions honoured', () => {
  const h = findNeighbours([1, 0], REFS, { ...BASE, mode: 'epsilon', sigma: 0.5 });
  assert.deepEqual(h.neighbours.map((n) => n.index), [2, 3]);
  close(h.sigma, 0.5);
  close(h.neighbours[0].weight, Math.exp(-(2 - 2 * 0.9) / (2 * 0.25)));
  const none = findNeighbours([1, 0], REFS, { ...BASE, dedupThreshold: 1, exclude: new Set([0, 1, 2]) });
  assert.deepEqual(none.neighbours.map((n) => n.index), [3, 4, 5]);
  assert.deepEqual(findNeighbours([1, 0], [angle(1)], BASE).neighbours, []);
});

test('exact-question dedup drops only items asking the same question (whitespace and case aside), whatever their similarity', () => {
  const questions = ['Add 2 and 3.', 'add  2 and 3. ', 'Add 2 and 4.', 'Sort "cab".', 'Sort "bca".', 'Reverse "ab".'];
  const h = findNeighbours([1, 0], REFS, { ...BASE, dedup: 'exact-question', question: ' ADD 2 AND 3.', questions });
  assert.deepEqual(h.dropped, [0, 1]);
  assert.deepEqual(h.neighbours.map((n) => n.index), [2, 3, 4]); // similarities 0.9, 0.8, 0.5: above the similarity cut is fine
  const kept = findNeighbours([1, 0], REFS, { ...BASE, dedup: 'none' });
  assert.deepEqual(kept.dropped, []);
  assert.deepEqual(kept.neighbours.map((n) => n.index), [0, 1, 2]);
  assert.throws(() => findNeighbours([1, 0], REFS, { ...BASE, dedup: 'exact-question' }), /needs the question texts/);
});

test('Gaussian kernel and median', () => {
  close(gaussianKernel(0, 1), 1);
  close(gaussianKernel(2, 1), Math.exp(-2));
  assert.equal(gaussianKernel(3, 0), 1);
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 2, 3]), 2.5);
});

test('kernel regression equals the kernel-weighted mean of the neighbours\' ω', () => {
  const omegas = [
    [0.7, 0.2, 0.1],
    [0.1, 0.8, 0.1],
    [0.3, 0.3, 0.4],
  ];
  const weights = [1, 0.5, 0.25];
  const m = weightedMean(omegas, weights);
  const expected = [(0.7 + 0.05 + 0.075) / 1.75, (0.2 + 0.4 + 0.075) / 1.75, (0.1 + 0.05 + 0.1) / 1.75];
  for (let e = 0; e < 3; e++) close(m[e], expected[e]);
  close(m.reduce((a, b) => a + b, 0), 1, 1e-6);
  // With neighbours found by findNeighbours: the same as weighting by their kernel values.
  const h = findNeighbours([2, 0], REFS, BASE);
  const rows = h.neighbours.map((n) => omegas[n.index - 2]);
  const kr = weightedMean(rows, h.neighbours.map((n) => n.weight));
  const manual = [0, 1, 2].map((e) => rows.reduce((a, r, i) => a + r[e] * h.neighbours[i].weight, 0) / h.neighbours.reduce((a, n) => a + n.weight, 0));
  kr.forEach((v, e) => close(v, manual[e]));
  assert.throws(() => weightedMean(omegas, [0, 0, 0]), /sum to zero/);
});

test('α search picks the grid minimiser of the surrogate loss (first on ties)', async () => {
  const grid = alphaGrid(0.1);
  assert.equal(grid.length, 11);
  assert.deepEqual([grid[0], grid[3], grid[10]], [0, 0.3, 1]);
  const omega = [1, 0];
  const target = [0, 1];
  // Loss minimised where the interpolated ω[0] = 0.3 (α = 0.3).
  const best = await searchAlpha(grid, async (alpha) => (interpolate(omega, target, alpha)[0] - 0.3) ** 2);
  close(best.alpha, 0.3);
  assert.equal(best.tried.length, 11);
  const tie = await searchAlpha(grid, async () => 1);
  assert.equal(tie.alpha, 0);
});

test('mean-shift moves to the kernel-weighted mean of the nearest pathways and converges on a cluster', () => {
  const points = [
    [0.9, 0.1],
    [0.8, 0.2],
    [0.85, 0.15],
    [0.1, 0.9],
  ];
  const one = meanShift([0.7, 0.3], points, { k: 3, iterations: 1, sigma: 'median' });
  const d = points.map((p) => Math.hypot(p[0] - 0.7, p[1] - 0.3));
  const nearest = [1, 2, 0];
  const sigma = median(nearest.map((i) => d[i]));
  const w = nearest.map((i) => Math.exp(-(d[i] ** 2) / (2 * sigma ** 2)));
  const expected0 = nearest.reduce((a, i, j) => a + points[i][0] * w[j], 0) / w.reduce((a, b) => a + b, 0);
  close(one.mode[0], expected0, 1e-6);
  const many = meanShift([0.7, 0.3], points, { k: 3, iterations: 20, sigma: 'median' });
  close(many.mode[0], 0.85, 1e-3);
  assert.ok(many.trajectory[many.trajectory.length - 1] < 1e-4);
});

test('critical layers: the last 5, every MoE layer when a model has fewer (the official code), or the setting', () => {
  const sixteen = [...Array(16).keys()];
  assert.deepEqual(criticalLayers(sixteen, 0), [11, 12, 13, 14, 15]);
  assert.deepEqual(criticalLayers([0, 1, 2, 3, 4, 5], 0), [1, 2, 3, 4, 5]);
  assert.deepEqual(criticalLayers([0, 1, 2, 3], 0), [0, 1, 2, 3]); // the demo model: all four
  assert.deepEqual(criticalLayers([0, 1, 2], 0), [0, 1, 2]);
  assert.deepEqual(criticalLayers(sixteen, 3), [13, 14, 15]);
  assert.deepEqual(criticalLayers([1, 3], 9), [1, 3]);
});
