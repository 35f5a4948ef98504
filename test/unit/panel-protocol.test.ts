// The routing panel's protocol (common/src/panelProtocol.ts) and the host's sender (extension/src/views/
// runStream.ts): message types, a run's metadata, spans posted as received (no copy) or as views of the run's
// arrays, span checks on arrival, command filtering, and patch edits (common/src/patchEdit.ts).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import {
  decodeLayerMessage,
  decodeWebviewMessage,
  EditPatchCommand,
  ReadyCommand,
  RunFinishedNotification,
  RunInitNotification,
  RunLayerNotification,
  type IpcMessage,
} from '../../common/src/panelProtocol';
import { validatePatch } from '../../common/src/patch';
import { applyPatchEdit, patchEntries } from '../../common/src/patchEdit';
import { LayerRouting, type RoutingSpan } from '../../common/src/routing';
import { encodeRunInfo, RunSender } from '../../extension/src/views/runStream';
import type { Run } from '../../extension/src/runs/run';

const E = 4;
const K = 2;

function span(layer: number, start: number, count: number): RoutingSpan {
  return {
    layer, start, count, numExperts: E, topK: K,
    routerLogits: new Float32Array(count * E).map((_, i) => i * 0.5 + layer + start),
    experts: new Int32Array(count * K).map((_, i) => (i + layer) % E),
    weights: new Float32Array(count * K).fill(0.5),
  };
}

function makeRun(T = 5): Run {
  const layers = new Map([1, 3].map((l) => [l, new LayerRouting(l, E, K, T)]));
  return {
    id: 7, kind: 'inspect', label: 'Inspect: hi', prompt: 'hi',
    model: { dir: '/m', name: 'm', modelType: 'olmoe', numLayers: 4, numExperts: E, topK: K, moeLayers: [1, 3], vocabSize: 100 },
    patch: undefined, tokens: [1, 2, 3, 4, 5].slice(0, T), tokenText: ['a', ' b', '\n', 'c', 'd'].slice(0, T), promptTokens: T,
    startedAt: 1000, layers,
  };
}

function layerParams(m: IpcMessage<unknown>): { runId: number; span: RoutingSpan } {
  assert.ok(RunLayerNotification.is(m));
  return m.params;
}

test('message types build and recognise their messages only', () => {
  const m = ReadyCommand.create({});
  assert.deepEqual(m, { method: 'webview/ready', params: {} });
  assert.ok(ReadyCommand.is(m));
  assert.ok(!EditPatchCommand.is(m));
  assert.ok(!ReadyCommand.is(null));
  assert.ok(!ReadyCommand.is('webview/ready'));
});

test('encodeRunInfo copies metadata and leaves the routing out', () => {
  const run = makeRun();
  const info = encodeRunInfo(run);
  assert.equal(info.id, 7);
  assert.deepEqual(info.model.moeLayers, [1, 3]);
  assert.ok(!('layers' in info));
  run.tokens.push(99);
  assert.equal(info.tokens.length, 5, 'later pushes on the host do not leak into the sent message');
});

test('RunSender: a streamed span is posted as received; rows the webview missed go as views of the run, never copies', () => {
  const run = makeRun();
  const posted: IpcMessage<unknown>[] = [];
  const sender = new RunSender(run, 'primary', (m) => posted.push(m));
  const first = span(1, 0, 3);
  run.layers.get(1)!.write(first);
  sender.start(); // the panel opens after the first span arrived: it goes as a view of the run's arrays
  assert.ok(RunInitNotification.is(posted[0]));
  const caughtUp = posted.filter((m) => RunLayerNotification.is(m)).map((m) => layerParams(m).span);
  assert.equal(caughtUp.length, 1);
  assert.equal(caughtUp[0].routerLogits.buffer, run.layers.get(1)!.routerLogits.buffer, 'a view, not a copy');
  assert.deepEqual([...caughtUp[0].routerLogits], [...first.routerLogits]);
  posted.length = 0;
  const next = span(1, 3, 2);
  run.layers.get(1)!.write(next);
  sender.flush(next);
  assert.equal(posted.length, 1);
  const sent = layerParams(posted.at(0)!);
  assert.equal(sent.span, next, 'the received span itself');
  assert.equal(sent.runId, 7);
  posted.length = 0;
  sender.flush(next);
  assert.equal(posted.length, 0, 'nothing twice');
  run.finishedAt = 2000;
  run.nextTokenProbs = Float32Array.of(0.25, 0.75);
  sender.flush();
  const finished = posted[0];
  assert.ok(RunFinishedNotification.is(finished));
  assert.equal(finished.params.nextTokenProbs, run.nextTokenProbs, 'the distribution crosses as a typed array');
});

test('a span survives structured cloning (what postMessage does) with its typed arrays intact', () => {
  const message = RunLayerNotification.create({ runId: 7, span: span(1, 0, 2) });
  const cloned = structuredClone(message);
  assert.ok(RunLayerNotification.is(cloned));
  const { runId, span: decoded } = decodeLayerMessage(cloned.params);
  assert.equal(runId, 7);
  assert.ok(decoded.routerLogits instanceof Float32Array);
  assert.deepEqual(decoded, message.params.span);
  assert.equal(decodeLayerMessage(message.params).span.routerLogits, message.params.span.routerLogits, 'typed arrays pass through unconverted');
});

test('decodeLayerMessage repairs arrays flattened to objects or lists, and rejects wrong shapes', () => {
  const flattened = { layer: 0, start: 0, count: 1, numExperts: 2, topK: 1, routerLogits: { 0: 1.5, 1: -2 }, experts: [1], weights: [1] };
  const { span: s } = decodeLayerMessage({ runId: 1, span: flattened });
  assert.ok(s.routerLogits instanceof Float32Array);
  assert.deepEqual([...s.routerLogits], [1.5, -2]);
  assert.ok(s.experts instanceof Int32Array);
  assert.throws(() => decodeLayerMessage({ runId: 1, span: { ...flattened, routerLogits: [1] } }), /routerLogits has 1 values, expected 1×2/);
  assert.throws(() => decodeLayerMessage({ runId: 1, span: { ...flattened, count: -1 } }), /count must be an integer/);
  assert.throws(() => decodeLayerMessage({ runId: 1, span: { ...flattened, experts: 'x' } }), /experts is not an array/);
  assert.throws(() => decodeLayerMessage({ span: flattened }), /no run id/);
});

test('decodeWebviewMessage lets through known commands with object params only', () => {
  assert.ok(decodeWebviewMessage(EditPatchCommand.create({ edit: { op: 'clear' } })));
  assert.equal(decodeWebviewMessage({ method: 'run/layer', params: {} }), undefined, 'a host notification is not a command');
  assert.equal(decodeWebviewMessage({ method: 'webview/ready', params: 3 }), undefined);
  assert.equal(decodeWebviewMessage('webview/ready'), undefined);
});

test('applyPatchEdit: mask/force are exclusive, bias 0 removes, empty layers disappear, input untouched', () => {
  const model = { numLayers: 4, numExperts: 8, topK: 2, moeLayers: [1, 2, 3] };
  let patch = applyPatchEdit(undefined, { op: 'mask', layer: 2, expert: 5 });
  assert.deepEqual(patch, { layers: { 2: { mask: [5] } } });
  const before = JSON.stringify(patch);
  patch = applyPatchEdit(patch, { op: 'force', layer: 2, expert: 5 });
  assert.equal(JSON.stringify(applyPatchEdit(undefined, { op: 'mask', layer: 2, expert: 5 })), before);
  assert.deepEqual(patch, { layers: { 2: { force: [5] } } });
  validatePatch(patch, 'p', model);
  patch = applyPatchEdit(patch, { op: 'bias', layer: 3, expert: 1, value: 1.5 });
  patch = applyPatchEdit(patch, { op: 'mask', layer: 3, expert: 0 });
  assert.deepEqual(patch.layers['3'], { mask: [0], bias: { 1: 1.5 } });
  assert.deepEqual(patchEntries(patch), [
    { layer: 2, kind: 'force', expert: 5 },
    { layer: 3, kind: 'mask', expert: 0 },
    { layer: 3, kind: 'bias', expert: 1, value: 1.5 },
  ]);
  patch = applyPatchEdit(patch, { op: 'bias', layer: 3, expert: 1, value: 0 });
  patch = applyPatchEdit(patch, { op: 'unmask', layer: 3, expert: 0 });
  assert.deepEqual(patch, { layers: { 2: { force: [5] } } });
  patch = applyPatchEdit(patch, { op: 'removeLayer', layer: 2 });
  assert.deepEqual(patch, { layers: {} });
  const dense = applyPatchEdit({ layers: { 1: { bias: [0, 2, 0, 0, 0, 0, 0, 0] } } }, { op: 'unbias', layer: 1, expert: 1 });
  assert.deepEqual(dense, { layers: {} });
  assert.deepEqual(applyPatchEdit(patch, { op: 'clear' }), { layers: {} });
});
