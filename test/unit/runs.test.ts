// Runs: layer statistics (load, weight, share, router entropy in nats, balance), the trace export read back with
// the tests' own safetensors reader, the run store, and runs assembled from the real engine process.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { entropy, klDivergence, totalVariation } from '../../common/src/math';
import { LayerRouting } from '../../common/src/routing';
import { compareRuns } from '../../extension/src/runs/compare';
import { traceSafetensors, traceCsv } from '../../extension/src/runs/trace';
import { RunStore } from '../../extension/src/runs/store';
import { inspectRun, generateRun } from '../../extension/src/runs/runner';
import { EngineHost } from '../../extension/src/engine/host';
import type { Run } from '../../extension/src/runs/run';
import { decodeTensor, readSafetensorsRaw } from '../helpers/safetensors';
import { PARITY_DIR, ROOT, tempDir } from '../helpers/cli';

const E = 4;
const K = 2;

function layer(layerIndex: number, logits: number[][], experts: number[][], weights: number[][]): LayerRouting {
  return LayerRouting.of(layerIndex, E, K, { routerLogits: logits.flat(), experts: experts.flat(), weights: weights.flat() });
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

test('layer statistics: load, mean weight, share, router entropy (nats), top-1 weight, balance', () => {
  const s = L0.stats();
  assert.equal(s.tokens, 3);
  assert.deepEqual(s.experts.map((x) => x.load), [3, 2, 1, 0]);
  assert.ok(Math.abs(s.experts[0].meanWeight - (0.5 + 0.7 + 0.4) / 3) < 1e-6);
  assert.ok(Math.abs(s.experts[1].meanWeight - 0.4) < 1e-6);
  assert.equal(s.experts[3].meanWeight, 0);
  assert.deepEqual(s.experts.map((x) => x.share), [1, 2 / 3, 1 / 3, 0]);
  assert.equal(s.unusedExperts, 1);
  // Uniform logits → router entropy ln 4 nats.
  const h = L0.routerEntropy();
  assert.ok(Math.abs(h[0] - Math.log(4)) < 1e-6);
  assert.ok(h[1] < Math.log(4));
  assert.ok(Math.abs(s.meanEntropy - (h[0] + h[1] + h[2]) / 3) < 1e-6);
  assert.ok(Math.abs(s.meanTop1Weight - (0.5 + 0.7 + 0.6) / 3) < 1e-6);
  // loads 3,2,1,0: mean 1.5, population std sqrt(1.25).
  assert.ok(Math.abs(s.loadCv - Math.sqrt(1.25) / 1.5) < 1e-9);
  // Switch balance E·Σ f_i P_i with f = load / (T·k).
  const p1 = [2, 1, 0, -1].map(Math.exp);
  const z = p1.reduce((a, b) => a + b);
  const P = [0, 1, 2, 3].map((e) => (0.25 + p1[e] / z + 0.25) / 3);
  const f = [3, 2, 1, 0].map((l) => l / 6);
  assert.ok(Math.abs(s.switchBalance - 4 * f.reduce((acc, fi, i) => acc + fi * P[i], 0)) < 1e-9);
  // Perfectly even routing: CV 0 and balance 1.
  const even = layer(1, [[0, 0, 0, 0], [0, 0, 0, 0]], [[0, 1], [2, 3]], [[0.5, 0.5], [0.5, 0.5]]).stats();
  assert.equal(even.loadCv, 0);
  assert.ok(Math.abs(even.switchBalance - 1) < 1e-9);
});

test('layer statistics follow streamed spans: incremental sums equal a fresh computation, and a rewritten row is summed again', () => {
  const streamed = new LayerRouting(0, E, K);
  streamed.write(L0.span(0, 2));
  const early = streamed.stats();
  assert.equal(early.tokens, 2);
  streamed.write(L0.span(2, 3));
  assert.deepEqual(streamed.stats(), L0.stats());
  // A later span for the same position replaces it (and its share of the sums).
  const replaced = layer(0, [[5, 0, 0, 0]], [[3, 2]], [[0.9, 0.1]]).span(0, 1);
  streamed.write(replaced);
  const expected = layer(0, [[5, 0, 0, 0], [2, 1, 0, -1], [0, 0, 0, 0]], [[3, 2], [0, 1], [2, 0]], [[0.9, 0.1], [0.7, 0.3], [0.6, 0.4]]).stats();
  assert.deepEqual(streamed.stats(), expected);
  assert.throws(() => streamed.write({ ...L0.span(0, 1), start: 9 }), /starts at position 9, after the 3 filled/);
  assert.equal(streamed.bytesCopied, (3 + 1) * (E * 4 + K * 4 * 2), 'each written row counted once; no growth copies');
});

test('compareRuns: changed expert sets per cell (order within top-k ignored), next-token change, the notification line', () => {
  const patched = layer(
    0,
    [[0, 0, 0, 0], [2, 1, 0, -1], [0, 0, 0, 0]],
    [[1, 0], [0, 2], [2, 0]],
    [[0.5, 0.5], [0.7, 0.3], [0.6, 0.4]],
  );
  const a = run(1, [L0], { nextTokenProbs: Float32Array.of(0.5, 0.5, 0) });
  const b = run(2, [patched], { nextTokenProbs: Float32Array.of(0.25, 0.5, 0.25) });
  const { diff: d, summary } = compareRuns(a, b);
  assert.deepEqual([...d.layers[0].change], [0, 0.5, 0]);
  assert.deepEqual([...d.layers[0].top1Changed], [1, 0, 0]);
  assert.equal(d.changedCells, 1);
  assert.equal(d.comparedCells, 3);
  assert.ok(Math.abs(d.nextToken!.totalVariation - 0.25) < 1e-6);
  assert.ok(d.nextToken!.exact);
  assert.ok(Math.abs(d.nextToken!.klAtoB! - 0.5 * Math.log(2)) < 1e-6);
  assert.match(summary, /^run #1 vs #2: 1 of 3 cells route to a different expert set \(33\.3%\); top-1 changed in 1; next-token distribution: total variation 0\.250, KL\(A‖B\) 0\.347 nats/);
  assert.equal(totalVariation([1, 0], [1, 0]), 0);
  assert.equal(klDivergence([1, 0], [1, 0]), 0);
  assert.ok(Math.abs(entropy([0.5, 0.5]) - Math.log(2)) < 1e-12);
  const c = run(3, [patched], { tokens: [5, 9, 7] });
  const other = compareRuns(a, c).diff;
  assert.equal(other.comparedCells, 3, 'every position is compared, not just the common prefix');
  assert.equal(other.tokenMismatch, 1);
  const narrow = run(4, [LayerRouting.of(0, E, 1, { routerLogits: [0, 0, 0, 0], experts: [0], weights: [1] })]);
  assert.throws(() => compareRuns(a, narrow), /different experts or top-k/);
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
  assert.equal(csv[0], 'layer,position,token_id,token,expert_1,expert_2,weight_1,weight_2,router_entropy_nats');
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
    const inspected = await inspectRun(host, { id: 1, input: { tokens: [3, 1, 4, 1, 5] }, onUpdate: (_r, span) => updates.push(span?.layer) });
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
    const d = compareRuns(inspected, patched).diff;
    assert.ok(d.layers[0].change[0] > 0, 'masking the first token\'s top-1 expert changes its cell');
    assert.match(patched.label, /\(patched\)/);

    const generated = await generateRun(host, { id: 3, input: { tokens: [3, 1, 4] }, maxNewTokens: 4 });
    assert.equal(generated.tokens.length, 3 + 4);
    for (const l of generated.layers.values()) {
      assert.equal(l.filled, 3 + 3, 'prompt + every generated token but the last is routed');
      assert.equal(l.capacity, 3 + 3, 'allocated once, to the size it needed');
      assert.equal(l.bytesCopied, l.filled * (info.numExperts + 2 * info.topK) * 4, 'each span copied once into the run');
    }
    assert.ok(typeof generated.generatedText === 'string');
  } finally {
    host.dispose();
  }
});

test('runner: a span that does not fit the run fails the run with its message (the host\'s message handler never throws)', async () => {
  const info = { dir: '/m', modelType: 'olmoe', numLayers: 2, numExperts: E, topK: K, moeLayers: [0, 1], vocabSize: 8, maxPositionEmbeddings: 64 };
  const events: unknown[] = [];
  const host = {
    loaded: { info, tokenizer: false, rssBytes: 0 },
    request: async (method: string, _params: unknown, options: { onEvent?: (e: unknown) => void }) => {
      if (method === 'decode') return { text: '', tokenText: [] };
      // Layer 0 streams rows 0..1, then a span starting at 3: position 2 would be missing.
      for (const routing of [L0.span(0, 2), { ...L0.span(0, 1), start: 3 }]) {
        events.push(routing);
        options.onEvent?.({ kind: 'layer', routing });
      }
      return { logits: new Float32Array(0), rows: 0, nextTokens: [] };
    },
  } as unknown as EngineHost;
  await assert.rejects(inspectRun(host, { id: 1, input: { tokens: [1, 2, 3, 4] } }), /routing span of layer 0 starts at position 3, after the 2 filled/);
  assert.equal(events.length, 2);
});
