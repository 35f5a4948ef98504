// Reference sets (build, files, round trip, refusal of another model or embedder), the ONNX embedder, and the
// C3PO methods on a fixture model.
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadAddon } from '../../extension/src/engine/addon';
import type { NativeModel } from '../../extension/src/engine/native';
import { loadTokenizer } from '../../extension/src/checkpoint/tokenizer';
import { C3po, PrefixCache } from '../../extension/src/adapt/c3po';
import { OnnxEmbedder, SelfEmbedder } from '../../extension/src/adapt/embedder';
import { buildReference, loadReference, saveReference, type ReferenceSet } from '../../extension/src/adapt/reference';
import { readSafetensors } from '../../extension/src/adapt/safetensors';
import { DEFAULT_C3PO, DEFAULT_REROUTE } from '../../extension/src/adapt/settings';
import { compareRemix, compareReroute } from '../../extension/src/adapt/compare';
import { TaskRunner, readTasks, type McItem } from '../../extension/src/adapt/tasks';
import { ROOT, tempDir } from '../helpers/cli';
import { readSafetensorsRaw, writeSafetensorsRaw } from '../helpers/safetensors';
import { mcItems, mcModel, writeJsonl } from '../helpers/adapt';

let tmp = '';
let modelDir = '';
let refDir = '';
let model: NativeModel;

before(async () => {
  tmp = tempDir();
  modelDir = mcModel(path.join(tmp, 'model'));
  writeJsonl(path.join(tmp, 'ref.jsonl'), mcItems(40));
  model = loadAddon().loadModel(modelDir, { threads: 2 });
  const info = model.info();
  const tokenizer = loadTokenizer(modelDir);
  const session = model.createSession();
  const runner = new TaskRunner(info, tokenizer);
  const embedder = new SelfEmbedder(session, (t) => tokenizer.encode(t), info.numLayers);
  const items = readTasks(path.join(tmp, 'ref.jsonl'));
  const built = await buildReference({ session, runner, embedder, items, source: 'ref.jsonl' });
  assert.ok(built.entries.length >= 4, `only ${built.entries.length} items answered correctly`);
  refDir = path.join(tmp, 'ref');
  saveReference(refDir, info, modelDir, embedder.identity, built, { file: 'ref.jsonl', items: items.length });
});
after(() => {
  model?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('reference set files: safetensors + JSONL index + manifest, and a faithful round trip', async () => {
  for (const f of ['routing.safetensors', 'embeddings.safetensors', 'index.jsonl', 'manifest.json']) assert.ok(fs.existsSync(path.join(refDir, f)), f);
  const info = model.info();
  const ref = loadReference(refDir, info, modelDir, { kind: 'self', layer: info.numLayers, pooled: 'prompt' });
  const raw = readSafetensors(path.join(refDir, 'routing.safetensors'));
  assert.deepEqual(raw.tensors.routing.shape, [ref.entries.length, info.moeLayers.length, info.numExperts]);
  assert.deepEqual(JSON.parse(raw.metadata.moe_layers), info.moeLayers);
  // The stored ω of the first item equals a fresh capture; its embedding, taken from the prompt's own forward, equals
  // a fresh (normalised) embedding of the prompt.
  const tokenizer = loadTokenizer(modelDir);
  const session = model.createSession();
  const runner = new TaskRunner(info, tokenizer);
  const entry = ref.entries[0];
  const fwd = await runner.forward(session, tokenizer.encode(entry.prompt));
  info.moeLayers.forEach((l, j) => assert.deepEqual([...ref.routing[0][j]], [...fwd.omega.get(l)!]));
  const e = await new SelfEmbedder(session, (t) => tokenizer.encode(t), info.numLayers).embed(entry.prompt);
  assert.deepEqual([...ref.embeddings[0]], [...e]);
  const norm = Math.hypot(...ref.embeddings[0]);
  assert.ok(Math.abs(norm - 1) < 1e-5);
  // Kept = answered correctly, with the answer letter's token.
  const item = readTasks(path.join(tmp, 'ref.jsonl')).find((i) => i.id === entry.id) as McItem;
  assert.ok(runner.scoreMc(item, fwd.logits).correct);
  assert.equal(entry.answer_token, runner.letterToken(item.answer));
  assert.deepEqual(entry.option_tokens, runner.optionTokens(item));
});

test('a reference set is refused for another model, a changed checkpoint, or another embedder', () => {
  const info = model.info();
  const changed = path.join(tmp, 'changed');
  fs.cpSync(modelDir, changed, { recursive: true });
  const config = JSON.parse(fs.readFileSync(path.join(changed, 'config.json'), 'utf8'));
  config.rope_theta = 500000;
  fs.writeFileSync(path.join(changed, 'config.json'), JSON.stringify(config));
  assert.throws(() => loadReference(refDir, info, changed), (e: Error & { code?: string }) => e.code === 'BAD_REFERENCE' && /built for another model \(config\.json differs\)/.test(e.message));
  const otherTok = path.join(tmp, 'othertok');
  fs.cpSync(modelDir, otherTok, { recursive: true });
  fs.writeFileSync(path.join(otherTok, 'tokenizer.json'), fs.readFileSync(path.join(otherTok, 'tokenizer.json'), 'utf8').replace('"<unk>":0', '"<unk>" :0'));
  assert.throws(() => loadReference(refDir, info, otherTok), /tokenizer\.json differs/);
  const other = mcModel(path.join(tmp, 'other'), 'mixtral-perexpert-f32');
  const otherModel = loadAddon().loadModel(other);
  assert.throws(() => loadReference(refDir, otherModel.info(), other), /model_type mixtral vs olmoe/);
  otherModel.close();
  assert.throws(() => loadReference(refDir, info, modelDir, { kind: 'self', layer: 1, pooled: 'prompt' }), /built with the model's own hidden state \(layer 3, pooled over the prompt\), but the model's own hidden state \(layer 1, pooled over the prompt\)/);
  assert.throws(() => loadReference(path.join(tmp, 'nowhere'), info, modelDir), /not a reference set/);
});

test('the ONNX embedder (tiny committed fixture) matches its PyTorch reference: mean pooling + L2 norm', async () => {
  const dir = path.join(ROOT, 'test', 'fixtures', 'embedder');
  const expected = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as { text: string; embedding: number[] };
  const embedder = await OnnxEmbedder.open(dir);
  try {
    assert.equal(embedder.identity.kind, 'onnx');
    const e = await embedder.embed(expected.text);
    assert.equal(e.length, expected.embedding.length);
    e.forEach((v, i) => assert.ok(Math.abs(v - expected.embedding[i]) < 1e-5, `dim ${i}: ${v} vs ${expected.embedding[i]}`));
    const same = await embedder.embed(expected.text.toLowerCase()); // the tokenizer lowercases
    assert.deepEqual([...same], [...e]);
  } finally {
    await embedder.dispose();
  }
  await assert.rejects(OnnxEmbedder.open(path.join(ROOT, 'test', 'fixtures')), /model\.onnx: not found/);
});

function c3po(ref: ReferenceSet, settings = {}): C3po {
  const info = model.info();
  const tokenizer = loadTokenizer(modelDir);
  const embedder = new SelfEmbedder(model.createSession(), (t) => tokenizer.encode(t), info.numLayers);
  return new C3po({ model, info, reference: ref, embedder, settings: { ...DEFAULT_C3PO, ...settings }, encode: (t) => tokenizer.encode(t) });
}

test('C3PO methods on a fixture: NGD lowers the surrogate loss; kernel regression and mode finding never raise it; the oracle is marked', async () => {
  const info = model.info();
  const ref = loadReference(refDir, info, modelDir);
  const tokenizer = loadTokenizer(modelDir);
  const runner = new TaskRunner(info, tokenizer);
  const session = model.createSession();
  const adapter = c3po(ref, { criticalLayers: 2 });
  assert.deepEqual(adapter.layers, [1, 2]);
  const item = mcItems(1, 100)[0];
  const tokens = tokenizer.encode(item.prompt);
  const fwd = await runner.forward(session, tokens);
  const test = { tokens, question: item.question, prompt: item.prompt, omega: fwd.omega };
  const ngd = await adapter.adapt('ngd', test, { finalLoss: true });
  assert.equal(ngd.losses.length, DEFAULT_C3PO.steps + 1);
  assert.equal((await adapter.adapt('ngd', test)).losses.length, DEFAULT_C3PO.steps); // no loss-only pass by default
  assert.ok(ngd.losses[ngd.losses.length - 1] < ngd.losses[0], `NGD: ${ngd.losses[0]} -> ${ngd.losses.at(-1)}`);
  assert.equal(ngd.neighbours.length, 3);
  assert.ok(!ngd.analysisOnly);
  for (const method of ['kernel', 'mode'] as const) {
    const r = await adapter.adapt(method, test);
    assert.ok(r.alpha !== undefined && r.alpha >= 0 && r.alpha <= 1);
    assert.ok(r.losses[1] <= r.losses[0] + 1e-12, `${method}: ${r.losses[0]} -> ${r.losses[1]}`);
    for (const l of adapter.layers) assert.ok(Math.abs(r.omegaAfter[String(l)].reduce((a, b) => a + b, 0) - 1) < 1e-5);
  }
  const oracle = await adapter.adapt('oracle', { ...test, label: runner.letterToken(item.answer) }, { finalLoss: true });
  assert.ok(oracle.analysisOnly);
  assert.ok(oracle.losses.at(-1)! < oracle.losses[0]);
  // Prefixes were cached across calls: the second method reused the first one's neighbours.
  assert.ok(adapter.cache.hits > 0);
  adapter.dispose();
  assert.equal(adapter.cache.size, 0);
});

test('the prefix cache evicts least recently used prefixes beyond its memory cap', async () => {
  const info = model.info();
  const probe = new PrefixCache(model, info, 2, 1);
  const one = probe.estimate(5);
  const cache = new PrefixCache(model, info, 2, 2 * one + 1);
  await cache.get(0, [1, 2, 3, 4, 5]);
  await cache.get(1, [1, 2, 3, 4, 6]);
  await cache.get(0, [1, 2, 3, 4, 5]); // 0 is now the most recent
  await cache.get(2, [1, 2, 3, 4, 7]); // evicts 1
  assert.equal(cache.size, 2);
  assert.equal(cache.hits, 1);
  await cache.get(0, [1, 2, 3, 4, 5]);
  assert.equal(cache.hits, 2);
  await cache.get(1, [1, 2, 3, 4, 6]);
  assert.equal(cache.misses, 4);
  cache.clear();
});

test('the prefix cache counts a bf16 KV cache at two bytes per key and value entry', () => {
  const info = model.info();
  const entries = 100 * info.numLayers * info.numKvHeads * info.headDim * 2;
  const fp32 = new PrefixCache(model, { ...info, kvCache: 'fp32' }, 2, 1).estimate(100);
  const bf16 = new PrefixCache(model, { ...info, kvCache: 'bf16' }, 2, 1).estimate(100);
  assert.equal(fp32 - bf16, entries * 2);
});

test('panel comparisons: C3PO re-mix before/after and generation with/without rerouting', async () => {
  const info = model.info();
  const ref = loadReference(refDir, info, modelDir);
  const tokenizer = loadTokenizer(modelDir);
  const session = model.createSession();
  const adapter = c3po(ref, { criticalLayers: 2 });
  const item = mcItems(1, 200)[0];
  const prompt = tokenizer.encode(item.prompt);
  const cmp = await compareRemix(adapter, session, tokenizer, { prompt, question: item.question, method: 'ngd', topK: info.topK, maxNewTokens: 4, stopTokens: [], applyTo: 'every-token' });
  assert.deepEqual(Object.keys(cmp.selected), ['1', '2']);
  assert.equal(cmp.selected['2'].before.length, info.topK);
  assert.equal(cmp.before.top.length, 5);
  assert.equal(cmp.before.tokens.length, 4);
  assert.equal(cmp.outcome.neighbours.length, 3);
  // ω = the original routing reproduces the plain model exactly (the "after" side of a zero-step re-mix) where it
  // applies to the last prompt token only; applied to every generated token too, the first token is unchanged.
  const zero = c3po(ref, { criticalLayers: 2, steps: 0 });
  const same = await compareRemix(zero, session, tokenizer, { prompt, question: item.question, method: 'ngd', topK: info.topK, maxNewTokens: 4, stopTokens: [], applyTo: 'prefill-only' });
  assert.deepEqual(same.after.tokens, same.before.tokens);
  // ω is the softmax of the reported router logits computed in JavaScript (float64, then float32), which may differ
  // from the engine's own float32 softmax in the last bit of a weight: the same next tokens, probabilities equal to
  // float32 rounding.
  assert.deepEqual(same.after.top.map((t) => [t.token, t.text]), same.before.top.map((t) => [t.token, t.text]));
  same.after.top.forEach((t, i) => assert.ok(Math.abs(t.prob - same.before.top[i]!.prob) <= 1e-6 * same.before.top[i]!.prob, `top ${i}: ${t.prob} vs ${same.before.top[i]!.prob}`));
  const tail = await compareRemix(zero, session, tokenizer, { prompt, question: item.question, method: 'ngd', topK: info.topK, maxNewTokens: 4, stopTokens: [], applyTo: 'every-token' });
  assert.equal(tail.after.tokens[0], tail.before.tokens[0]);
  adapter.dispose();
  zero.dispose();
  const rounds: number[] = [];
  const rr = await compareReroute(session, tokenizer, { ...DEFAULT_REROUTE, layers: [], interval: 3 }, { prompt, maxNewTokens: 7, stopTokens: [], onRound: (r) => rounds.push(r.position) });
  assert.equal(rr.plain.tokens.length, 7);
  assert.equal(rr.rerouted.tokens.length, 7);
  assert.deepEqual(rounds, [prompt.length, prompt.length + 3, prompt.length + 6]);
  // Each round adapts half the MoE layers (the default), so every adapted layer is one of them.
  assert.ok(rr.rounds.every((r) => r.layers.length === Math.round(info.moeLayers.length / 2)));
  assert.ok(Object.keys(rr.delta).every((l) => info.moeLayers.includes(Number(l))));
});

test('malformed reference sets: every variant is a one-line BAD_REFERENCE naming the file, never a TypeError', () => {
  const info = model.info();
  const variants: [string, (dir: string) => void][] = [];
  const editJson = (file: string, edit: (v: Record<string, unknown>) => void) => (dir: string) => {
    const full = path.join(dir, file);
    const v = JSON.parse(fs.readFileSync(full, 'utf8'));
    edit(v);
    fs.writeFileSync(full, JSON.stringify(v));
  };
  const wrong: unknown[] = [null, '8', [], {}, -1, 1.5, true];
  const manifestFields: [string, (m: Record<string, unknown>, v: unknown) => void][] = [
    ['format', (m, v) => (m.format = v)],
    ['model', (m, v) => (m.model = v)],
    ['model.weights', (m, v) => ((m.model as Record<string, unknown>).weights = v)],
    ['model.weights[0]', (m, v) => (((m.model as Record<string, unknown>).weights as unknown[])[0] = v)],
    ['model.config_sha256', (m, v) => ((m.model as Record<string, unknown>).config_sha256 = v)],
    ['embedder', (m, v) => (m.embedder = v)],
    ['embedder.layer', (m, v) => ((m.embedder as Record<string, unknown>).layer = v)],
    ['moe_layers', (m, v) => (m.moe_layers = v)],
    ['num_experts', (m, v) => (m.num_experts = v)],
    ['embedding_dim', (m, v) => (m.embedding_dim = v)],
    ['items', (m, v) => (m.items = v)],
  ];
  for (const [field, set] of manifestFields) {
    for (const v of wrong) variants.push([`manifest ${field} = ${JSON.stringify(v)}`, editJson('manifest.json', (m) => set(m, v))]);
  }
  variants.push(['manifest: not JSON', (d) => fs.writeFileSync(path.join(d, 'manifest.json'), '{"format":')]);
  variants.push(['manifest: a list', (d) => fs.writeFileSync(path.join(d, 'manifest.json'), '[]')]);
  variants.push(['manifest: moe_layers of another model', editJson('manifest.json', (m) => (m.moe_layers = [0]))]);
  variants.push(['manifest: num_experts of another model', editJson('manifest.json', (m) => (m.num_experts = 4))]);
  const index = (edit: (lines: string[]) => string[]) => (dir: string) => {
    const file = path.join(dir, 'index.jsonl');
    fs.writeFileSync(file, edit(fs.readFileSync(file, 'utf8').trim().split('\n')).join('\n') + '\n');
  };
  const entry = (edit: (e: Record<string, unknown>) => void) => index((lines) => {
    const e = JSON.parse(lines[0]);
    edit(e);
    return [JSON.stringify(e), ...lines.slice(1)];
  });
  variants.push(['index: a null line', index((l) => [...l.slice(0, 1), 'null', ...l.slice(1)])]);
  variants.push(['index: not JSON', index((l) => ['{', ...l.slice(1)])]);
  variants.push(['index: a line missing', index((l) => l.slice(1))]);
  for (const key of ['id', 'prompt', 'question', 'answer', 'skill']) variants.push([`index: ${key} = 3`, entry((e) => (e[key] = 3))]);
  for (const t of [-1, 96, 1e9, 1.5, '3', null]) variants.push([`index: answer_token = ${JSON.stringify(t)}`, entry((e) => (e.answer_token = t))]);
  const tensor = (file: string, edit: (st: ReturnType<typeof readSafetensorsRaw>) => void) => (dir: string) => {
    const st = readSafetensorsRaw(path.join(dir, file));
    st.data = Buffer.from(st.data);
    edit(st);
    writeSafetensorsRaw(path.join(dir, file), st);
  };
  for (const file of ['routing.safetensors', 'embeddings.safetensors']) {
    const name = file.split('.')[0];
    variants.push([`${file}: data_offsets from -8`, tensor(file, (st) => (st.header[name].data_offsets = [-8, st.header[name].data_offsets[1] - 8]))]);
    variants.push([`${file}: dtype F16`, tensor(file, (st) => (st.header[name].dtype = 'F16'))]);
    variants.push([`${file}: shape [2]`, tensor(file, (st) => (st.header[name].shape = [2]))]);
    variants.push([`${file}: NaN`, tensor(file, (st) => st.data.writeFloatLE(NaN, 8))]);
    variants.push([`${file}: -Infinity`, tensor(file, (st) => st.data.writeFloatLE(-Infinity, 0))]);
    variants.push([`${file}: tensor renamed`, tensor(file, (st) => ((st.header.other = st.header[name]), delete st.header[name]))]);
    variants.push([`${file}: truncated`, (d) => fs.truncateSync(path.join(d, file), 20)]);
    variants.push([`${file}: header length past the end`, (d) => {
      const bytes = fs.readFileSync(path.join(d, file));
      bytes.writeBigUInt64LE(1n << 40n, 0);
      fs.writeFileSync(path.join(d, file), bytes);
    }]);
    variants.push([`${file}: a gap after the tensor`, (d) => fs.appendFileSync(path.join(d, file), Buffer.alloc(8))]);
    variants.push([`${file}: missing`, (d) => fs.rmSync(path.join(d, file))]);
  }
  variants.push(['routing: a row summing to 2', tensor('routing.safetensors', (st) => st.data.writeFloatLE(st.data.readFloatLE(0) + 1, 0))]);
  variants.push(['routing: a negative probability', tensor('routing.safetensors', (st) => st.data.writeFloatLE(-0.5, 4))]);
  assert.ok(variants.length >= 33, `${variants.length} variants`);
  let n = 0;
  for (const [name, edit] of variants) {
    const dir = path.join(tmp, `bad-ref-${n++}`);
    fs.cpSync(refDir, dir, { recursive: true });
    edit(dir);
    assert.throws(
      () => loadReference(dir, info, modelDir),
      (e: Error & { code?: string }) => {
        assert.equal(e.code, 'BAD_REFERENCE', `${name}: ${e.constructor.name} ${e.message}`);
        assert.ok(e.message.startsWith(dir), `${name}: "${e.message}" should name a file of the set`);
        assert.doesNotMatch(e.message, /\n|undefined|Cannot read|is not a function/, name);
        return true;
      },
      name,
    );
    fs.rmSync(dir, { recursive: true });
  }
});
