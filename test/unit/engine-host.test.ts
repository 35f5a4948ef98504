// The engine protocol end to end: EngineHost forks the real engine process (dist/engine-worker.js) and talks to it
// over engine/protocol.ts on the tiny parity fixtures. Results must equal the addon called in-process; typed arrays
// must arrive as typed arrays; cancel, unload and a killed engine process must behave.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { EngineHost } from '../../extension/src/engine/host';
import { EngineError, type LayerEvent, type TokenEvent } from '../../extension/src/engine/protocol';
import { loadAddon } from '../../extension/src/engine/addon';
import type { RoutingSpan } from '../../common/src/routing';
import { PARITY_DIR, ROOT, tempDir } from '../helpers/cli';
import { writeRandomOlmoe } from '../helpers/random-model';

const WORKER = path.join(ROOT, 'dist', 'engine-worker.js');
const QWEN3 = path.join(PARITY_DIR, 'qwen3_moe-fused-f32', 'model');
const CASE_TOKENS = Int32Array.from((JSON.parse(fs.readFileSync(path.join(PARITY_DIR, 'qwen3_moe-fused-f32', 'cases.json'), 'utf8')) as { tokens: number[] }).tokens);

function newHost(lines: string[] = []): EngineHost {
  return new EngineHost({ workerPath: WORKER, log: (l) => lines.push(l) });
}

/** A cancellation token like VS Code's, driven by the test. */
function cancellation(): { token: { isCancellationRequested: boolean; onCancellationRequested(l: () => void): { dispose(): void } }; cancel(): void } {
  const listeners = new Set<() => void>();
  const token = {
    isCancellationRequested: false,
    onCancellationRequested(l: () => void) {
      listeners.add(l);
      return { dispose: () => listeners.delete(l) };
    },
  };
  return {
    token,
    cancel() {
      token.isCancellationRequested = true;
      for (const l of [...listeners]) l();
    },
  };
}

function inProcessRouting(dir: string, tokens: Int32Array, patch?: string): Promise<{ layers: RoutingSpan[]; logits: Float32Array }> {
  const model = loadAddon().loadModel(dir, { threads: 1 });
  const session = model.createSession(tokens.length);
  const layers: RoutingSpan[] = [];
  return session
    .forward(tokens, { logits: 'last', ...(patch ? { patch } : {}), onLayer: (r) => layers.push(r) })
    .then((out) => {
      model.close();
      return { layers, logits: out.logits };
    });
}

test('load, info, inspect: streamed typed-array routing equal to the addon in-process', async () => {
  assert.ok(fs.existsSync(WORKER), 'dist/engine-worker.js is not built');
  const host = newHost();
  try {
    assert.equal(await host.request('info', {}), null);
    const loaded = await host.load({ dir: QWEN3, threads: 1 });
    assert.equal(loaded.info.modelType, 'qwen3_moe');
    assert.equal(loaded.info.numExperts, 8);
    assert.equal(loaded.info.topK, 3);
    assert.deepEqual(loaded.info.moeLayers, [0, 1, 2]);
    assert.equal(loaded.tokenizer, false, 'the fixture has no tokenizer.json');
    assert.match(loaded.tokenizerError ?? '', /tokenizer\.json/);
    assert.ok(loaded.rssBytes > 0);
    assert.equal((await host.request('info', {}))?.info.dir, loaded.info.dir);

    const events: LayerEvent[] = [];
    const result = await host.request('inspect', { tokens: CASE_TOKENS, logits: 'last', topTokens: 5 }, { onEvent: (e) => events.push(e) });
    const reference = await inProcessRouting(QWEN3, CASE_TOKENS);
    assert.equal(events.length, reference.layers.length);
    for (const [i, { routing }] of events.entries()) {
      const want = reference.layers[i];
      assert.ok(routing.routerLogits instanceof Float32Array, 'router logits arrive as Float32Array');
      assert.ok(routing.experts instanceof Int32Array, 'experts arrive as Int32Array');
      assert.ok(routing.weights instanceof Float32Array, 'weights arrive as Float32Array');
      assert.equal(routing.layer, want.layer);
      assert.equal(routing.start, want.start);
      assert.equal(routing.count, want.count);
      assert.deepEqual(routing.routerLogits, want.routerLogits);
      assert.deepEqual(routing.experts, want.experts);
      assert.deepEqual(routing.weights, want.weights);
    }
    assert.deepEqual(new Set(events.map((e) => e.routing.layer)), new Set([0, 1, 2]));
    assert.ok(result.logits instanceof Float32Array);
    assert.equal(result.rows, 1);
    assert.deepEqual(result.logits, reference.logits);
    assert.equal(result.nextTokens.length, 5);
    assert.equal(result.nextTokens[0].text, `#${result.nextTokens[0].token}`, 'no tokenizer: ids shown as #id');
    assert.ok(result.nextTokens[0].prob >= result.nextTokens[4].prob);
    const total = result.nextTokenProbs!.reduce((a, b) => a + b, 0);
    assert.ok(Math.abs(total - 1) < 1e-4, `next-token probabilities sum to ${total}`);
  } finally {
    host.dispose();
  }
});

test('patches are applied; bad patches, tokens and folders come back as coded one-line errors', async () => {
  const host = newHost();
  try {
    await assert.rejects(host.request('inspect', { tokens: CASE_TOKENS, logits: 'last' }), (e: EngineError) => e.code === 'NO_MODEL');
    await assert.rejects(host.load({ dir: path.join(PARITY_DIR, 'no-such-model') }), (e: EngineError) => {
      assert.ok(e instanceof EngineError);
      assert.notEqual(e.code, 'INTERNAL');
      assert.doesNotMatch(e.message, /\n/);
      return true;
    });
    await host.load({ dir: QWEN3, threads: 1 });
    const patch = JSON.stringify({ layers: { '1': { mask: [0, 4] } } });
    const events: LayerEvent[] = [];
    await host.request('inspect', { tokens: CASE_TOKENS, logits: 'last', patch }, { onEvent: (e) => events.push(e) });
    const layer1 = events.find((e) => e.routing.layer === 1)!.routing;
    assert.ok(!layer1.experts.some((e) => e === 0 || e === 4), 'masked experts never selected');
    const reference = await inProcessRouting(QWEN3, CASE_TOKENS, patch);
    assert.deepEqual(layer1.experts, reference.layers.find((r) => r.layer === 1)!.experts);

    await assert.rejects(
      host.request('inspect', { tokens: CASE_TOKENS, logits: 'last', patch: JSON.stringify({ layers: { '1': { mask: [99] } } }) }),
      (e: EngineError) => e.code === 'BAD_PATCH',
    );
    await assert.rejects(host.request('inspect', { tokens: Int32Array.of(1, 100000), logits: 'last' }), (e: EngineError) => e.code === 'BAD_TOKENS');
    await assert.rejects(host.request('tokenize', { text: 'hi' }), (e: EngineError) => e.code === 'NO_TOKENIZER');
  } finally {
    host.dispose();
  }
});

test('generate streams tokens and routing; grad returns typed gradients', async () => {
  const host = newHost();
  try {
    await host.load({ dir: QWEN3, threads: 1 });
    const tokens: TokenEvent[] = [];
    const layers: LayerEvent[] = [];
    const result = await host.request(
      'generate',
      { prompt: CASE_TOKENS.subarray(0, 4), maxNewTokens: 5, temperature: 0, topP: 1, seed: 0, stopTokens: [], routing: true },
      { onEvent: (e) => (e.kind === 'token' ? tokens.push(e) : layers.push(e)) },
    );
    assert.ok(result.tokens instanceof Int32Array);
    assert.equal(result.tokens.length, 5);
    assert.deepEqual(tokens.map((t) => t.token), [...result.tokens]);
    // Every position (4 prompt + generated ones fed back) is routed in every MoE layer.
    for (const layer of [0, 1, 2]) {
      const rows = layers.filter((e) => e.routing.layer === layer).reduce((n, e) => n + e.routing.count, 0);
      assert.ok(rows >= 4 + 4, `layer ${layer}: ${rows} routed positions`);
    }
    const grad = await host.request('grad', { tokens: CASE_TOKENS, layers: [1, 2] });
    assert.ok(Number.isFinite(grad.loss));
    assert.ok(grad.biasGrad['1'] instanceof Float32Array);
    assert.equal(grad.biasGrad['2'].length, 8);
  } finally {
    host.dispose();
  }
});

test('cancel stops a running generate; unload frees the model', async () => {
  const dir = tempDir();
  writeRandomOlmoe(dir);
  const host = newHost();
  try {
    await host.load({ dir, threads: 1 });
    const { token, cancel } = cancellation();
    let seen = 0;
    const running = host.request(
      'generate',
      { prompt: Int32Array.of(1, 2, 3), maxNewTokens: 4000, temperature: 0, topP: 1, seed: 0, routing: false },
      {
        token,
        onEvent: () => {
          if (++seen === 2) cancel();
        },
      },
    );
    await assert.rejects(running, (e: EngineError) => e.code === 'CANCELLED');
    assert.ok(seen < 4000);
    // The engine is still usable after a cancel.
    const after = await host.request('inspect', { tokens: Int32Array.of(1, 2, 3), logits: 'last' });
    assert.equal(after.rows, 1);
    await host.unload();
    assert.equal(host.loaded, undefined);
    assert.equal(await host.request('info', {}), null);
    await assert.rejects(host.request('inspect', { tokens: Int32Array.of(1), logits: 'last' }), (e: EngineError) => e.code === 'NO_MODEL');
  } finally {
    host.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a killed engine process fails the running call clearly; the next call restarts it with the model reloaded', async () => {
  const dir = tempDir();
  writeRandomOlmoe(dir);
  const lines: string[] = [];
  const host = newHost(lines);
  try {
    await host.load({ dir, threads: 1 });
    const firstPid = host.pid!;
    const exits: { expected: boolean; signal: string | null }[] = [];
    host.onDidExit((e) => exits.push(e));
    let seen = 0;
    const running = host.request(
      'generate',
      { prompt: Int32Array.of(1, 2, 3), maxNewTokens: 4000, temperature: 0, topP: 1, seed: 0, routing: false },
      {
        onEvent: () => {
          if (++seen === 1) process.kill(firstPid, 'SIGKILL');
        },
      },
    );
    await assert.rejects(running, (e: EngineError) => {
      assert.equal(e.code, 'ENGINE_DIED');
      assert.match(e.message, /exited unexpectedly \(signal SIGKILL\); it restarts on the next action/);
      return true;
    });
    assert.deepEqual(exits, [{ ...exits[0], expected: false, signal: 'SIGKILL' }]);
    assert.equal(host.running, false);
    assert.equal(host.loaded?.info.dir, dir, 'the host still knows which model was open');

    const result = await host.request('inspect', { tokens: Int32Array.of(1, 2, 3), logits: 'last' });
    assert.equal(result.rows, 1);
    assert.notEqual(host.pid, firstPid);
    assert.ok(lines.some((l) => l.includes(`reloading ${dir}`)), lines.join('\n'));
  } finally {
    host.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an engine process that dies with a last word (weights truncated: SIGBUS in the mapping) shows it, and restarts', async () => {
  // A stand-in engine process: ready, then on the first request the line the engine's SIGBUS handler prints, exit 1.
  const dir = tempDir();
  const worker = path.join(dir, 'worker.js');
  fs.writeFileSync(
    worker,
    `process.send({ type: 'ready', version: 'test', cudaCompiled: false, pid: process.pid });
     process.on('message', () => process.stderr.write('routescope: /m/model.safetensors: the model file changed while it was in use (truncated while mapped)\\n', () => process.exit(1)));`,
  );
  const lines: string[] = [];
  const host = new EngineHost({ workerPath: worker, log: (l) => lines.push(l) });
  try {
    await assert.rejects(host.request('info', {}), (e: EngineError) => {
      assert.equal(e.code, 'ENGINE_DIED');
      assert.match(e.message, /exited unexpectedly \(exit code 1: \/m\/model\.safetensors: the model file changed while it was in use \(truncated while mapped\)\); it restarts on the next action/);
      return true;
    });
    const firstPid = lines.map((l) => /engine process (\d+) started/.exec(l)?.[1]).find(Boolean);
    await assert.rejects(host.request('info', {}), (e: EngineError) => e.code === 'ENGINE_DIED');
    const pids = new Set(lines.map((l) => /engine process (\d+) started/.exec(l)?.[1]).filter(Boolean));
    assert.ok(firstPid && pids.size === 2, `a second engine process was started: ${lines.join(' | ')}`);
  } finally {
    host.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
