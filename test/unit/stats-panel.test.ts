// The statistics panel's data path (webview/src/stats/model.ts over the aggregate of common/src/routingStats.ts) at
// the size the issue names — 10,000 prompts × 48 layers × 128 experts, top-8 — against the same shapes counted over
// 100 prompts: what crosses to the webview does not grow with the prompts' tokens (only the prompt ids do), and the
// panel's work per view (load, one expert, co-activation and flow of every layer, a paired ranking) costs the same
// at both sizes. Timings are printed, and compared only as ratios measured in this run (with one structured clone of
// the message as the peer). Plus the panel's figures equal the CLI's queries on small data, and the flow picture's
// axes stay readable from 4 to 96 layers.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as v8 from 'node:v8';
import { RoutingStats, type RoutingStatsResult } from '../../common/src/routingStats';
import { activationDifference, activationRates, coActivationShare, expertTopTokens, flowCounts, totalCounts } from '../../common/src/statsQueries';
import { reviveStatsData, type StatsPanelData } from '../../common/src/statsProtocol';
import { FLOW_PICTURE, flowAxes, StatsModel } from '../../webview/src/stats/model';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296);
}

const SHAPE = { layers: Array.from({ length: 48 }, (_, i) => i), numExperts: 128, topK: 8, vocabSize: 50_000 };
const GROUPS = ['add', 'sub', 'compare', 'count'];

/** Statistics of `counted` random prompts (skewed routing). */
function statistics(counted: number, seed: number): RoutingStatsResult {
  const rand = rng(seed);
  const { layers, numExperts: E, topK: k } = SHAPE;
  const stats = new RoutingStats(SHAPE, { groups: GROUPS });
  for (let p = 0; p < counted; p++) {
    const T = 24;
    const tokens = Array.from({ length: T }, () => Math.floor(rand() ** 3 * SHAPE.vocabSize));
    stats.beginPrompt(p, p % GROUPS.length, tokens);
    for (const layer of layers) {
      const experts = new Int32Array(T * k);
      const weights = new Float32Array(T * k);
      for (let t = 0; t < T; t++) {
        const chosen = new Set<number>();
        while (chosen.size < k) chosen.add(Math.floor(rand() ** 1.7 * E));
        [...chosen].forEach((e, j) => {
          experts[t * k + j] = e;
          weights[t * k + j] = (k - j) / (k * (k + 1) / 2);
        });
      }
      stats.add({ layer, start: 0, count: T, numExperts: E, topK: k, routerLogits: new Float32Array(T * E), experts, weights });
    }
    stats.endPrompt();
  }
  return stats.result(32);
}

/** A copy of `counted`'s statistics scaled to stand for `prompts` prompts. */
function scaled(base: RoutingStatsResult, prompts: number): RoutingStatsResult {
  const r = structuredClone(base);
  const counted = base.prompts;
  // Stand for `prompts` prompts: every count scaled (the shapes — what the panel's work depends on — are the same).
  const f = prompts / counted;
  for (const g of r.groups) {
    g.prompts *= f;
    g.tokens *= f;
    for (const a of [g.activations, g.top1, g.weight, g.entropy]) for (let i = 0; i < a.length; i++) a[i] *= f;
  }
  for (const a of [r.coActivation, r.flow, r.tokenCounts, r.topTokens.counts]) for (let i = 0; i < a.length; i++) a[i] *= f;
  r.prompts = prompts;
  return r;
}

function panelData(result: RoutingStatsResult): StatsPanelData {
  const ids = new Set<number>();
  for (const id of result.topTokens.ids) if (id >= 0) ids.add(id);
  const sorted = Int32Array.from([...ids].sort((a, b) => a - b));
  return {
    source: 'set.jsonl', sources: ['/data/set.jsonl'], model: 'olmoe', groupBy: 'skill', result,
    tokenTexts: { ids: sorted, texts: Array.from(sorted, (id) => `tok${id}`) },
    promptIds: Array.from({ length: result.prompts }, (_, i) => `item-${i}`),
    labelled: true, completed: result.prompts, total: result.prompts, cancelled: false, seconds: 1,
  };
}

/** What the panel computes when it opens and as a user walks through it: every layer's figures and a pair. */
function walkPanel(data: StatsPanelData): number {
  const m = new StatsModel(data);
  let sink = 0;
  for (const g of ['all', ...m.groups]) sink += m.rates(g)[0];
  for (let r = 0; r < m.L; r++) {
    sink += m.orderByLoad(r)[0];
    sink += m.topTokens(r, r % m.E, 15).length + m.contexts(r, r % m.E).length;
    sink += m.coActivation(r)[1] + m.topPairs(r).length;
    if (r + 1 < m.L) sink += m.topPaths(r).length;
  }
  sink += m.flow().ribbons.length;
  sink += m.ranking('add', 'sub')[0].delta;
  return sink;
}

function best(fn: () => void, runs = 3): number {
  let min = Infinity;
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    fn();
    min = Math.min(min, performance.now() - t0);
  }
  return min;
}

test('the panel\'s data at 10,000 prompts × 48 layers × 128 experts: the message and the work do not grow with the set', () => {
  const base = statistics(40, 7);
  const small = panelData(scaled(base, 100));
  const large = panelData(scaled(base, 10_000));
  const bytes = (d: StatsPanelData): number => v8.serialize({ ...d, promptIds: [] }).length;
  // Only the prompt ids (one short string per prompt) grow; nothing per token crosses (a few bytes: larger counts).
  assert.ok(Math.abs(bytes(large) - bytes(small)) < 64, `${bytes(large)} bytes for 10,000 prompts, ${bytes(small)} for 100`);
  const total = v8.serialize(large).length;
  assert.ok(total < 64 * 2 ** 20, `the message is ${(total / 2 ** 20).toFixed(1)} MiB`);
  walkPanel(small); // warm-up
  const tSmall = best(() => walkPanel(small));
  const tLarge = best(() => walkPanel(large));
  const tClone = best(() => v8.deserialize(v8.serialize(large)));
  console.log(`# panel data path at 48 layers × 128 experts: ${tLarge.toFixed(0)} ms for 10,000 prompts, ${tSmall.toFixed(0)} ms for 100 (ratio ${(tLarge / tSmall).toFixed(2)}); ` +
    `one structured clone of the ${(total / 2 ** 20).toFixed(1)} MiB message ${tClone.toFixed(0)} ms (walk ÷ clone ${(tLarge / tClone).toFixed(2)})`);
  // Same shapes, same work: a generous bound for a shared machine, far below the 100× of the prompts.
  assert.ok(tLarge / tSmall < 4, `10,000 prompts cost ${(tLarge / tSmall).toFixed(1)}× 100 prompts`);
});

test('the panel\'s figures are the CLI\'s queries on the same aggregate', () => {
  const result = statistics(12, 3);
  const m = new StatsModel(panelData(result));
  const all = totalCounts(result);
  assert.deepEqual(Array.from(m.rates('all')), Array.from(activationRates(all)));
  assert.deepEqual(Array.from(m.rates('sub')), Array.from(activationRates(result.groups[1])));
  assert.deepEqual(m.topTokens(5, 3, 10), expertTopTokens(result, 5, 3, 10));
  assert.deepEqual(Array.from(m.coActivation(7)), Array.from(coActivationShare(result, 7)));
  assert.deepEqual(m.ranking('add', 'count'), activationDifference(result, 'add', 'count'));
  const flow = flowCounts(result, 2);
  for (const p of m.topPaths(2, 5)) assert.equal(p.count, flow[p.i * 128 + p.j]);
  // The flow picture's stacks fill each node exactly: outgoing ribbons of expert i at layer 2 end where its node ends.
  const layout = m.flow(0, Number.POSITIVE_INFINITY);
  for (let i = 0; i < 128; i++) {
    const out = layout.ribbons[2].filter((rb) => rb.from === i);
    if (!out.length) continue;
    const end = Math.max(...out.map((rb) => rb.sy1));
    assert.ok(Math.abs(end - layout.nodes[2][i].y1) < 1e-9, `expert ${i}`);
  }
  // A threshold hides paths and says how many tokens they carry.
  const cut = m.flow(0.01, 96);
  const kept = cut.ribbons[2].reduce((s, rb) => s + rb.count, 0);
  assert.equal(kept + cut.hidden[2].tokens, all.tokens);
});

test('the panel restores typed arrays a webview transport turned into {"0": x, …} objects', () => {
  const data = panelData(statistics(3, 5));
  // What code-server's webview transport delivers: every typed array as an object of its indices.
  const plain = JSON.parse(JSON.stringify(data)) as StatsPanelData;
  assert.ok(!(plain.result.coActivation instanceof Float64Array));
  const back = reviveStatsData(plain);
  assert.ok(back.tokenTexts.ids instanceof Int32Array && back.result.groups[0].activations instanceof Float64Array && back.result.topContexts.weights instanceof Float32Array);
  assert.deepEqual(Array.from(back.result.coActivation), Array.from(data.result.coActivation));
  assert.deepEqual(Array.from(back.result.topTokens.ids), Array.from(data.result.topTokens.ids));
  assert.deepEqual(Array.from(back.tokenTexts.ids), Array.from(data.tokenTexts.ids));
  assert.deepEqual(new StatsModel(back).ranking('add', 'sub'), new StatsModel(data).ranking('add', 'sub'));
  // Typed arrays that arrive as typed arrays are kept as they are.
  assert.equal(reviveStatsData(data).result.coActivation, data.result.coActivation);
  assert.throws(() => reviveStatsData({ ...plain, result: { ...plain.result, flow: new Float64Array(3) } }), /flow has 3 values/);
});

test('the flow picture at 4, 16 and 48 layers: columns never closer than the minimum gap, numbers that do not collide, expert names only where they fit', () => {
  const layerLabel = 14; // "47" in the chart font
  const expertLabel = 16; // "e31"
  for (const [layers, host] of [[4, 900], [16, 900], [48, 1500], [48, 700], [96, 1500]]) {
    const axes = flowAxes(layers, host, layerLabel, expertLabel);
    assert.ok(axes.gap >= FLOW_PICTURE.minColumnGap - 1e-9, `${layers} layers in ${host} px: gap ${axes.gap}`);
    assert.ok(axes.width >= host, 'the picture fills the panel');
    // Neighbouring numbers have at least a number's width between them.
    assert.ok(axes.layerStep * axes.gap >= 2 * layerLabel, `${layers} layers in ${host} px: every ${axes.layerStep} at ${axes.gap.toFixed(1)} px`);
  }
  // A few layers: every layer numbered, experts named at every column; 48 layers: every other layer at most, and the
  // experts named at the first and last columns (beside every column they covered the ribbons).
  assert.deepEqual(flowAxes(4, 900, layerLabel, expertLabel), { width: 900, gap: (900 - 88) / 3, layerStep: 1, expertLabels: 'every' });
  const crowded = flowAxes(48, 1500, layerLabel, expertLabel);
  assert.ok(crowded.layerStep >= 2, `every ${crowded.layerStep}`);
  assert.equal(crowded.expertLabels, 'ends');
  // Narrower than 47 minimum gaps: the picture is wider than the panel and scrolls.
  assert.ok(flowAxes(48, 700, layerLabel, expertLabel).width > 700);
});
