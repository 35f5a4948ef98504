// The routing patch beyond the shared table (patch-cases.test.ts): the file name starts every message, the
// structure is checked without a model, serialisation round-trips, and empty patches are recognised.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { PatchError, isEmptyPatch, parsePatch, serializePatch, validatePatch } from '../../common/src/patch';

const model = { numLayers: 4, numExperts: 8, topK: 2, moeLayers: [1, 2, 3] };

test('parses every part of a patch and keeps its values', () => {
  const text = JSON.stringify({
    layers: {
      '1': { mask: [0, 7], force: [3], bias: { '2': -1.5, '5': 0.25 } },
      '2': { bias: [0, 0, 0, 1, 0, 0, 0, -1] },
      '3': { mix: { '4': [0.5, 0.5, 0, 0, 0, 0, 0, 0] } },
    },
  });
  const patch = parsePatch(text, 'p.json', model);
  assert.deepEqual(patch.layers['1'], { mask: [0, 7], force: [3], bias: { '2': -1.5, '5': 0.25 } });
  assert.deepEqual(patch.layers['2'].bias, [0, 0, 0, 1, 0, 0, 0, -1]);
  assert.deepEqual(patch.layers['3'].mix, { '4': [0.5, 0.5, 0, 0, 0, 0, 0, 0] });
});

test('serialises to the engine JSON and round-trips', () => {
  const patch = parsePatch('{"layers":{"3":{"force":[1]},"1":{"mask":[2],"bias":{"0":1}},"2":{"mask":[]}}}', 'p', model);
  const json = serializePatch(patch);
  assert.equal(json, '{"layers":{"1":{"mask":[2],"bias":{"0":1}},"3":{"force":[1]}}}');
  assert.deepEqual(serializePatch(parsePatch(json, 'p', model)), json);
});

test('empty patches', () => {
  assert.ok(isEmptyPatch(undefined));
  assert.ok(isEmptyPatch(parsePatch('{"layers":{}}')));
  assert.ok(isEmptyPatch(parsePatch('null')));
  assert.ok(isEmptyPatch(parsePatch('{"layers":{"1":{"mask":[]}}}')));
  assert.ok(!isEmptyPatch(parsePatch('{"layers":{"1":{"mask":[1]}}}')));
  assert.equal(serializePatch(parsePatch('{}')), '{"layers":{}}');
});

test('the source names the file in every message, on one line', () => {
  assert.throws(() => parsePatch('not json', 'x.json'), (e: unknown) => e instanceof PatchError && e.message.startsWith('x.json: invalid JSON ('));
  assert.throws(() => parsePatch('{"layers":{"1":{"mask":[8]}}}', 'dir/p.json', model), (e: unknown) => e instanceof PatchError && e.message === 'dir/p.json: layer 1: mask: expert 8 is out of range (the model has 8 experts: 0..7)');
});

test('structure is checked without a model; ranges only with one', () => {
  assert.doesNotThrow(() => validatePatch({ layers: { '40': { mask: [100] } } }));
  assert.throws(() => parsePatch('[]', 'x.json'), /expected an object/);
  assert.throws(() => validatePatch({ layers: { '1': { bias: { '0': 1e39 } } } }), /layer 1: bias: expert 0: not a finite float32 value/);
  assert.throws(() => validatePatch({ layers: { '1': { bias: [Number.NaN] } } }), /layer 1: bias: expert 0: not a finite float32 value/);
  assert.throws(() => validatePatch({ layers: { '1': { mix: { '0': [Number.POSITIVE_INFINITY] } } } }), /expected a probability in \[0, 1\]/);
});
