// Tail mix keys "N+" in routing patches: validation, serialisation, and the engine applying them at every
// position >= N (prompt and generated).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { loadAddon } from '../../extension/src/engine/addon';
import { PatchError, parsePatch, serializePatch } from '../../common/src/patch';
import { c3poPatch } from '../../extension/src/adapt/c3po';
import { PARITY_DIR } from '../helpers/cli';

const SHAPE = { numLayers: 3, numExperts: 8, topK: 2, moeLayers: [0, 1, 2] };
const ROW = [0.5, 0.3, 0.1, 0.1, 0, 0, 0, 0];

test('"N+" mix keys are accepted, kept by serialisation, and checked like exact positions', () => {
  const p = parsePatch(JSON.stringify({ layers: { '1': { mix: { '4+': ROW, '2': ROW } } } }), 'p.json', SHAPE);
  assert.deepEqual(Object.keys(p.layers['1'].mix!).sort(), ['2', '4+']);
  const round = JSON.parse(serializePatch(p));
  assert.deepEqual(round.layers['1'].mix['4+'], ROW);
  const rejects = (value: unknown, re: RegExp): void => assert.throws(() => parsePatch(JSON.stringify(value), 'p.json', SHAPE), (e: Error) => e instanceof PatchError && re.test(e.message));
  rejects({ layers: { '1': { mix: { '+': ROW } } } }, /"\+" is not a position/);
  rejects({ layers: { '1': { mix: { '01+': ROW } } } }, /not a position/);
  rejects({ layers: { '1': { mix: { '3++': ROW } } } }, /not a position/);
  rejects({ layers: { '1': { mix: { '3+': [1, 0] } } } }, /mix\["3\+"\]: has 2 values/);
  rejects({ layers: { '1': { mix: { '3+': ROW, '5+': ROW } } } }, /has two "N\+" keys/);
});

test('c3poPatch: the last prompt position only, or from it on', () => {
  const omega = { '2': Float32Array.from(ROW) };
  assert.deepEqual(Object.keys(c3poPatch(omega, 6, 'prefill-only').layers['2'].mix!), ['6']);
  assert.deepEqual(Object.keys(c3poPatch(omega, 6, 'every-token').layers['2'].mix!), ['6+']);
});

test('the engine applies a "N+" row at every position >= N, as the same row at each position would', async () => {
  const model = loadAddon().loadModel(path.join(PARITY_DIR, 'olmoe-perexpert-bf16', 'model'), { threads: 2 });
  const tokens = Int32Array.of(5, 9, 14, 3, 22, 7);
  const tail = serializePatch({ layers: { '2': { mix: { '3+': ROW } } } });
  const explicit = serializePatch({ layers: { '2': { mix: { '3': ROW, '4': ROW, '5': ROW } } } });
  const a = await model.createSession().forward(tokens, { patch: tail, logits: 'all' });
  const b = await model.createSession().forward(tokens, { patch: explicit, logits: 'all' });
  const plain = await model.createSession().forward(tokens, { logits: 'all' });
  assert.deepEqual([...a.logits], [...b.logits]);
  const V = model.info().vocabSize;
  assert.deepEqual([...a.logits.subarray(0, 3 * V)], [...plain.logits.subarray(0, 3 * V)]); // before N: untouched
  assert.notDeepEqual([...a.logits.subarray(3 * V)], [...plain.logits.subarray(3 * V)]);
  // Generated positions get the row too: the tail patch in generate equals a step-by-step decode with exact keys.
  const gen = await model.createSession().generate(tokens, { patch: tail, maxNewTokens: 4, temperature: 0, topP: 1, seed: 0, stopTokens: [] });
  const seq = [...tokens];
  const s = model.createSession();
  let logits = (await s.forward(tokens, { patch: tail, logits: 'last' })).logits;
  for (let i = 0; i < 4; i++) {
    let best = 0;
    for (let v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
    seq.push(best);
    const pos = String(seq.length - 1);
    logits = (await s.forward(Int32Array.of(best), { patch: serializePatch({ layers: { '2': { mix: { [pos]: ROW } } } }), logits: 'last' })).logits;
  }
  assert.deepEqual([...gen.tokens], seq.slice(tokens.length));
  model.close();
});
