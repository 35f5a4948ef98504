// `routescope reference build`, `routescope eval` and `routescope headroom` end to end on a fixture model: every
// method, the per-item logs, refusal of a mismatched reference set, and Ctrl-C keeping the partial results.
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { interruptCli, ROOT, runCli, tempDir } from '../helpers/cli';
import { mcItems, mcModel, writeJsonl } from '../helpers/adapt';

let tmp = '';
let model = '';
let ref = '';
const EVAL_ITEMS = 12;

before(() => {
  tmp = tempDir();
  model = mcModel(path.join(tmp, 'model'));
  writeJsonl(path.join(tmp, 'ref.jsonl'), mcItems(40));
  writeJsonl(path.join(tmp, 'eval.jsonl'), mcItems(EVAL_ITEMS, 40));
  ref = path.join(tmp, 'ref');
  const r = runCli(['reference', 'build', '--model', model, '--data', path.join(tmp, 'ref.jsonl'), '--out', ref, '--threads', '2', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout);
  assert.equal(report.items, 40);
  assert.ok(report.kept > 0 && report.kept <= 40);
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Ready for Ctrl-C once the per-item log holds a finished item. */
const logged = (log: string) => (): boolean => fs.existsSync(log) && fs.statSync(log).size > 0;

test('reference build writes an inspectable set; --help lists the commands', () => {
  for (const f of ['routing.safetensors', 'embeddings.safetensors', 'index.jsonl', 'manifest.json']) assert.ok(fs.existsSync(path.join(ref, f)), f);
  const manifest = JSON.parse(fs.readFileSync(path.join(ref, 'manifest.json'), 'utf8'));
  assert.equal(manifest.model.model_type, 'olmoe');
  assert.deepEqual(manifest.embedder, { kind: 'self', layer: 3, pooled: 'prompt' });
  const help = runCli(['eval', '--help']);
  assert.equal(help.code, 0);
  for (const flag of ['--method', '--reference', '--log', '--limit', '--json']) assert.ok(help.stdout.includes(flag), flag);
  assert.equal(runCli(['reference', 'build', '--help']).code, 0);
});

test('eval runs every method end to end and writes one log line per item', () => {
  for (const method of ['none', 'c3po', 'c3po-kr', 'c3po-mode', 'c3po-oracle', 'reroute']) {
    const log = path.join(tmp, `log-${method}.jsonl`);
    const r = runCli(['eval', '--model', model, '--data', path.join(tmp, 'eval.jsonl'), '--method', method, '--reference', ref, '--log', log, '--threads', '2', '--json']);
    assert.equal(r.code, 0, `${method}: ${r.stderr}`);
    const s = JSON.parse(r.stdout);
    assert.equal(s.method, method);
    assert.equal(s.completed, EVAL_ITEMS);
    assert.equal(s.cancelled, false);
    assert.equal(s.analysis_only, method === 'c3po-oracle');
    assert.ok(s.accuracy.none >= 0 && s.accuracy.none <= 1 && s.accuracy.method >= 0 && s.accuracy.method <= 1);
    assert.deepEqual(Object.keys(s.per_skill).sort(), ['even', 'odd']);
    assert.ok(s.mean_ms.none > 0 && s.mean_ms.method > 0 && s.overhead > 0);
    const lines = fs.readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(lines.length, EVAL_ITEMS);
    const flips = { w: 0, r: 0 };
    for (const rec of lines) {
      assert.match(rec.none.answer, /^[ABCD]$/);
      assert.match(rec.method.answer, /^[ABCD]$/);
      assert.equal(rec.none.correct, rec.none.answer === rec.expected);
      assert.equal(rec.method.correct, rec.method.answer === rec.expected);
      if (rec.flip === 'wrong→right') flips.w++;
      if (rec.flip === 'right→wrong') flips.r++;
      if (method.startsWith('c3po')) {
        assert.ok(rec.method.omega, 'ω summary');
        for (const layer of Object.values(rec.method.omega) as { before: unknown[]; after: unknown[] }[]) assert.equal(layer.before.length, 4);
      }
      if (method === 'reroute') assert.ok(rec.method.delta && rec.method.delta.rounds === 1, 'δ summary');
      if (method === 'c3po-oracle') assert.equal(rec.analysis_only, true);
      if (method === 'none') assert.equal(rec.flip, null);
    }
    assert.deepEqual([flips.w, flips.r], [s.flips.wrong_to_right, s.flips.right_to_wrong]);
  }
  // People's output: accuracy, flips, per-skill table, time and overhead; the oracle is flagged.
  const human = runCli(['eval', '--model', model, '--data', path.join(tmp, 'eval.jsonl'), '--method', 'c3po-oracle', '--reference', ref, '--threads', '2']);
  assert.equal(human.code, 0, human.stderr);
  for (const re of [/ANALYSIS ONLY/, /accuracy: none \d+\.\d%  c3po-oracle \d+\.\d%/, /flips: wrong→right \d+, right→wrong \d+/, /^even +6 /m, /overhead \d+\.\d\d×/]) assert.match(human.stdout, re);
});

test('c3po with 0 NGD steps answers like the plain model (the adapted position re-run on the cached prefix)', () => {
  const log = path.join(tmp, 'log-c3po-0.jsonl');
  const r = runCli(['eval', '--model', model, '--data', path.join(tmp, 'eval.jsonl'), '--method', 'c3po', '--steps', '0', '--reference', ref, '--log', log, '--threads', '2', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout);
  assert.deepEqual(s.flips, { wrong_to_right: 0, right_to_wrong: 0 });
  for (const rec of fs.readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l))) assert.equal(rec.method.answer, rec.none.answer, rec.id);
});

test('eval --expert-load: per skill and layer, shares of the routing slots over every prompt token', () => {
  const r = runCli(['eval', '--model', model, '--data', path.join(tmp, 'eval.jsonl'), '--expert-load', '--threads', '2', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const load = JSON.parse(r.stdout).expert_load;
  assert.deepEqual(load.layers, [0, 1, 2]);
  assert.deepEqual(Object.keys(load.per_skill), ['even', 'odd']);
  const items = fs.readFileSync(path.join(tmp, 'eval.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  for (const [skill, v] of Object.entries(load.per_skill) as [string, { tokens: number; items: number; share: number[][]; last: number[][] }][]) {
    assert.ok(v.tokens > items.filter((i) => i.skill === skill).length, skill); // every prompt position counts
    assert.equal(v.share.length, 3);
    assert.equal(v.items, items.filter((i) => i.skill === skill).length, skill);
    for (const row of [...v.share, ...v.last]) {
      assert.equal(row.length, load.experts);
      assert.ok(Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-9);
    }
  }
  const human = runCli(['eval', '--model', model, '--data', path.join(tmp, 'eval.jsonl'), '--expert-load', '--threads', '2']);
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, /expert load/);
  assert.match(human.stdout, /^layer 2$/m);
  assert.match(human.stdout, /^even +.*\[\d+\].*\|.*\[\d+\]/m);
  assert.match(human.stdout, /^accuracy: \d+\.\d%$/m);
});

test('eval refuses a reference set built for another model, and c3po without a reference', () => {
  const other = mcModel(path.join(tmp, 'other-model'), 'qwen3_moe-fused-f32');
  const r = runCli(['eval', '--model', other, '--data', path.join(tmp, 'eval.jsonl'), '--method', 'c3po', '--reference', ref]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^routescope: .*ref: this reference set was built for another model \(model_type qwen3_moe vs olmoe\); rebuild it/);
  assert.equal(r.stderr.trim().split('\n').length, 1);
  const missing = runCli(['eval', '--model', model, '--data', path.join(tmp, 'eval.jsonl'), '--method', 'c3po']);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /--method c3po needs --reference REF/);
  const badLayer = runCli(['eval', '--model', model, '--data', path.join(tmp, 'eval.jsonl'), '--method', 'c3po', '--reference', ref, '--embedding-layer', '1']);
  assert.equal(badLayer.code, 1);
  assert.match(badLayer.stderr, /built with the model's own hidden state \(layer 3, pooled over the prompt\), but the model's own hidden state \(layer 1, pooled over the prompt\)/);
});

test('Ctrl-C during eval stops after the current item, prints the partial summary and keeps the partial log', async () => {
  const data = path.join(tmp, 'long.jsonl');
  writeJsonl(data, mcItems(4000, 1000));
  const log = path.join(tmp, 'partial.jsonl');
  const { code, stdout, stderr } = await interruptCli(['eval', '--model', model, '--data', data, '--method', 'reroute', '--log', log, '--threads', '1', '--json'], logged(log));
  assert.equal(code, 130, stderr);
  const summary = JSON.parse(stdout);
  assert.equal(summary.cancelled, true);
  assert.ok(summary.completed > 0 && summary.completed < 4000);
  assert.match(stderr, new RegExp(`routescope: cancelled after ${summary.completed} of 4000 items; .*partial\\.jsonl holds them`));
  const lines = fs.readFileSync(log, 'utf8').trim().split('\n');
  assert.equal(lines.length, summary.completed);
  for (const line of lines) JSON.parse(line); // every line complete
});

test('reference build and eval with the ONNX embedder (committed tiny fixture)', () => {
  const onnxRef = path.join(tmp, 'ref-onnx');
  const embedder = path.join(ROOT, 'test', 'fixtures', 'embedder');
  const b = runCli(['reference', 'build', '--model', model, '--data', path.join(tmp, 'ref.jsonl'), '--out', onnxRef, '--embedder', embedder, '--threads', '2', '--json']);
  assert.equal(b.code, 0, b.stderr);
  assert.equal(JSON.parse(b.stdout).embedding_dim, 16);
  const manifest = JSON.parse(fs.readFileSync(path.join(onnxRef, 'manifest.json'), 'utf8'));
  assert.equal(manifest.embedder.kind, 'onnx');
  assert.match(manifest.embedder.model_sha256, /^[0-9a-f]{64}$/);
  const r = runCli(['eval', '--model', model, '--data', path.join(tmp, 'eval.jsonl'), '--method', 'c3po', '--reference', onnxRef, '--limit', '3', '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).completed, 3);
});

test('Ctrl-C during reference build stops it and writes no reference set', async () => {
  const data = path.join(tmp, 'long-ref.jsonl');
  writeJsonl(data, mcItems(20000, 1000));
  const out = path.join(tmp, 'ref-cancelled');
  // Ctrl-C once the build is under way (its first progress line), or after 20 s without one.
  const started = Date.now();
  const { code, stderr } = await interruptCli(['reference', 'build', '--model', model, '--data', data, '--out', out, '--threads', '1'], (o) => o.stderr !== '' || Date.now() - started > 20_000);
  assert.equal(code, 130, stderr);
  assert.match(stderr, /routescope: cancelled; no reference set written/);
  assert.ok(!fs.existsSync(path.join(out, 'manifest.json')));
});

test('headroom: ANALYSIS ONLY everywhere; per-layer shares add up from the log; the new eval flags are accepted', () => {
  const log = path.join(tmp, 'headroom.jsonl');
  const r = runCli(['headroom', '--model', model, '--data', path.join(tmp, 'eval.jsonl'), '--log', log, '--candidates', '4', '--threads', '2', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout);
  assert.equal(s.analysis_only, true);
  assert.match(s.notice, /ANALYSIS ONLY/);
  assert.equal(s.completed, EVAL_ITEMS);
  assert.equal(s.right + s.wrong, EVAL_ITEMS);
  assert.deepEqual(s.perLayer.map((f: { layer: number }) => f.layer), [0, 1, 2]);
  assert.equal(s.settings.candidates, 4);
  const records = fs.readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(records.length, EVAL_ITEMS);
  for (const f of s.perLayer) {
    assert.equal(f.fixed, records.filter((x) => !x.correct && x.layers.some((c: { layer: number; flipped: boolean }) => c.layer === f.layer && c.flipped)).length);
    assert.equal(f.broken, records.filter((x) => x.correct && x.layers.some((c: { layer: number; flipped: boolean }) => c.layer === f.layer && c.flipped)).length);
  }
  for (const x of records) {
    assert.equal(x.analysis_only, true);
    assert.match(x.answer, /^[ABCD]$/);
    assert.equal(x.correct, x.answer === x.expected);
  }
  assert.equal(s.fixedItems.length, records.filter((x) => !x.correct && (x.joint?.flipped || x.layers.some((c: { flipped: boolean }) => c.flipped))).length);
  const human = runCli(['headroom', '--model', model, '--data', path.join(tmp, 'eval.jsonl'), '--limit', '3', '--no-joint', '--threads', '2']);
  assert.equal(human.code, 0, human.stderr);
  for (const re of [/^ROUTING HEADROOM — ANALYSIS ONLY/m, /^layer   wrong items fixed/m, /^ +2   \d+\/\d+ \(/m, /accuracy with the best routing change found/]) assert.match(human.stdout, re);
  assert.doesNotMatch(human.stdout, /every layer together/);
  const badLayer = runCli(['headroom', '--model', model, '--data', path.join(tmp, 'eval.jsonl'), '--layers', '7']);
  assert.equal(badLayer.code, 2);
  assert.match(badLayer.stderr, /--layers: layer 7 has no router/);
  // eval: the C3PO and rerouting choices as flags.
  const flags = runCli(['eval', '--model', model, '--data', path.join(tmp, 'eval.jsonl'), '--method', 'c3po', '--reference', ref, '--limit', '2', '--dedup', 'none',
    '--option-loss', '--lr-start', '0.5', '--lr-end', '0.01', '--json']);
  assert.equal(flags.code, 0, flags.stderr);
  const rr = runCli(['eval', '--model', model, '--data', path.join(tmp, 'eval.jsonl'), '--method', 'reroute', '--limit', '2', '--reroute-window', 'since-last-round', '--reroute-reset-adam', '--json']);
  assert.equal(rr.code, 0, rr.stderr);
  const bad = runCli(['eval', '--model', model, '--data', path.join(tmp, 'eval.jsonl'), '--dedup', 'sometimes']);
  assert.equal(bad.code, 2);
});

test('Ctrl-C during headroom keeps the finished items: partial summary, exit 130', async () => {
  const data = path.join(tmp, 'long-headroom.jsonl');
  writeJsonl(data, mcItems(4000, 3000));
  const log = path.join(tmp, 'headroom-partial.jsonl');
  const { code, stdout, stderr } = await interruptCli(['headroom', '--model', model, '--data', data, '--log', log, '--threads', '1', '--json'], logged(log));
  assert.equal(code, 130, stderr);
  const summary = JSON.parse(stdout);
  assert.equal(summary.cancelled, true);
  assert.ok(summary.completed > 0 && summary.completed < 4000);
  assert.equal(fs.readFileSync(log, 'utf8').trim().split('\n').length, summary.completed);
  assert.match(stderr, /cancelled after \d+ of 4000 items/);
});
