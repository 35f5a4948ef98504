import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { PatchError, isEmptyPatch, parsePatch, serializePatch, validatePatch } from '../../extension/src/engine/patch';

const model = { numLayers: 4, numExperts: 8, topK: 2, moeLayers: [1, 2, 3] };

function rejects(text: string, pattern: RegExp, shape = model): void {
  assert.throws(
    () => parsePatch(text, 'p.json', shape),
    (error: unknown) => {
      assert.ok(error instanceof PatchError, `expected PatchError, got ${String(error)}`);
      assert.match(error.message, /^p\.json: /);
      assert.match(error.message, pattern);
      assert.ok(!error.message.includes('\n'), 'one line');
      return true;
    },
  );
}

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
  assert.ok(isEmptyPatch(parsePatch('{"layers":{"1":{"mask":[]}}}')));
  assert.ok(!isEmptyPatch(parsePatch('{"layers":{"1":{"mask":[1]}}}')));
  assert.equal(serializePatch(parsePatch('{}')), '{"layers":{}}');
});

test('structure is checked without a model', () => {
  assert.doesNotThrow(() => validatePatch({ layers: { '40': { mask: [100] } } }));
  assert.throws(() => parsePatch('not json', 'x.json'), /x\.json: invalid JSON/);
  assert.throws(() => parsePatch('[]', 'x.json'), /expected an object/);
});

test('rejects an out-of-range expert in mask, force and bias, naming it', () => {
  rejects('{"layers":{"1":{"mask":[8]}}}', /layer 1: mask: expert 8 is out of range \(the model has 8 experts: 0\.\.7\)/);
  rejects('{"layers":{"1":{"force":[12]}}}', /layer 1: force: expert 12 is out of range/);
  rejects('{"layers":{"1":{"bias":{"9":1}}}}', /layer 1: bias: expert 9 is out of range/);
  rejects('{"layers":{"1":{"mask":[-1]}}}', /not a non-negative integer/);
  rejects('{"layers":{"1":{"mask":[1.5]}}}', /not a non-negative integer/);
});

test('rejects bad layers', () => {
  rejects('{"layers":{"4":{"mask":[1]}}}', /layer 4: out of range \(the model has 4 layers/);
  rejects('{"layers":{"0":{"mask":[1]}}}', /layer 0: is a dense layer without a router/);
  rejects('{"layers":{"x":{"mask":[1]}}}', /"x" is not a layer index/);
  rejects('{"layers":{"01":{"mask":[1]}}}', /"01" is not a layer index/);
  rejects('{"layers":{"1":[1,2]}}', /layer 1: expected an object/);
});

test('rejects inconsistent selections', () => {
  rejects('{"layers":{"1":{"mask":[2],"force":[2]}}}', /expert 2 is both masked and forced/);
  rejects('{"layers":{"1":{"force":[1,2,3]}}}', /3 experts forced but only top_k=2/);
  rejects('{"layers":{"1":{"mask":[0,1,2,3,4,5,6]}}}', /masks 7 of 8 experts, leaving fewer than top_k=2/);
  rejects('{"layers":{"1":{"mask":[1,1]}}}', /expert 1 is listed twice/);
});

test('rejects malformed bias and mix values', () => {
  rejects('{"layers":{"1":{"bias":[1,2]}}}', /bias: has 2 values, expected 8/);
  rejects('{"layers":{"1":{"bias":{"1":"big"}}}}', /bias\["1"\]: expected a finite number/);
  rejects('{"layers":{"1":{"bias":5}}}', /bias: expected/);
  rejects('{"layers":{"1":{"mix":{"0":[1,0]}}}}', /mix\["0"\]: has 2 values, expected 8/);
  rejects('{"layers":{"1":{"mix":{"0":[1,0,0,0,0,0,0,-0.1]}}}}', /probabilities must be >= 0/);
  rejects('{"layers":{"1":{"mix":{"0":[0,0,0,0,0,0,0,0]}}}}', /at least one positive/);
  rejects('{"layers":{"1":{"mix":{"p":[1,0,0,0,0,0,0,0]}}}}', /"p" is not a position/);
});

test('rejects unknown keys (typos)', () => {
  rejects('{"layers":{"1":{"masks":[1]}}}', /layer 1: unknown key "masks"/);
  rejects('{"layer":{}}', /unknown key "layer"/);
});
