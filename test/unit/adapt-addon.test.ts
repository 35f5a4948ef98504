// The adaptation half of the binding (generateRerouted, meanHidden, c3poPrefix, c3poNgd) against native.ts,
// mirroring native/tests/adapt_test.cpp at the JS level.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { loadAddon } from '../../extension/src/engine/addon';
import type { NativeModel, NativeRerouteRound } from '../../extension/src/engine/native';
import { PARITY_DIR } from '../helpers/cli';

function open(name: string): NativeModel {
  return loadAddon().loadModel(path.join(PARITY_DIR, name, 'model'), { threads: 2 });
}

function tokens(n: number, vocab: number, seed: number): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s >>> 8) % vocab;
  });
}

async function lastSoftmax(model: NativeModel, prompt: number[], layers: number[]): Promise<Record<string, Float32Array>> {
  const out: Record<string, Float32Array> = {};
  const session = model.createSession();
  await session.forward(Int32Array.from(prompt), {
    logits: 'none',
    onLayer: (r) => {
      if (!layers.includes(r.layer) || r.start + r.count !== prompt.length) return;
      const z = r.routerLogits.subarray((r.count - 1) * r.numExperts, r.count * r.numExperts);
      const max = Math.max(...z);
      const e = Array.from(z, (v) => Math.exp(v - max));
      const sum = e.reduce((a, b) => a + b, 0);
      out[String(r.layer)] = Float32Array.from(e, (v) => v / sum);
    },
  });
  return out;
}

async function rejectsWithCode(promise: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(promise, (error: Error & { code?: string }) => {
    assert.equal(error.code, code, `code ${error.code}: ${error.message}`);
    if (message) assert.match(error.message, message);
    return true;
  });
}

test('generateRerouted with steps=0 equals plain generate; no rounds, no delta', async () => {
  const model = open('olmoe-perexpert-bf16');
  const prompt = Int32Array.from(tokens(6, model.info().vocabSize, 1));
  const plain = await model.createSession().generate(prompt, { maxNewTokens: 10, temperature: 0, topP: 1, seed: 0, stopTokens: [] });
  const streamed: number[] = [];
  const rr = await model.createSession().generateRerouted(prompt, {
    maxNewTokens: 10, temperature: 0, topP: 1, seed: 0, stopTokens: [],
    onToken: (t) => streamed.push(t),
    reroute: { interval: 128, steps: 0, lr: 0.05, optimizer: 'adam', layerFraction: 1, leastConfidentFirst: true },
  });
  assert.deepEqual([...rr.tokens], [...plain.tokens]);
  assert.deepEqual(streamed, [...plain.tokens]);
  assert.equal(rr.rounds.length, 0);
  model.close();
});

test('generateRerouted: rounds arrive through onRound before the promise settles; the first loss is the prompt loss', async () => {
  for (const name of ['olmoe-perexpert-bf16', 'qwen3_moe-fused-f32']) {
    const model = open(name);
    const info = model.info();
    const prompt = tokens(12, info.vocabSize, 2);
    const seen: NativeRerouteRound[] = [];
    let settled = false;
    const session = model.createSession();
    const rr = await session
      .generateRerouted(Int32Array.from(prompt), {
        maxNewTokens: 9, temperature: 0, topP: 1, seed: 0, stopTokens: [],
        onRound: (r) => {
          assert.ok(!settled, 'a round callback after the promise settled');
          seen.push(r);
        },
        reroute: { interval: 4, steps: 5, lr: 0.05, optimizer: 'adam', layerFraction: 1, leastConfidentFirst: true },
      })
      .then((r) => {
        settled = true;
        return r;
      });
    assert.equal(rr.tokens.length, 9);
    assert.deepEqual(rr.rounds.map((r) => r.position), [12, 16, 20], name);
    assert.deepEqual(seen.map((r) => r.position), [12, 16, 20]);
    assert.equal(rr.rounds[0].losses.length, 5);
    assert.deepEqual(Object.keys(rr.rounds[0].confidence).map(Number).sort((a, b) => a - b), info.moeLayers);
    const g = await model.createSession().grad(Int32Array.from(prompt), { layers: [] });
    assert.ok(Math.abs(g.loss - rr.rounds[0].losses[0]) < 1e-4, `${name}: ${g.loss} vs ${rr.rounds[0].losses[0]}`);
    assert.ok(rr.rounds[0].losses[4] < rr.rounds[0].losses[0], `${name}: the loss did not go down`);
    for (const l of info.moeLayers) {
      assert.ok(rr.delta[String(l)] instanceof Float32Array && rr.delta[String(l)].length === info.numExperts);
    }
    // The final delta as a bias patch reproduces the next-token logits of the adapted session.
    const context = [...prompt, ...rr.tokens];
    const patch = JSON.stringify({ layers: Object.fromEntries(Object.entries(rr.delta).map(([l, d]) => [l, { bias: Array.from(d) }])) });
    const next = await session.forward(Int32Array.of(context[context.length - 1]), { patch, logits: 'last' });
    const fresh = await model.createSession().forward(Int32Array.from(context), { patch, logits: 'last' });
    let diff = 0;
    for (let i = 0; i < next.logits.length; i++) diff = Math.max(diff, Math.abs(next.logits[i] - fresh.logits[i]));
    assert.ok(diff < 1e-4, `${name}: rebuilt cache differs by ${diff}`);
    model.close();
  }
});

test('generateRerouted: bad options reject with BAD_ARGUMENT', async () => {
  const model = open('mixtral-perexpert-f32');
  const s = model.createSession();
  const base = { maxNewTokens: 2, temperature: 0, topP: 1, seed: 0, stopTokens: [] };
  await rejectsWithCode(s.generateRerouted(Int32Array.of(1, 2), { ...base, reroute: { interval: 0, steps: 1, lr: 0.1, optimizer: 'adam', layerFraction: 1, leastConfidentFirst: true } }), 'BAD_ARGUMENT');
  await rejectsWithCode(s.generateRerouted(Int32Array.of(1, 2), { ...base, reroute: { interval: 4, steps: 1, lr: 0.1, optimizer: 'rmsprop' as 'adam', layerFraction: 1, leastConfidentFirst: true } }), 'BAD_ARGUMENT', /optimizer/);
  await rejectsWithCode(s.generateRerouted(Int32Array.of(1, 2), { ...base, reroute: { layers: [7], interval: 4, steps: 1, lr: 0.1, optimizer: 'sgd', layerFraction: 1, leastConfidentFirst: true } }), 'BAD_ARGUMENT', /layer 7/);
  model.close();
});

test('meanHidden: one hidden-size vector, deterministic, resets the session; layer range checked', async () => {
  const model = open('mixtral-perexpert-f32');
  const info = model.info();
  const s = model.createSession();
  const t = Int32Array.from(tokens(7, info.vocabSize, 3));
  const a = await s.meanHidden(t, info.numLayers);
  const b = await s.meanHidden(t, info.numLayers);
  assert.equal(a.length, info.hiddenSize);
  assert.deepEqual([...a], [...b]);
  assert.equal(s.position, 0);
  const first = await s.meanHidden(t, 0); // the mean of the token embeddings
  const other = await s.meanHidden(t, 1);
  assert.notDeepEqual([...first], [...other]);
  await rejectsWithCode(s.meanHidden(t, info.numLayers + 1), 'BAD_ARGUMENT', /embedding layer/);
  model.close();
});

test('c3poNgd steps=0: loss and gradient equal grad() on prompt+answer with the mix at the last prompt position', async () => {
  for (const name of ['olmoe-fused-f16', 'qwen3_moe-fused-f32', 'mixtral-perexpert-f32']) {
    const model = open(name);
    const info = model.info();
    const L = info.moeLayers[info.moeLayers.length - 1];
    const omega = await lastSoftmax(model, tokens(7, info.vocabSize, 10), [L]);
    const nb = tokens(9, info.vocabSize, 11);
    const prefix = await model.c3poPrefix(Int32Array.from(nb), L);
    assert.equal(prefix.tokens, 9);
    assert.equal(prefix.firstLayer, L);
    const r0 = await model.c3poNgd(omega, [{ prefix, answer: 5, weight: 1 }], { layers: [L], coreExperts: 20, steps: 0, lrStart: 1e-2, lrEnd: 1e-5 });
    assert.equal(r0.losses.length, 1);
    const g = await model.createSession().grad(Int32Array.from([...nb, 5]), {
      layers: [],
      target: [9, 10],
      mix: { layer: L, position: 8, logits: Float32Array.from(omega[String(L)], (p) => Math.log(Math.max(1e-30, p))) },
    });
    assert.ok(Math.abs(g.loss - r0.losses[0]) < 1e-4, `${name}: loss ${g.loss} vs ${r0.losses[0]}`);
    const scale = Math.max(...Array.from(g.mixGrad!, Math.abs));
    const fg = r0.firstGrad[String(L)];
    for (let e = 0; e < info.numExperts; e++) assert.ok(Math.abs(fg[e] - g.mixGrad![e]) <= 1e-3 * scale + 1e-7, `${name}: expert ${e}`);
    assert.deepEqual([...r0.omegaBefore[String(L)]], [...omega[String(L)]]);
    prefix.release();
    model.close();
  }
});

test('c3poNgd: NGD lowers the kernel-weighted neighbour loss; ω stays a distribution; frozen experts keep their ratios', async () => {
  const model = open('olmoe-fused-f16');
  const info = model.info();
  const critical = info.moeLayers.slice(-2);
  const omega = await lastSoftmax(model, tokens(7, info.vocabSize, 10), critical);
  const neighbours = [];
  for (let i = 0; i < 3; i++) {
    neighbours.push({ prefix: await model.c3poPrefix(Int32Array.from(tokens(6 + i, info.vocabSize, 20 + i)), critical[0]), answer: 7 + i, weight: 1 / (1 + i) });
  }
  const r = await model.c3poNgd(omega, neighbours, { layers: critical, coreExperts: 3, steps: 10, lrStart: 1e-2, lrEnd: 1e-5, finalLoss: true });
  assert.equal(r.losses.length, 11); // before each step, and after the last (finalLoss)
  assert.ok(r.losses[10] < r.losses[0], `${r.losses[0]} -> ${r.losses[10]}`);
  for (const l of critical) {
    const after = r.omegaAfter[String(l)];
    assert.ok(Math.abs(after.reduce((a, b) => a + b, 0) - 1) < 1e-5);
    const core = new Set(r.core[String(l)]);
    assert.equal(core.size, 3);
    const ratios = [...Array(info.numExperts).keys()].filter((e) => !core.has(e)).map((e) => after[e] / r.omegaBefore[String(l)][e]);
    for (const q of ratios) assert.ok(Math.abs(q / ratios[0] - 1) < 1e-4);
  }
  // A prefix can be reused across calls (the eval caches them): the same call gives the same losses.
  const again = await model.c3poNgd(omega, neighbours, { layers: critical, coreExperts: 3, steps: 10, lrStart: 1e-2, lrEnd: 1e-5, finalLoss: true });
  assert.deepEqual(again.losses, r.losses);
  for (const n of neighbours) n.prefix.release();
  model.close();
});

test('c3po errors: released prefix, prefix of another model, prefix above the first critical layer, closed model', async () => {
  const model = open('mixtral-perexpert-f32');
  const other = open('mixtral-perexpert-f32');
  const L = model.info().moeLayers;
  const omega = await lastSoftmax(model, [1, 2, 3], L);
  const opts = { layers: L, coreExperts: 4, steps: 0, lrStart: 1e-2, lrEnd: 1e-5 };
  const released = await model.c3poPrefix(Int32Array.of(4, 5, 6), 0);
  released.release();
  await rejectsWithCode(model.c3poNgd(omega, [{ prefix: released, answer: 1, weight: 1 }], opts), 'BAD_ARGUMENT', /released/);
  const foreign = await other.c3poPrefix(Int32Array.of(4, 5, 6), 0);
  await rejectsWithCode(model.c3poNgd(omega, [{ prefix: foreign, answer: 1, weight: 1 }], opts), 'BAD_ARGUMENT', /another model/);
  const high = await model.c3poPrefix(Int32Array.of(4, 5, 6), 2);
  await rejectsWithCode(model.c3poNgd(omega, [{ prefix: high, answer: 1, weight: 1 }], opts), 'BAD_ARGUMENT', /above the first critical layer/);
  await rejectsWithCode(model.c3poNgd(omega, [{ prefix: {} as never, answer: 1, weight: 1 }], opts), 'BAD_ARGUMENT', /c3poPrefix/);
  await rejectsWithCode(model.c3poPrefix(Int32Array.of(1, 999), 0), 'BAD_TOKENS');
  await rejectsWithCode(model.c3poNgd({ '0': new Float32Array(3) }, [{ prefix: high, answer: 1, weight: 1 }], { ...opts, layers: [0] }), 'BAD_ARGUMENT', /size E/);
  model.close();
  await rejectsWithCode(model.c3poPrefix(Int32Array.of(1, 2), 0), 'CLOSED');
  // Prefixes keep their model's weights alive until released (or collected).
  foreign.release();
  high.release();
  other.close();
});
