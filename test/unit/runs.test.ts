// Runs: aggregation (load, weight, share, entropy, balance), run diffs, the trace export read back with the
// tests' own safetensors reader, the run store, and runs assembled from the real engine process.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { layerStats, runStats, diffRuns, totalVariation, klDivergence, entropy } from '../../extension/src/runs/aggregate';
import { traceSafetensors, traceCsv } from '../../extension/src/runs/trace';
import { RunStore } from '../../extension/src/runs/store';
import { inspectRun, generateRun } from '../../extension/src/runs/runner';
import { EngineHost } from '../../extension/src/engine/host';
import type { LayerRouting, Run } from '../../extension/src/runs/run';
import { decodeTensor, readSafetensorsRaw } from '../helpers/safetensors';
import { PARITY_DIR, ROOT, tempDir } from '../helpers/cli';

const E = 4;
const K = 2;

function layer(layerIndex: number, logits: number[][], experts: number[][], weights: number[][]): LayerRouting {
  return {
    layer: layerIndex,
    routerLogits: Float32Array.from(logits.flat()),
    experts: Int32Array.from(experts.flat()),
    weights: Float32Array.from(weights.flat()),
    filled: logits.length,
  };
}

function run(id: number, layers: LayerRouting[], extra: Partial<Run> = {}): Run {
  return {
    id,
    kind: 'inspect',
    label: `run ${id}`,
    prompt: 'a b, "c"',
    model: { dir: '/m', name: 'm', modelType: 'olmoe', numLayers: 2, numExperts: E, topK: K, moeLayers: layers.map((l) => l.layer), vocabSize: 3 },
    patch: undefined,
    tokens: [5, 6, 7],
    tokenText: ['a', ' b,', ' "c"'],
    promptTokens: 3,
    startedAt: 0,
    finishedAt: 1,
    layers: new Map(layers.map((l) => [l.layer, l])),
    ...extra,
  };
}

const L0 = layer(
  0,
  [[0, 0, 0, 0], [2, 1, 0, -1], [0, 0, 0, 0]],
  [[0, 1], [0, 1], [2, 0]],
  [[0.5, 0.5], [0.7, 0.3], [0.6, 0.4]],
);

test('layer statistics: load, mean weight, share, entropy, top-1 weight, balance', () => {
  const s = layerStats(L0, E, K);
  assert.equal(s.tokens, 3);
  assert.deepEqual(s.experts.map((x) => x.load), [3, 2, 1, 0]);
  assert.ok(Math.abs(s.experts[0].meanWeight - (0.5 + 0.7 + 0.4) / 3) < 1e-6);
  assert.ok(Math.abs(s.experts[1].meanWeight - 0.4) < 1e-6);
  assert.equal(s.experts[3].meanWeight, 0);
  assert.deepEqual(s.experts.map((x) => x.share), [1, 2 / 3, 1 / 3, 0]);
  assert.equal(s.unusedExperts, 1);
  // Uniform logits → entropy ln 4.
  assert.ok(Math.abs(s.entropy[0] - Math.log(4)) < 1e-6);
  assert.ok(s.entropy[1] < Math.log(4));
  assert.ok(Math.abs(s.meanEntropy - (s.entropy[0] + s.entropy[1] + s.entropy[2]) / 3) < 1e-6);
  assert.deepEqual([...s.top1Weight].map((v) => +v.toFixed(3)), [0.5, 0.7, 0.6]);
  // loads 3,2,1,0: mean 1.5, population std sqrt(1.25).
  assert.ok(Math.abs(s.loadCv - Math.sqrt(1.25) / 1.5) < 1e-9);
  // Switch balance E·Σ f_i P_i with f = load / (T·k).
  const p1 = [2, 1, 0, -1].map(Math.exp);
  const z = p1.reduce((a, b) => a + b);
  const P = [0, 1, 2, 3].map((e) => (0.25 + p1[e] / z + 0.25) / 3);
  const f = [3, 2, 1, 0].map((l) => l / 6);
  assert.ok(Math.abs(s.switchBalance - 4 * f.reduce((acc, fi, i) => acc + fi * P[i], 0)) < 1e-9);
  // Perfectly even routing: CV 0 and balance 1.
  const even = layerStats(layer(1, [[0, 0, 0, 0], [0, 0, 0, 0]], [[0, 1], [2, 3]], [[0.5, 0.5], [0.5, 0.5]]), E, K);
  assert.equal(even.loadCv, 0);
  assert.ok(Math.abs(even.switchBalance - 1) < 1e-9);
  assert.equal(runStats(run(1, [L0])).length, 1);
});

test('diff: changed expert sets per cell (order within top-k ignored), common token prefix, next-token change', () => {
  const patched = layer(
    0,
    [[0, 0, 0, 0], [2, 1, 0, -1], [0, 0, 0, 0]],
    [[1, 0], [0, 2], [2, 0]],
    [[0.5, 0.5], [0.7, 0.3], [0.6, 0.4]],
  );
  const a = run(1, [L0], { nextTokenProbs: Float32Array.of(0.5, 0.5, 0) });
  const b = run(2, [patched], { nextTokenProbs: Float32Array.of(0.25, 0.5, 0.25) });
  const d = diffRuns(a, b);
  assert.equal(d.tokens, 3);
  assert.deepEqual([...d.layers[0].changed], [0, 1, 0]);
  assert.deepEqual([...d.layers[0].top1Changed], [1, 0, 0]);
  assert.equal(d.changedCells, 1);
  assert.equal(d.totalCells, 3);
  assert.ok(Math.abs(d.nextToken!.totalVariation - 0.25) < 1e-6);
  assert.ok(Math.abs(d.nextToken!.klAtoB - 0.5 * Math.log(2)) < 1e-6);
  assert.equal(totalVariation([1, 0], [1, 0]), 0);
  assert.equal(klDivergence([1, 0], [1, 0]), 0);
  assert.ok(Math.abs(entropy([0.5, 0.5]) - Math.log(2)) < 1e-12);
  const c = run(3, [patched], { tokens: [5, 9, 7] });
  assert.equal(diffRuns(a, c).tokens, 1, 'only the common prefix is compared');
  assert.throws(() => diffRuns(a, run(4, [L0], { model: { ...a.model, topK: 1 } })), /different experts or top-k/);
});

test('export: safetensors [L,T,E]/[L,T,k] with JSON metadata reads back; CSV quotes token text', () => {
  const L1 = layer(1, [[1, 2, 3, 4], [4, 3, 2, 1], [0, 0, 1, 0]], [[3, 2], [0, 1], [2, 0]], [[0.6, 0.4], [0.55, 0.45], [0.9, 0.1]]);
  const r = run(1, [L1, L0], { patch: { layers: { '1': { mask: [1] } } } });
  const dir = tempDir();
  const file = path.join(dir, 'trace.safetensors');
  fs.writeFileSync(file, traceSafetensors(r));
  const st = readSafetensorsRaw(file);
  const logits = decodeTensor(st, 'router_logits');
  assert.equal(logits.dtype, 'F32');
  assert.deepEqual(logits.shape, [2, 3, 4]);
  assert.deepEqual([...logits.values], [...L0.routerLogits, ...L1.routerLogits], 'layers ascending');
  const experts = decodeTensor(st, 'experts');
  assert.equal(experts.dtype, 'I32');
  assert.deepEqual(experts.shape, [2, 3, 2]);
  assert.deepEqual([...experts.values], [...L0.experts, ...L1.experts]);
  const weights = decodeTensor(st, 'weights');
  assert.deepEqual(weights.shape, [2, 3, 2]);
  assert.deepEqual([...weights.values], [...L0.weights, ...L1.weights]);
  const meta = st.metadata!;
  assert.deepEqual(JSON.parse(meta.tokens), [5, 6, 7]);
  assert.deepEqual(JSON.parse(meta.token_text), ['a', ' b,', ' "c"']);
  assert.deepEqual(JSON.parse(meta.layers), [0, 1]);
  assert.deepEqual(JSON.parse(meta.patch), { layers: { '1': { mask: [1] } } });
  assert.equal(JSON.parse(meta.model).model_type, 'olmoe');
  for (const value of Object.values(meta)) assert.equal(typeof value, 'string');

  const csv = traceCsv(r).trimEnd().split('\n');
  assert.equal(csv[0], 'layer,position,token_id,token,expert_1,expert_2,weight_1,weight_2,router_entropy');
  assert.equal(csv.length, 1 + 2 * 3);
  assert.match(csv[1], /^0,0,5,a,0,1,0\.5,0\.5,1\.38629/);
  assert.match(csv[2], /^0,1,6," b,",0,1,/);
  assert.match(csv[3], /^0,2,7," ""c""",2,0,/);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('run store: ids, selection, previous run on the same model, history limit, events', () => {
  const store = new RunStore(2);
  const events: string[] = [];
  store.onDidChange((c) => events.push(`${c.kind}:${c.run?.id ?? ''}`));
  const a = run(store.nextId(), [L0]);
  const b = run(store.nextId(), [L0]);
  store.add(a);
  store.add(b);
  assert.equal(store.selected, b);
  assert.equal(store.previous(b), a);
  assert.equal(store.previous(a), undefined);
  const other = run(store.nextId(), [L0], { model: { ...a.model, dir: '/other' } });
  store.add(other, false);
  assert.deepEqual(store.all().map((r) => r.id), [2, 3], 'oldest dropped beyond the limit');
  assert.equal(store.previous(other), undefined, 'different model');
  store.select(3);
  store.updated(other);
  store.clear();
  assert.equal(store.size, 0);
  assert.deepEqual(events, ['added:1', 'selected:1', 'added:2', 'selected:2', 'removed:1', 'added:3', 'selected:3', 'updated:3', 'cleared:']);
});

test('runner: inspect and generate runs filled from the engine process stream', async () => {
  const host = new EngineHost({ workerPath: path.join(ROOT, 'dist', 'engine-worker.js') });
  try {
    await host.load({ dir: path.join(PARITY_DIR, 'olmoe-fused-f32-sharded', 'model'), threads: 1 });
    const updates: (number | undefined)[] = [];
    const inspected = await inspectRun(host, { id: 1, input: { tokens: [3, 1, 4, 1, 5] }, onUpdate: (_r, l) => updates.push(l) });
    const info = host.loaded!.info;
    assert.equal(inspected.layers.size, info.moeLayers.length);
    for (const l of inspected.layers.values()) {
      assert.equal(l.filled, 5);
      assert.equal(l.experts.length, 5 * info.topK);
    }
    assert.deepEqual(new Set(updates), new Set(info.moeLayers));
    assert.equal(inspected.tokenText[0], '#3');
    assert.ok(inspected.nextTokenProbs && inspected.nextTokens!.length > 0);
    assert.match(inspected.label, /^Inspect: 3 1 4 1 5/);

    const patched = await inspectRun(host, { id: 2, input: { tokens: [3, 1, 4, 1, 5] }, patch: { layers: { [String(info.moeLayers[0])]: { mask: [...inspected.layers.get(info.moeLayers[0])!.experts.slice(0, 1)] } } } });
    const d = diffRuns(inspected, patched);
    assert.ok(d.layers[0].changed[0] === 1, 'masking the first token\'s top-1 expert changes its cell');
    assert.match(patched.label, /\(patched\)/);

    const generated = await generateRun(host, { id: 3, input: { tokens: [3, 1, 4] }, maxNewTokens: 4 });
    assert.equal(generated.tokens.length, 3 + 4);
    for (const l of generated.layers.values()) {
      assert.equal(l.filled, 3 + 3, 'prompt + every generated token but the last is routed');
      assert.equal(l.routerLogits.length, l.filled * info.numExperts);
    }
    assert.ok(typeof generated.generatedText === 'string');
  } finally {
    host.dispose();
  }
});
