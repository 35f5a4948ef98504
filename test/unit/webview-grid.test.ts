// The routing panel's pure parts: colour scales, grid downsampling (with a timing against a naive peer at
// 4,096 tokens × 48 layers × 128 experts, printed, never asserted) and the run data the grid draws from.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { expertHex, expertPalette, lutIndex, packRgba, parseCssColor, rampLut, unpackRgba, VIRIDIS_ANCHORS } from '../../webview/src/colors';
import { blockFor, DownsampleCache, downsampleMode, downsampleNumeric } from '../../webview/src/downsample';
import { RunRouting } from '../../webview/src/runData';
import { visibleToken } from '../../common/src/format';
import { softmaxEntropy } from '../../common/src/math';
import type { RoutingSpan } from '../../common/src/routing';
import type { RunInfo } from '../../common/src/run';

test('expert palette: deterministic, distinct for 256 experts, valid hex', () => {
  const colours = Array.from({ length: 256 }, (_, e) => expertHex(e));
  assert.equal(new Set(colours).size, 256);
  for (const c of colours) assert.match(c, /^#[0-9a-f]{6}$/);
  assert.equal(expertHex(17), colours[17]);
  // Neighbouring experts are far apart (sum of channel differences).
  for (let e = 0; e + 1 < 64; e++) {
    const [a, b] = [parseCssColor(colours[e])!, parseCssColor(colours[e + 1])!];
    assert.ok(Math.abs(a[0] - b[0]) + Math.abs(a[1] - b[1]) + Math.abs(a[2] - b[2]) > 60, `experts ${e} and ${e + 1} too close`);
  }
  const packed = expertPalette(4);
  assert.deepEqual(unpackRgba(packed[2]), parseCssColor(colours[2]));
});

test('colour packing and the viridis ramp', () => {
  assert.deepEqual(unpackRgba(packRgba([1, 2, 3, 255])), [1, 2, 3, 255]);
  assert.deepEqual(parseCssColor('rgb(255, 0, 0)'), [255, 0, 0, 255]);
  assert.deepEqual(parseCssColor('#00000080'), [0, 0, 0, 128]);
  assert.equal(parseCssColor('not a colour'), undefined);
  const lut = rampLut();
  assert.deepEqual(unpackRgba(lut[0]), parseCssColor(VIRIDIS_ANCHORS[0]));
  assert.deepEqual(unpackRgba(lut[255]), parseCssColor(VIRIDIS_ANCHORS[4]));
  assert.equal(lutIndex(-1), 0);
  assert.equal(lutIndex(2), 255);
  assert.equal(lutIndex(0.5), 128);
  assert.equal(lutIndex(NaN), undefined);
});

test('downsampling: majority per block (ties to the lower expert), mean, max, missing cells skipped', () => {
  const experts = Int32Array.from([3, 3, 1, 2, 2, 1, -1, -1, 5]);
  assert.deepEqual([...downsampleMode(experts, 9, 3, 8)], [3, 2, 5]);
  assert.deepEqual([...downsampleMode(experts, 8, 4, 8)], [3, 1]);
  assert.deepEqual([...downsampleMode(Int32Array.from([-1, -1]), 2, 2, 8)], [-1]);
  const values = Float32Array.from([0, 1, NaN, 0.5, NaN, NaN]);
  assert.deepEqual([...downsampleNumeric(values, 6, 2, 'mean')], [0.5, 0.5, NaN]);
  assert.deepEqual([...downsampleNumeric(values, 6, 2, 'max')], [1, 0.5, NaN]);
  assert.equal(blockFor(3, 2), 1);
  assert.equal(blockFor(1, 2), 2);
  assert.equal(blockFor(0.3, 2), 8);
  assert.equal(blockFor(0.01, 2), 256);
});

test('downsample cache rebuilds a row only when its version changes', () => {
  const cache = new DownsampleCache();
  const v = Int32Array.from([1, 1, 2, 2]);
  const a = cache.mode('e', 0, 1, v, 4, 2, 4);
  assert.equal(cache.mode('e', 0, 1, v, 4, 2, 4), a);
  v[0] = 2; v[1] = 2;
  assert.deepEqual([...cache.mode('e', 0, 2, v, 4, 2, 4)], [2, 2]);
  assert.equal(cache.mode('e', 0, 2, v, 4, 1, 4), v, 'block 1 is the row itself');
});

test('benchmark: downsampling 4,096 tokens × 48 layers × 128 experts at every zoom level (ratio vs a naive peer)', () => {
  const T = 4096, L = 48, E = 128;
  let seed = 1;
  const rand = () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 4294967296);
  const rows = Array.from({ length: L }, () => Int32Array.from({ length: T }, () => Math.floor(rand() * E)));
  const naiveMode = (values: Int32Array, block: number): number[] => {
    const out: number[] = [];
    for (let b = 0; b < values.length; b += block) {
      const counts = new Map<number, number>();
      for (const v of values.subarray(b, b + block)) counts.set(v, (counts.get(v) ?? 0) + 1);
      out.push([...counts.entries()].sort((x, y) => y[1] - x[1] || x[0] - y[0])[0][0]);
    }
    return out;
  };
  const blocks = [2, 4, 8, 16, 32, 64, 128, 256];
  let t0 = performance.now();
  for (const block of blocks) for (const row of rows) downsampleMode(row, T, block, E);
  const ours = performance.now() - t0;
  t0 = performance.now();
  for (const block of blocks) for (const row of rows) naiveMode(row, block);
  const naive = performance.now() - t0;
  for (const block of blocks) assert.deepEqual([...downsampleMode(rows[5], T, block, E)], naiveMode(rows[5], block), `block ${block}`);
  console.log(`# downsampleMode, ${L} rows × ${T} tokens × ${blocks.length} levels: ${ours.toFixed(1)} ms; naive Map peer ${naive.toFixed(1)} ms (×${(naive / ours).toFixed(1)})`);
});

function info(T: number, E = 4, k = 2, layers = [0, 2]): RunInfo {
  return {
    id: 1, kind: 'inspect', label: 'r', prompt: 'p',
    model: { dir: '/m', name: 'm', modelType: 'olmoe', numLayers: 3, numExperts: E, topK: k, moeLayers: layers, vocabSize: 10 },
    patch: undefined, tokens: Array.from({ length: T }, (_, i) => i), tokenText: Array.from({ length: T }, () => 'x'), promptTokens: T, startedAt: 0,
  };
}
function chunk(layer: number, start: number, experts: number[][], logits?: number[][], E = 4): RoutingSpan {
  const count = experts.length;
  return {
    layer, start, count, numExperts: E, topK: experts[0].length,
    routerLogits: Float32Array.from((logits ?? experts.map(() => new Array(E).fill(0))).flat()),
    experts: Int32Array.from(experts.flat()),
    weights: Float32Array.from(experts.flatMap((row) => row.map((_, j) => (j === 0 ? 0.7 : 0.3)))),
  };
}

test('run data: streamed spans fill rows, derive top-1, weight, entropy ÷ ln E and load', () => {
  const run = new RunRouting(info(3));
  assert.equal(run.addSpan(chunk(1, 0, [[0, 1]])), undefined, 'layer 1 is not a MoE layer of this run');
  assert.equal(run.addSpan(chunk(2, 0, [[2, 1], [2, 3]], [[0, 0, 0, 0], [0, 0, 100, 0]])), 1);
  assert.equal(run.filled[1], 2);
  assert.equal(run.layersArrived, 1);
  assert.deepEqual([...run.top1[1].subarray(0, 3)], [2, 2, -1]);
  assert.ok(Math.abs(run.entropy[1][0] - 1) < 1e-6, 'uniform logits: normalised entropy 1');
  assert.ok(Math.abs(run.routerEntropy(1, 0)! - Math.log(4)) < 1e-6, 'the same cell in nats: ln 4');
  assert.ok(run.entropy[1][1] < 1e-6, 'one dominant logit: entropy 0');
  assert.ok(Math.abs(run.top1Weight[1][0] - 0.7) < 1e-6);
  const share = run.loadShare();
  assert.deepEqual([...share.subarray(4, 8)], [0, 0.5, 1, 0.5]);
  const stats = run.layerStats(1)!;
  assert.equal(stats.unusedExperts, 1);
  assert.equal(stats.maxOverMean, 2);
  assert.ok(Math.abs(stats.meanEntropy - Math.log(4) / 2) < 1e-6, 'mean router entropy in nats');
  // Generation: routing for a position beyond the token list grows the run.
  run.addSpan(chunk(0, 0, [[0, 1], [0, 1], [0, 1]]));
  run.addSpan(chunk(0, 3, [[1, 0]]));
  assert.equal(run.T, 4);
  assert.deepEqual(run.cell(0, 3), [{ expert: 1, weight: Math.fround(0.7) }, { expert: 0, weight: Math.fround(0.3) }]);
  assert.equal(softmaxEntropy([0, 0], 0, 2).toFixed(6), Math.log(2).toFixed(6));
});

test('token text shows whitespace, as the CLI table does', () => {
  assert.equal(visibleToken(' the\n'), '·the⏎');
  assert.equal(visibleToken('\t'), '⇥');
  assert.equal(visibleToken(''), '∅');
});
