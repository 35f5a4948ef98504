// The routing panel's protocol (webview/src/protocol.ts): message types, encoding of runs and layer chunks as typed
// arrays, decoding (shape checks, repair of flattened arrays), command filtering and patch edits.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import {
  decodeLayerChunk,
  decodeWebviewMessage,
  EditPatchCommand,
  encodeLayerChunk,
  encodeRunInfo,
  ReadyCommand,
  RunLayerNotification,
} from '../../webview/src/protocol';
import { validatePatch } from '../../common/src/patch';
import { applyPatchEdit, patchEntries } from '../../common/src/patchEdit';
import type { Run } from '../../extension/src/runs/run';

function makeRun(T = 5, E = 4, k = 2): Run {
  const layers = new Map();
  for (const layer of [1, 3]) {
    const routerLogits = new Float32Array(T * E).map((_, i) => i * 0.5 + layer);
    const experts = new Int32Array(T * k).map((_, i) => (i + layer) % E);
    const weights = new Float32Array(T * k).fill(0.5);
    layers.set(layer, { layer, routerLogits, experts, weights, filled: T - 1 });
  }
  return {
    id: 7, kind: 'inspect', label: 'Inspect: hi', prompt: 'hi',
    model: { dir: '/m', name: 'm', modelType: 'olmoe', numLayers: 4, numExperts: E, topK: k, moeLayers: [1, 3], vocabSize: 100 },
    patch: undefined, tokens: [1, 2, 3, 4, 5].slice(0, T), tokenText: ['a', ' b', '\n', 'c', 'd'].slice(0, T), promptTokens: T,
    startedAt: 1000, layers,
  };
}

test('message types build and recognise their messages only', () => {
  const m = ReadyCommand.create({});
  assert.deepEqual(m, { method: 'webview/ready', params: {} });
  assert.ok(ReadyCommand.is(m));
  assert.ok(!EditPatchCommand.is(m));
  assert.ok(!ReadyCommand.is(null));
  assert.ok(!ReadyCommand.is('webview/ready'));
});

test('encodeRunInfo copies metadata and leaves the tensors out', () => {
  const run = makeRun();
  const info = encodeRunInfo(run);
  assert.equal(info.id, 7);
  assert.deepEqual(info.model.moeLayers, [1, 3]);
  assert.ok(!('layers' in info));
  run.tokens.push(99);
  assert.equal(info.tokens.length, 5, 'later pushes on the host do not leak into the sent message');
});

test('encodeLayerChunk sends only the filled rows asked for, as typed array copies', () => {
  const run = makeRun();
  const routing = run.layers.get(3)!;
  const chunk = encodeLayerChunk(run.id, routing, 4, 2, 1, 10);
  assert.equal(chunk.start, 1);
  assert.equal(chunk.count, 3, 'clamped to filled = 4');
  assert.ok(chunk.routerLogits instanceof Float32Array);
  assert.ok(chunk.experts instanceof Int32Array);
  assert.deepEqual([...chunk.routerLogits], [...routing.routerLogits.slice(4, 16)]);
  assert.deepEqual([...chunk.experts], [...routing.experts.slice(2, 8)]);
  assert.notEqual(chunk.routerLogits.buffer, routing.routerLogits.buffer);
});

test('a chunk survives structured cloning (what postMessage does) with its typed arrays intact', () => {
  const run = makeRun();
  const message = RunLayerNotification.create({ chunk: encodeLayerChunk(run.id, run.layers.get(1)!, 4, 2) });
  const cloned = structuredClone(message);
  assert.ok(RunLayerNotification.is(cloned));
  const chunk = decodeLayerChunk(cloned.params.chunk);
  assert.ok(chunk.routerLogits instanceof Float32Array);
  assert.deepEqual(chunk, message.params.chunk);
});

test('decodeLayerChunk repairs arrays flattened to objects or lists, and rejects wrong shapes', () => {
  const flattened = { runId: 1, layer: 0, start: 0, count: 1, numExperts: 2, topK: 1, routerLogits: { 0: 1.5, 1: -2 }, experts: [1], weights: [1] };
  const chunk = decodeLayerChunk(flattened);
  assert.ok(chunk.routerLogits instanceof Float32Array);
  assert.deepEqual([...chunk.routerLogits], [1.5, -2]);
  assert.ok(chunk.experts instanceof Int32Array);
  assert.throws(() => decodeLayerChunk({ ...flattened, routerLogits: [1] }), /routerLogits has 1 values, expected 1×2/);
  assert.throws(() => decodeLayerChunk({ ...flattened, count: -1 }), /count must be an integer/);
  assert.throws(() => decodeLayerChunk({ ...flattened, experts: 'x' }), /experts is not an array/);
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
