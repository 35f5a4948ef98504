// Routing statistics over a prompt set (common/src/routingStats.ts, tokenSketch.ts, statsQueries.ts): every count
// equals a naive recount of the same routing kept per token; the top-token counters are exact while they fit and stay
// within their error bound when they do not; a prompt cancelled half-way counts nowhere; the paired-set ranking and the
// steering patch follow SteerMoE's definition and the patch rules. And a timing at 48 layers × 128 experts, top-8,
// against the naive peer (printed, never asserted).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { validatePatch } from '../../common/src/patch';
import type { RoutingSpan } from '../../common/src/routing';
import { RoutingStats } from '../../common/src/routingStats';
import { activationDifference, coActivationShare, expertContexts, expertTopTokens, flowCounts, steeringPatch, totalCounts } from '../../common/src/statsQueries';
import { TokenSketch } from '../../common/src/tokenSketch';

/** A deterministic generator (LCG) for reproducible routing. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296);
}

interface Prompt { tokens: number[]; group: number; spans: RoutingSpan[] }

/** Prompts with random routing: per layer k distinct experts per token, weights descending, logits random. */
function makePrompts(n: number, o: { layers: number[]; E: number; k: number; vocab: number; groups: number; seed: number; maxLen: number }): Prompt[] {
  const rand = rng(o.seed);
  return Array.from({ length: n }, () => {
    const T = 1 + Math.floor(rand() * o.maxLen);
    const tokens = Array.from({ length: T }, () => Math.floor(rand() ** 2 * o.vocab)); // skewed: some tokens common
    const spans = o.layers.map((layer) => {
      const experts = new Int32Array(T * o.k);
      const weights = new Float32Array(T * o.k);
      const routerLogits = new Float32Array(T * o.E);
      for (let t = 0; t < T; t++) {
        const chosen = new Set<number>();
        while (chosen.size < o.k) chosen.add(Math.floor(rand() ** 1.5 * o.E));
        [...chosen].forEach((e, j) => {
          experts[t * o.k + j] = e;
          weights[t * o.k + j] = (o.k - j) / o.k;
        });
        for (let e = 0; e < o.E; e++) routerLogits[t * o.E + e] = rand() * 4 - 2;
      }
      return { layer, start: 0, count: T, numExperts: o.E, topK: o.k, routerLogits, experts, weights };
    });
    return { tokens, group: Math.floor(rand() * o.groups), spans };
  });
}

/** The naive peer: every (prompt, layer, position, slot) kept as an object, counted at the end with Maps. */
function naiveCounts(prompts: Prompt[], layers: number[], k: number) {
  const records: { prompt: number; group: number; layer: number; position: number; token: number; experts: number[]; weights: number[] }[] = [];
  prompts.forEach((p, i) => {
    for (const s of p.spans) {
      for (let t = 0; t < s.count; t++) {
        records.push({ prompt: i, group: p.group, layer: s.layer, position: t, token: p.tokens[t], experts: Array.from(s.experts.subarray(t * k, (t + 1) * k)), weights: Array.from(s.weights.subarray(t * k, (t + 1) * k)) });
      }
    }
  });
  const activations = new Map<string, number>();
  const tokenPerExpert = new Map<string, number>();
  const co = new Map<string, number>();
  const flow = new Map<string, number>();
  const top1 = new Map<string, number>();
  for (const r of records) {
    top1.set(`${r.layer}/${r.position}/${r.prompt}`, r.experts[0]);
    for (let a = 0; a < r.experts.length; a++) {
      const key = `${r.group}/${r.layer}/${r.experts[a]}`;
      activations.set(key, (activations.get(key) ?? 0) + 1);
      const tk = `${r.layer}/${r.experts[a]}/${r.token}`;
      tokenPerExpert.set(tk, (tokenPerExpert.get(tk) ?? 0) + 1);
      for (let b = 0; b < r.experts.length; b++) {
        if (a === b) continue;
        const ck = `${r.layer}/${r.experts[a]}/${r.experts[b]}`;
        co.set(ck, (co.get(ck) ?? 0) + 1);
      }
    }
  }
  for (const r of records) {
    const i = layers.indexOf(r.layer);
    if (i + 1 >= layers.length) continue;
    const next = top1.get(`${layers[i + 1]}/${r.position}/${r.prompt}`)!;
    const fk = `${r.layer}/${r.experts[0]}/${next}`;
    flow.set(fk, (flow.get(fk) ?? 0) + 1);
  }
  return { activations, tokenPerExpert, co, flow };
}

function aggregate(prompts: Prompt[], shape: { layers: number[]; numExperts: number; topK: number; vocabSize: number }, groups: number, slots?: number): RoutingStats {
  const stats = new RoutingStats(shape, { groups: Array.from({ length: groups }, (_, g) => `g${g}`), ...(slots ? { tokenSlots: slots } : {}) });
  prompts.forEach((p, i) => {
    stats.beginPrompt(i, p.group, p.tokens);
    for (const s of p.spans) stats.add(s);
    stats.endPrompt();
  });
  return stats;
}

test('every count equals a naive recount of the routing kept per token', () => {
  const layers = [0, 2, 3];
  const [E, k, vocab] = [8, 2, 40];
  const prompts = makePrompts(60, { layers, E, k, vocab, groups: 3, seed: 5, maxLen: 30 });
  const result = aggregate(prompts, { layers, numExperts: E, topK: k, vocabSize: vocab }, 3).result(64);
  const naive = naiveCounts(prompts, layers, k);
  result.groups.forEach((g, gi) => layers.forEach((layer, r) => {
    for (let e = 0; e < E; e++) assert.equal(g.activations[r * E + e], naive.activations.get(`${gi}/${layer}/${e}`) ?? 0, `activations ${gi}/${layer}/${e}`);
  }));
  assert.equal(totalCounts(result).tokens, prompts.reduce((n, p) => n + p.tokens.length, 0));
  layers.forEach((layer, r) => {
    for (let i = 0; i < E; i++) for (let j = 0; j < E; j++) {
      if (i === j) continue;
      assert.equal(result.coActivation[(r * E + i) * E + j], naive.co.get(`${layer}/${i}/${j}`) ?? 0, `co-activation ${layer}/${i}/${j}`);
    }
    if (r + 1 < layers.length) {
      const flow = flowCounts(result, r);
      for (let i = 0; i < E; i++) for (let j = 0; j < E; j++) assert.equal(flow[i * E + j], naive.flow.get(`${layer}/${i}/${j}`) ?? 0, `flow ${layer}/${i}→${j}`);
    }
    // The vocabulary (40) fits the default counters: top tokens are exact, largest first.
    for (let e = 0; e < E; e++) {
      const top = expertTopTokens(result, r, e);
      for (const t of top) {
        assert.equal(t.error, 0);
        assert.equal(t.count, naive.tokenPerExpert.get(`${layer}/${e}/${t.token}`), `top token ${layer}/${e}/${t.token}`);
      }
      for (let i = 1; i < top.length; i++) assert.ok(top[i - 1].count >= top[i].count);
    }
  });
  // Co-activation shares: the diagonal is the activation rate.
  const share = coActivationShare(result, 0);
  const all = totalCounts(result);
  assert.ok(Math.abs(share[3 * E + 3] - all.activations[3] / all.tokens) < 1e-12);
  // Contexts: the largest weights (here the top slot's weight, 1), earliest first on ties.
  const ctx = expertContexts(result, 0, prompts[0].spans[0].experts[0]);
  assert.ok(ctx.length > 0 && ctx.every((c) => c.weight <= 1 && c.prompt >= 0));
});

test('top-token counters: exact while they fit; past that, every kept count is within its error bound', () => {
  const rand = rng(11);
  const sketch = new TokenSketch(3, 16);
  const truth = [new Map<number, number>(), new Map<number, number>(), new Map<number, number>()];
  for (let i = 0; i < 20000; i++) {
    const x = i % 3;
    const token = Math.floor(rand() ** 3 * (x === 0 ? 12 : 500)); // expert 0: 12 distinct tokens; others: many
    sketch.add(x, token);
    truth[x].set(token, (truth[x].get(token) ?? 0) + 1);
  }
  for (const t of sketch.top(0, 16)) assert.deepEqual([t.count, t.error], [truth[0].get(t.token), 0]);
  const n = [...truth[1].values()].reduce((a, b) => a + b, 0);
  for (const x of [1, 2]) {
    for (const t of sketch.top(x, 16)) {
      const real = truth[x].get(t.token) ?? 0;
      assert.ok(real <= t.count && t.count <= real + t.error, `token ${t.token}: true ${real}, kept ${t.count} ± ${t.error}`);
    }
    // Space-Saving keeps every token more frequent than N / slots.
    for (const [token, count] of truth[x]) if (count > n / 16) assert.ok(sketch.top(x, 16).some((t) => t.token === token), `frequent token ${token} (${count}) kept`);
  }
});

test('a prompt cancelled half-way counts nowhere', () => {
  const layers = [0, 1];
  const [E, k] = [4, 2];
  const [p] = makePrompts(1, { layers, E, k, vocab: 10, groups: 1, seed: 3, maxLen: 12 });
  const stats = new RoutingStats({ layers, numExperts: E, topK: k, vocabSize: 10 }, { groups: ['all'] });
  const before = JSON.stringify(Array.from(stats.result().coActivation));
  stats.beginPrompt(0, 0, p.tokens);
  stats.add(p.spans[0]);
  stats.abortPrompt();
  const r = stats.result();
  assert.equal(JSON.stringify(Array.from(r.coActivation)), before);
  assert.equal(r.prompts, 0);
  assert.equal(r.groups[0].tokens, 0);
  assert.ok(r.groups[0].activations.every((v) => v === 0));
});

test('paired sets: SteerMoE risk difference ranked by |Δ|, and a patch masking or forcing one side\'s top experts within the rules', () => {
  const layers = [0, 1];
  const [E, k] = [4, 2];
  const stats = new RoutingStats({ layers, numExperts: E, topK: k, vocabSize: 4 }, { groups: ['A', 'B'] });
  // A uses experts 0,1 at layer 0 and 2,3 at layer 1; B the other way round, on half of its tokens.
  const span = (layer: number, rows: number[][]): RoutingSpan => ({ layer, start: 0, count: rows.length, numExperts: E, topK: k, routerLogits: new Float32Array(rows.length * E), experts: Int32Array.from(rows.flat()), weights: Float32Array.from(rows.flat().map(() => 0.5)) });
  stats.beginPrompt(0, 0, [1, 2]);
  stats.add(span(0, [[0, 1], [0, 1]]));
  stats.add(span(1, [[2, 3], [2, 3]]));
  stats.endPrompt();
  stats.beginPrompt(1, 1, [1, 2, 3, 1]);
  stats.add(span(0, [[2, 3], [2, 3], [0, 1], [0, 1]]));
  stats.add(span(1, [[0, 1], [0, 1], [2, 3], [2, 3]]));
  stats.endPrompt();
  const ranking = activationDifference(stats.result(), 'A', 'B');
  assert.equal(ranking.length, 2 * E);
  assert.deepEqual(ranking.slice(0, 8).map((d) => Math.abs(d.delta)), [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]);
  const l0e0 = ranking.find((d) => d.layer === 0 && d.expert === 0)!;
  assert.deepEqual([l0e0.rateA, l0e0.rateB, l0e0.delta], [1, 0.5, 0.5]);
  const shape = { numExperts: E, topK: k, numLayers: 2, moeLayers: layers };
  const mask = steeringPatch(ranking, 'A', 3, 'mask', shape);
  assert.deepEqual(mask.patch, { layers: { 0: { mask: [0, 1] }, 1: { mask: [2] } } });
  validatePatch(mask.patch, 'steering', shape);
  // Masking a third expert at a 4-expert, top-2 layer would leave fewer than 2: left out, with the reason.
  const more = steeringPatch(ranking.map((d) => ({ ...d, delta: d.layer === 0 ? 0.5 : -0.5 })), 'A', 4, 'mask', shape);
  assert.deepEqual(more.patch.layers['0'].mask, [0, 1]);
  assert.equal(more.skipped.length, 2);
  assert.match(more.skipped[0].reason, /fewer than top-2 experts at layer 0/);
  const force = steeringPatch(ranking, 'B', 8, 'force', shape);
  for (const l of Object.values(force.patch.layers)) assert.ok(l.force!.length <= k);
  validatePatch(force.patch, 'steering', shape);
});

test('benchmark: aggregating 48 layers × 128 experts, top-8 (ratio vs a naive peer that keeps every token)', () => {
  const layers = Array.from({ length: 48 }, (_, i) => i);
  const [E, k, vocab] = [128, 8, 50000];
  const prompts = makePrompts(24, { layers, E, k, vocab, groups: 2, seed: 17, maxLen: 120 });
  const tokens = prompts.reduce((n, p) => n + p.tokens.length, 0);
  const shape = { layers, numExperts: E, topK: k, vocabSize: vocab };
  const t0 = performance.now();
  const stats = aggregate(prompts, shape, 2);
  const result = stats.result(32);
  const t1 = performance.now();
  naiveCounts(prompts, layers, k);
  const t2 = performance.now();
  const perToken = (ms: number): string => `${((ms * 1000) / tokens).toFixed(1)} µs/token`;
  console.log(`# routing statistics over ${tokens} tokens × 48 layers × 128 experts, top-8: ${(t1 - t0).toFixed(0)} ms (${perToken(t1 - t0)}); naive peer (per-token records, Map counts) ${(t2 - t1).toFixed(0)} ms (${perToken(t2 - t1)}); ratio ${((t2 - t1) / (t1 - t0)).toFixed(1)}×`);
  const bytes = result.coActivation.byteLength + result.flow.byteLength + result.tokenCounts.byteLength + result.groups.reduce((n, g) => n + g.activations.byteLength * 3 + g.entropy.byteLength, 0);
  console.log(`# the aggregate's fixed size at this shape: ${(bytes / 2 ** 20).toFixed(1)} MiB of counts (independent of the number of prompts) + top-token counters`);
  assert.equal(totalCounts(result).tokens, tokens);
});
