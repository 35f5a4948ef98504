// The Node-API binding (native/binding/) against native.ts: promises, callbacks, routing spans, error codes, BUSY,
// cancel and close. Uses a parity fixture checkpoint.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { loadAddon } from '../../extension/src/engine/addon';
import type { NativeModel } from '../../extension/src/engine/native';
import type { RoutingSpan } from '../../common/src/routing';
import { PARITY_DIR } from '../helpers/cli';

const MODEL = path.join(PARITY_DIR, 'mixtral-perexpert-f32', 'model'); // 3 layers, 8 experts, top-2, vocab 96, context 64

/** The largest |a − b| over two runs' logits, and the largest |a| (the scale it is judged against). */
function logitGap(a: Float32Array, b: Float32Array): { worst: number; scale: number } {
  let worst = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    worst = Math.max(worst, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(a[i]));
  }
  return { worst, scale };
}

function open(): NativeModel {
  return loadAddon().loadModel(MODEL, { threads: 2 });
}

async function rejectsWithCode(promise: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(promise, (error: Error & { code?: string }) => {
    assert.equal(error.code, code, `code ${error.code}: ${error.message}`);
    if (message) assert.match(error.message, message);
    return true;
  });
}

test('the addon reports its version and loads a model', () => {
  const addon = loadAddon();
  assert.equal(typeof addon.version, 'string');
  assert.equal(typeof addon.cudaCompiled, 'boolean');
  const model = open();
  const info = model.info();
  assert.equal(info.modelType, 'mixtral');
  assert.equal(info.numExperts, 8);
  assert.equal(info.topK, 2);
  assert.deepEqual(info.moeLayers, [0, 1, 2]);
  assert.equal(info.threads, 2);
  model.close();
});

test('loadModel errors carry a code and name the folder', () => {
  assert.throws(
    () => loadAddon().loadModel('/nonexistent/routescope-model'),
    (error: Error & { code?: string }) => typeof error.code === 'string' && error.message.includes('/nonexistent/routescope-model'),
  );
  assert.throws(() => loadAddon().loadModel(MODEL, { backend: 'tpu' as 'cpu' }), { code: 'BAD_ARGUMENT' });
});

test('activations bf16: a first-class load option, reported in info, fp32 where it cannot apply', async () => {
  const addon = loadAddon();
  assert.throws(() => addon.loadModel(MODEL, { activations: 'fp16' as 'fp32' }), { code: 'BAD_ARGUMENT', message: /activations must be fp32 or bf16/ });
  const f32 = addon.loadModel(MODEL, { threads: 2, activations: 'bf16' });  // F32 weights: nothing to round against
  assert.equal(f32.info().activations, 'fp32');
  assert.ok(f32.info().warnings.some((w) => /activations bf16 not used: the weights are not BF16/.test(w)), f32.info().warnings.join('; '));
  f32.close();
  const dir = path.join(PARITY_DIR, 'olmoe-perexpert-bf16', 'model');
  const exact = addon.loadModel(dir, { threads: 2 });
  const rounded = addon.loadModel(dir, { threads: 2, activations: 'bf16' });
  assert.equal(exact.info().activations, 'fp32');
  const tokens = Int32Array.from({ length: 24 }, (_, i) => (i * 7 + 3) % exact.info().vocabSize);
  const a = await exact.createSession().forward(tokens, { logits: 'all' });
  const b = await rounded.createSession().forward(tokens, { logits: 'all' });
  if (rounded.info().activations === 'bf16') {
    // Prefill rows round to bf16 (8 significant bits): the logits move, by about that rounding and no more.
    const { worst, scale } = logitGap(a.logits, b.logits);
    assert.ok(worst > 0, 'bf16 activations changed nothing');
    assert.ok(worst < 0.006 * (1 + scale), `bf16 activations moved the logits by ${worst} (logits up to ${scale})`);
  } else {
    assert.ok(rounded.info().warnings.some((w) => /activations bf16 not used/.test(w)));
    assert.deepEqual(Array.from(b.logits), Array.from(a.logits));
  }
  exact.close();
  rounded.close();
});

test('weights: mapped or resident, reported in info, the same logits either way', async () => {
  const addon = loadAddon();
  assert.throws(() => addon.loadModel(MODEL, { weights: 'disk' as 'mapped' }), { code: 'BAD_ARGUMENT', message: /weights must be auto, mapped or resident/ });
  const mapped = addon.loadModel(MODEL, { threads: 2, weights: 'mapped' });
  const resident = addon.loadModel(MODEL, { threads: 2, weights: 'resident' });
  const auto = addon.loadModel(MODEL, { threads: 2 });
  assert.equal(mapped.info().weights, 'mapped');
  assert.equal(resident.info().weights, 'resident');
  assert.equal(auto.info().weights, 'resident', 'auto keeps a model this small in memory');
  const tokens = Int32Array.from([1, 2, 3, 4, 5]);
  const a = await mapped.createSession().forward(tokens, { logits: 'all' });
  const b = await resident.createSession().forward(tokens, { logits: 'all' });
  assert.deepEqual(Array.from(b.logits), Array.from(a.logits));
  for (const m of [mapped, resident, auto]) m.close();
});

test('kvCache bf16: a load option reported in info; logits move by the rounding of keys and values, no more', async () => {
  const addon = loadAddon();
  assert.throws(() => addon.loadModel(MODEL, { kvCache: 'fp16' as 'fp32' }), { code: 'BAD_ARGUMENT', message: /kv cache must be fp32 or bf16 \(got "fp16"\)/ });
  const exact = addon.loadModel(MODEL, { threads: 2 });
  const rounded = addon.loadModel(MODEL, { threads: 2, kvCache: 'bf16' });
  assert.equal(exact.info().kvCache, 'fp32');
  assert.equal(rounded.info().kvCache, 'bf16');
  const tokens = Int32Array.from({ length: 24 }, (_, i) => (i * 7 + 3) % exact.info().vocabSize);
  const a = await exact.createSession().forward(tokens, { logits: 'all' });
  const b = await rounded.createSession().forward(tokens, { logits: 'all' });
  const { worst, scale } = logitGap(a.logits, b.logits);
  assert.ok(worst > 0, 'a bf16 KV cache changed nothing');
  assert.ok(worst < 0.01 * scale, `a bf16 KV cache moved the logits by ${worst} (logits up to ${scale})`);
  exact.close();
  rounded.close();
});

test('forward: routing arrives per layer, as copies, before the promise resolves', async () => {
  const model = open();
  const session = model.createSession(16);
  const seen: RoutingSpan[] = [];
  let resolved = false;
  const result = await session
    .forward(Int32Array.of(1, 2, 3, 4), {
      logits: 'all',
      onLayer: (r) => {
        assert.ok(!resolved, 'a routing callback after the promise resolved');
        seen.push(r);
      },
    })
    .then((r) => {
      resolved = true;
      return r;
    });
  assert.equal(result.rows, 4);
  assert.equal(result.logits.length, 4 * 96);
  assert.deepEqual(seen.map((r) => r.layer).sort(), [0, 1, 2]);
  for (const r of seen) {
    assert.equal(r.start, 0);
    assert.equal(r.count, 4);
    assert.ok(r.routerLogits instanceof Float32Array && r.routerLogits.length === 4 * 8);
    assert.ok(r.experts instanceof Int32Array && r.experts.length === 4 * 2);
    assert.ok(r.weights instanceof Float32Array && r.weights.length === 4 * 2);
  }
  // Copies: a later call must not change what an earlier callback received.
  const before = seen.map((r) => Array.from(r.routerLogits));
  await session.forward(Int32Array.of(5, 6), { logits: 'none', onLayer: () => {} });
  assert.deepEqual(seen.map((r) => Array.from(r.routerLogits)), before);
  assert.equal(session.position, 6);
  // truncate: re-running the last token after truncate(5) gives the logits of the first time
  const lastAgain = async (): Promise<Float32Array> => {
    session.truncate(5);
    return (await session.forward(Int32Array.of(6), { logits: 'last' })).logits;
  };
  const first = await lastAgain();
  assert.equal(session.position, 6);
  assert.deepEqual(Array.from(await lastAgain()), Array.from(first));
  assert.throws(() => session.truncate(7), { code: 'BAD_ARGUMENT' });
  assert.throws(() => session.truncate(-1), { code: 'BAD_ARGUMENT' });
  session.reset();
  assert.equal(session.position, 0);
  model.close();
});

test('logits modes: last, all, none', async () => {
  const model = open();
  const tokens = Int32Array.of(3, 1, 4, 1, 5);
  const all = await model.createSession(8).forward(tokens, { logits: 'all' });
  const last = await model.createSession(8).forward(tokens, { logits: 'last' });
  const none = await model.createSession(8).forward(tokens, { logits: 'none' });
  assert.equal(all.rows, 5);
  assert.equal(last.rows, 1);
  assert.equal(none.rows, 0);
  assert.equal(none.logits.length, 0);
  const lastRow = all.logits.subarray(4 * 96);
  last.logits.forEach((v, i) => assert.ok(Math.abs(v - lastRow[i]) < 1e-4, `logit ${i}: ${v} vs ${lastRow[i]}`));
  model.close();
});

test('engine errors become rejected promises with codes', async () => {
  const model = open();
  const session = model.createSession(8);
  await rejectsWithCode(session.forward(Int32Array.of(1, 96), { logits: 'last' }), 'BAD_TOKENS', /96/);
  await rejectsWithCode(session.forward(Int32Array.from({ length: 9 }, (_, i) => i), { logits: 'last' }), 'TOO_LONG');
  await rejectsWithCode(model.createSession().forward(Int32Array.from({ length: 65 }, (_, i) => i), { logits: 'last' }), 'TOO_LONG');
  await rejectsWithCode(session.forward(Int32Array.of(1, 2), { logits: 'last', patch: '{"layers":{"1":{"mask":[9]}}}' }), 'BAD_PATCH');
  await rejectsWithCode(session.forward(Int32Array.of(1, 2), { logits: 'last', patch: 'nope' }), 'BAD_PATCH');
  // The engine refuses values that would overflow float32, as the TypeScript validator does (patch-cases.json).
  await rejectsWithCode(session.forward(Int32Array.of(1, 2), { logits: 'last', patch: '{"layers":{"1":{"bias":{"3":-1e300}}}}' }), 'BAD_PATCH', /^patch: layer 1: bias: expert 3: not a finite float32 value/);
  await rejectsWithCode(session.forward(Int32Array.of(1, 2), { logits: 'most' as 'all' }), 'BAD_ARGUMENT');
  await rejectsWithCode(session.grad(Int32Array.of(1), { layers: [0] }), 'BAD_TOKENS');
  // The session is still usable after errors.
  assert.equal((await session.forward(Int32Array.of(1, 2), { logits: 'last' })).rows, 1);
  model.close();
});

test('one call per session at a time: a second is rejected with BUSY', async () => {
  const model = open();
  const session = model.createSession(16);
  const first = session.forward(Int32Array.of(1, 2, 3), { logits: 'all' });
  await rejectsWithCode(session.forward(Int32Array.of(4), { logits: 'last' }), 'BUSY');
  assert.throws(() => session.reset(), { code: 'BUSY' });
  assert.equal((await first).rows, 3);
  // Another session of the same model may run meanwhile.
  const [a, b] = await Promise.all([
    session.forward(Int32Array.of(4), { logits: 'last' }),
    model.createSession(4).forward(Int32Array.of(4), { logits: 'last' }),
  ]);
  assert.equal(a.rows + b.rows, 2);
  model.close();
});

test('a throwing callback rejects the call with its error', async () => {
  const model = open();
  const session = model.createSession(8);
  await assert.rejects(
    session.forward(Int32Array.of(1, 2), {
      logits: 'last',
      onLayer: () => {
        throw new Error('boom');
      },
    }),
    /boom/,
  );
  assert.equal((await session.forward(Int32Array.of(1, 2), { logits: 'last' })).rows, 1);
  model.close();
});

test('generate: greedy is deterministic and streams every token', async () => {
  const model = open();
  const run = async () => {
    const streamed: number[] = [];
    const result = await model.createSession(32).generate(Int32Array.of(1, 2, 3), {
      maxNewTokens: 8,
      temperature: 0,
      topP: 1,
      seed: 0,
      stopTokens: [],
      onToken: (t) => streamed.push(t),
    });
    assert.deepEqual(streamed, Array.from(result.tokens));
    return Array.from(result.tokens);
  };
  const first = await run();
  assert.equal(first.length, 8);
  assert.deepEqual(await run(), first);
  model.close();
});

// A call may finish before cancel() reaches it (the model is tiny), so each check repeats and needs one hit.
async function cancelOutcomes(start: () => Promise<unknown>, cancel: () => void, tries = 20): Promise<string[]> {
  const outcomes: string[] = [];
  for (let i = 0; i < tries; i++) {
    const running = start();
    cancel();
    outcomes.push(await running.then(() => 'finished', (error: Error & { code?: string }) => String(error.code)));
  }
  return outcomes;
}

test('cancel() rejects the running call with CANCELLED and leaves the session usable', async () => {
  const model = open();
  const session = model.createSession(64);
  const prompt = Int32Array.from({ length: 48 }, (_, i) => i);
  const generated = await cancelOutcomes(
    () => {
      session.reset();
      return session.generate(Int32Array.of(1, 2, 3), { maxNewTokens: 60, temperature: 0, topP: 1, seed: 0, stopTokens: [] });
    },
    () => session.cancel(),
  );
  assert.ok(generated.every((o) => o === 'CANCELLED' || o === 'finished'), generated.join(' '));
  assert.ok(generated.includes('CANCELLED'), generated.join(' '));
  const forwarded = await cancelOutcomes(
    () => {
      session.reset();
      return session.forward(prompt, { logits: 'all' }).finally(() => {
        // a cancelled forward leaves the cache where it was
        assert.ok(session.position === 0 || session.position === prompt.length, `position ${session.position}`);
      });
    },
    () => session.cancel(),
  );
  assert.ok(forwarded.every((o) => o === 'CANCELLED' || o === 'finished'), forwarded.join(' '));
  assert.ok(forwarded.includes('CANCELLED'), forwarded.join(' '));
  session.reset();
  assert.equal((await session.forward(Int32Array.of(1, 2, 3), { logits: 'last' })).rows, 1);
  session.cancel(); // idle: nothing happens, and the next call is not affected
  assert.equal((await session.forward(Int32Array.of(4), { logits: 'last' })).rows, 1);
  model.close();
});

test('grad returns the loss and one bias gradient per layer, and mixGrad when asked', async () => {
  const model = open();
  const session = model.createSession(8);
  const tokens = Int32Array.of(5, 9, 2, 7, 1);
  const plain = await session.grad(tokens, { layers: [0, 2] });
  assert.ok(Number.isFinite(plain.loss) && plain.loss > 0);
  assert.deepEqual(Object.keys(plain.biasGrad).sort(), ['0', '2']);
  assert.ok(plain.biasGrad['0'] instanceof Float32Array && plain.biasGrad['0'].length === 8);
  assert.equal(plain.mixGrad, undefined);
  const mixed = await session.grad(tokens, { layers: [1], target: [2, 5], mix: { layer: 1, position: 3, logits: new Float32Array(8) } });
  assert.ok(mixed.mixGrad instanceof Float32Array && mixed.mixGrad.length === 8);
  model.close();
});

test('close(): the model and its sessions are unusable afterwards', async () => {
  const model = open();
  const session = model.createSession(8);
  const running = session.forward(Int32Array.of(1, 2, 3), { logits: 'last' });
  model.close();
  await running.catch((error: Error & { code?: string }) => assert.equal(error.code, 'CANCELLED')); // or it finished first
  assert.throws(() => model.info(), { code: 'CLOSED' });
  assert.throws(() => model.createSession(4), { code: 'CLOSED' });
  await rejectsWithCode(session.forward(Int32Array.of(1), { logits: 'last' }), 'CLOSED');
  model.close(); // twice is harmless
});

// Per (layer, position): router logits, experts and weights as plain arrays.
function routingByPosition(spans: RoutingSpan[]): Map<string, { logits: number[]; experts: number[]; weights: number[] }> {
  const out = new Map<string, { logits: number[]; experts: number[]; weights: number[] }>();
  for (const r of spans)
    for (let i = 0; i < r.count; i++)
      out.set(`${r.layer}@${r.start + i}`, {
        logits: Array.from(r.routerLogits.subarray(i * r.numExperts, (i + 1) * r.numExperts)),
        experts: Array.from(r.experts.subarray(i * r.topK, (i + 1) * r.topK)),
        weights: Array.from(r.weights.subarray(i * r.topK, (i + 1) * r.topK)),
      });
  return out;
}

test('generate: the routing of the prompt and of every decode step equals one forward over the whole sequence, with a fast or a slow onLayer', async () => {
  const model = open();
  const prompt = Int32Array.of(3, 1, 4, 1, 5);
  // A slow consumer lets the engine run ahead of the buffers the binding prepares, so spans are also handed over
  // one at a time (the worker waits for the JS thread's copy); both paths must deliver the same routing.
  for (const slowMs of [0, 2]) {
    const spans: RoutingSpan[] = [];
    const { tokens } = await model.createSession(64).generate(prompt, {
      maxNewTokens: 40, temperature: 0, topP: 1, seed: 0, stopTokens: [],
      onLayer: (r) => {
        spans.push(r);
        for (const end = performance.now() + slowMs; performance.now() < end; );
      },
    });
    assert.equal(tokens.length, 40);
    assert.deepEqual(spans.filter((r) => r.start === 0).map((r) => r.count), [5, 5, 5]);
    assert.ok(spans.filter((r) => r.start > 0).every((r) => r.count === 1));
    assert.equal(spans.length, 3 * 40); // prefill + 39 decode steps, 3 MoE layers each
    const full: RoutingSpan[] = [];
    await model.createSession(64).forward(Int32Array.from([...prompt, ...tokens.subarray(0, 39)]), { logits: 'none', onLayer: (r) => full.push(r) });
    const got = routingByPosition(spans), want = routingByPosition(full);
    assert.equal(got.size, want.size);
    for (const [key, w] of want) {
      const g = got.get(key)!;
      assert.ok(g, `no routing for ${key}`);
      assert.deepEqual(g.experts, w.experts, `${key} (slow ${slowMs} ms)`);
      g.logits.forEach((v, i) => assert.ok(Math.abs(v - w.logits[i]) < 1e-4, `${key} logit ${i}: ${v} vs ${w.logits[i]}`));
      g.weights.forEach((v, i) => assert.ok(Math.abs(v - w.weights[i]) < 1e-4, `${key} weight ${i}: ${v} vs ${w.weights[i]}`));
    }
    // Every span owns its arrays: one buffer per array, exactly its size.
    for (const r of spans) {
      assert.equal(r.routerLogits.buffer.byteLength, r.count * r.numExperts * 4);
      assert.equal(r.experts.buffer.byteLength, r.count * r.topK * 4);
      assert.equal(r.weights.buffer.byteLength, r.count * r.topK * 4);
    }
  }
  model.close();
});

test('generate: a throwing onLayer rejects the call with its error and the session stays usable', async () => {
  const model = open();
  const session = model.createSession(32);
  let calls = 0;
  await assert.rejects(
    session.generate(Int32Array.of(1, 2, 3), {
      maxNewTokens: 20, temperature: 0, topP: 1, seed: 0, stopTokens: [],
      onLayer: () => {
        if (++calls === 7) throw new Error('boom in a decode step');
      },
    }),
    /boom in a decode step/,
  );
  assert.equal(calls, 7, 'no routing callback after the one that threw');
  session.reset();
  assert.equal((await session.generate(Int32Array.of(1, 2, 3), { maxNewTokens: 4, temperature: 0, topP: 1, seed: 0, stopTokens: [] })).tokens.length, 4);
  model.close();
});
