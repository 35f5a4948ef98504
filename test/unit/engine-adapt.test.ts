// The adaptation requests of the engine protocol (remix, reroute, headroom) over a real forked engine process, on the tiny
// parity fixture with a character tokenizer and a reference set built in a temp dir like `routescope reference build`.
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { EngineHost } from '../../extension/src/engine/host';
import type { CoreMethods } from '../../extension/src/engine/protocol';
import type { AdaptMethods, HeadroomEvent, RoundEvent } from '../../extension/src/adapt/protocol';
import { loadAddon } from '../../extension/src/engine/addon';
import { loadTokenizer } from '../../extension/src/checkpoint/tokenizer';
import { SelfEmbedder } from '../../extension/src/adapt/embedder';
import { buildReference, saveReference } from '../../extension/src/adapt/reference';
import { DEFAULT_C3PO, DEFAULT_EMBEDDING, DEFAULT_HEADROOM, DEFAULT_REROUTE } from '../../extension/src/adapt/settings';
import { TaskRunner, parseTasks, readTasks, type TaskItem } from '../../extension/src/adapt/tasks';
import { ROOT, tempDir } from '../helpers/cli';
import { mcItems, mcModel, writeJsonl } from '../helpers/adapt';

const WORKER = path.join(ROOT, 'dist', 'engine-worker.js');
let tmp = '';
let modelDir = '';
let refDir = '';
let host: EngineHost<CoreMethods & AdaptMethods>;

/** Task items as the editor parses them from an open file's text. */
function readTasksText(rows: object[]): TaskItem[] {
  return parseTasks(rows.map((r) => JSON.stringify(r)).join('\n'), 'items.jsonl');
}

before(async () => {
  tmp = tempDir();
  modelDir = mcModel(path.join(tmp, 'model'));
  writeJsonl(path.join(tmp, 'ref.jsonl'), mcItems(24));
  const model = loadAddon().loadModel(modelDir, { threads: 2 });
  try {
    const info = model.info();
    const tokenizer = loadTokenizer(modelDir);
    const session = model.createSession();
    const embedder = new SelfEmbedder(session, (t) => tokenizer.encode(t), info.numLayers);
    const items = readTasks(path.join(tmp, 'ref.jsonl'));
    const built = await buildReference({ session, runner: new TaskRunner(info, tokenizer), embedder, items, source: 'ref.jsonl' });
    assert.ok(built.entries.length >= 1, 'no item answered correctly');
    refDir = path.join(tmp, 'ref');
    saveReference(refDir, info, modelDir, embedder.identity, built, { file: 'ref.jsonl', items: items.length });
  } finally {
    model.close();
  }
  host = new EngineHost<CoreMethods & AdaptMethods>({ workerPath: WORKER });
  await host.load({ dir: modelDir, threads: 2 });
});
after(() => {
  host?.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('remix: C3PO before/after with neighbours (question text) from the reference set', async () => {
  const prompt = mcItems(1, 50)[0].prompt;
  const r = await host.request('remix', { text: prompt, referenceDir: refDir, method: 'kernel', c3po: { ...DEFAULT_C3PO, k: 2 }, embedding: { ...DEFAULT_EMBEDDING }, maxNewTokens: 3 });
  const o = r.comparison.outcome;
  assert.ok(o.layers.length >= 1);
  assert.ok(o.omegaBefore[String(o.layers[0])] instanceof Float32Array, 'typed arrays survive the channel');
  assert.ok(r.neighbours.length >= 1 && r.neighbours.length <= 2);
  for (const n of r.neighbours) assert.match(n.question, /^what is \d\+\d\?$/);
  assert.ok(r.referenceItems >= 1);
  assert.equal(typeof r.comparison.before.text, 'string');
  assert.ok(r.comparison.before.top.length > 0 && r.comparison.after.top.length > 0);
  for (const l of o.layers) assert.ok(r.comparison.selected[String(l)].after.length > 0);
  // A folder that is not a reference set is refused with a clear code.
  await assert.rejects(host.request('remix', { text: prompt, referenceDir: tmp, method: 'ngd', c3po: { ...DEFAULT_C3PO }, embedding: { ...DEFAULT_EMBEDDING }, maxNewTokens: 2 }), (e: Error & { code?: string }) => e.code === 'BAD_REFERENCE' && /reference build/.test(e.message));
});

test('reroute: plain vs rerouted generation, each round streamed as an event', async () => {
  const events: RoundEvent[] = [];
  const r = await host.request('reroute', { text: 'q: what is 1+2?\nanswer:', settings: { ...DEFAULT_REROUTE, interval: 2, steps: 2, layers: [] }, maxNewTokens: 6 }, { onEvent: (e) => events.push(e) });
  assert.ok(r.comparison.rounds.length >= 1);
  assert.equal(events.length, r.comparison.rounds.length);
  assert.ok(events.every((e) => e.kind === 'round'));
  assert.deepEqual(events.map((e) => e.round.position), r.comparison.rounds.map((x) => x.position));
  assert.ok(r.comparison.plain.tokens.length >= 1 && r.comparison.rerouted.tokens.length >= 1);
  assert.ok(Object.keys(r.comparison.delta).length >= 1);
  assert.ok(r.promptTokens > 0);
});

test('headroom: each item streamed; a cancel keeps the items that finished; a layer without a router is refused', async () => {
  const items = readTasksText(mcItems(40, 300));
  const events: HeadroomEvent[] = [];
  const done = await host.request('headroom', { items: items.slice(0, 4), settings: { ...DEFAULT_HEADROOM, layers: [], candidates: 4 } }, { onEvent: (e) => events.push(e) });
  assert.equal(done.summary.analysis_only, true);
  assert.equal(done.summary.completed, 4);
  assert.deepEqual(events.map((e) => e.done), [1, 2, 3, 4]);
  assert.deepEqual(done.records.map((r) => r.id), items.slice(0, 4).map((i) => i.id));
  // Cancel after the first item: the request resolves with what finished.
  let cancel: (() => void) | undefined;
  const listeners: (() => void)[] = [];
  const token = { isCancellationRequested: false, onCancellationRequested: (f: () => void) => (listeners.push(f), { dispose() {} }) };
  cancel = () => {
    token.isCancellationRequested = true;
    for (const f of listeners) f();
  };
  const partial = await host.request('headroom', { items, settings: { ...DEFAULT_HEADROOM, layers: [] } }, {
    token,
    onEvent: (e) => {
      if (e.done === 1) cancel?.();
    },
  });
  assert.equal(partial.summary.cancelled, true);
  assert.ok(partial.summary.completed >= 1 && partial.summary.completed < items.length, `completed ${partial.summary.completed}`);
  assert.equal(partial.records.length, partial.summary.completed);
  await assert.rejects(host.request('headroom', { items: items.slice(0, 1), settings: { ...DEFAULT_HEADROOM, layers: [9] } }), (e: Error & { code?: string }) => e.code === 'BAD_SETTING' && /layer 9 has no router/.test(e.message));
});
