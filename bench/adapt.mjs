#!/usr/bin/env node
// Test-time adaptation costs against their targets, both sides of each ratio measured in the same run:
//   router-gradient pass (loss + router gradients of every MoE layer) <= 2x a forward over the same tokens,
//   C3PO-NGD per test item <= 2x plain inference, continuous rerouting <= 1.3x plain generation (256 tokens).
// Runs after the throughput bench in `npm run bench`, or alone:
//
//   node bench/adapt.mjs [--layers 2] [--threads T] [--items 20] [--reference-items 60] [--gen-tokens 256]
//                        [--grad-tokens 151] [--repeat 3] [--json]
//
// Gradient pass: Session.grad (loss over every next token, bias gradients of every MoE layer) against
//   Session.forward over the same tokens with the logits of every position (what the loss needs) and, for
//   reference, of the last one; best of --repeat interleaved runs each.
// C3PO: the real pipeline of `routescope eval --method c3po --warm-prefixes` (one forward of the prompt for ω and
//   the self-embedding, neighbours, NGD with k=3 and 10 steps against the cached neighbour prefixes, the patched
//   last position re-run), against method none (one forward), per test item, interleaved by the harness; every
//   reference prompt is cached first (a one-time prefill each, reported apart):
//   - on the demo model (media/demo-model, its task suite) when it is there;
//   - on the OLMoE-shaped random checkpoint of bench/checkpoint.mjs (--layers layers; a character-level tokenizer
//     is added so that the task format works; answers are meaningless, only the time counts).
// Rerouting: Session.generate vs Session.generateRerouted at the defaults (a round after prefill then every 128
//   tokens, 5 Adam steps, half the layers, loss over the whole context: the exact semantics) and with the loss over
//   the tokens since the last round, --gen-tokens greedy tokens from the same prompt, best of --repeat each.
// Reports, never asserts: a missed target is printed as missed.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { ensureCheckpoint } from './checkpoint.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(ROOT, 'bench', 'out');
const CLI = path.join(ROOT, 'bin', 'routescope.js');
const DEMO = path.join(ROOT, 'media', 'demo-model');
const TASKS = path.join(ROOT, 'media', 'tasks');
const TARGET_GRAD = 2;
const TARGET_C3PO = 2;
const TARGET_REROUTE = 1.3;
const CHECKPOINT_SEED = 20240901;
const require = createRequire(import.meta.url);

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    layers: { type: 'string', default: '2' },
    threads: { type: 'string', default: String(os.availableParallelism()) },
    items: { type: 'string', default: '20' },
    'reference-items': { type: 'string', default: '60' },
    'gen-tokens': { type: 'string', default: '256' },
    'grad-tokens': { type: 'string', default: '151' },
    repeat: { type: 'string', default: '3' },
    'skip-demo': { type: 'boolean', default: false },
    'skip-olmoe': { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
});
const threads = Number(values.threads);
const items = Number(values.items);
const refItems = Number(values['reference-items']);
const genTokens = Number(values['gen-tokens']);
const gradTokens = Number(values['grad-tokens']);
const repeat = Math.max(1, Number(values.repeat));
const log = (text) => process.stderr.write(`${text}\n`);

function cli(args) {
  const r = spawnSync(process.execPath, [CLI, ...args, '--threads', String(threads), '--json'], { encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`routescope ${args.join(' ')} failed (${r.status}): ${r.stderr.trim().split('\n').pop()}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

// A character-level tokenizer (ids 0..50, inside any vocabulary) and "what is a+b?" items in the task format.
function charTokenizer() {
  const chars = [' ', ...'abcdefghijklmnopqrstuvwxyz', ...'ABCD', ...'0123456789', ...'.,!?:+\n'];
  const vocab = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  chars.forEach((c, i) => (vocab[c === ' ' ? '\u0120' : c === '\n' ? '\u010a' : c] = i + 3));
  const special = (id, content) => ({ id, content, special: true, single_word: false, lstrip: false, rstrip: false, normalized: false });
  return {
    version: '1.0', truncation: null, padding: null, added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: null, pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null, decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: [] },
  };
}

function syntheticItems(n, offset) {
  return Array.from({ length: n }, (_, j) => {
    const i = j + offset;
    const a = (i * 7) % 90, b = (i * 13) % 70;
    const question = `what is ${a}+${b}?`;
    const options = { A: String(a + b), B: String(a + b + 1), C: String(a + b + 10), D: String(Math.abs(a - b)) };
    return { id: `s${i}`, skill: 'add', question, options, answer: 'ABCD'[i % 4], prompt: `q: ${question}\nA. ${options.A}\nB. ${options.B}\nC. ${options.C}\nD. ${options.D}\nanswer:` };
  });
}

function writeJsonl(file, rows) {
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
}

/** C3PO-NGD vs none through the eval harness; reference set built (or reused) first, its prefixes cached up front. */
function c3poOverhead(name, modelDir, refData, evalData) {
  const ref = path.join(OUT, `adapt-ref-${name}`);
  log(`${name}: reference build (${refData})`);
  const built = cli(['reference', 'build', '--model', modelDir, '--data', refData, '--out', ref, '--limit', String(refItems)]);
  if (built.kept < 3) log(`${name}: only ${built.kept} reference items kept`);
  log(`${name}: eval --method c3po on ${items} items`);
  const r = cli(['eval', '--model', modelDir, '--data', evalData, '--method', 'c3po', '--reference', ref, '--limit', String(items), '--warm-prefixes']);
  log(`${name}: eval --method c3po --option-loss on ${items} items`);
  const o = cli(['eval', '--model', modelDir, '--data', evalData, '--method', 'c3po', '--reference', ref, '--limit', String(items), '--warm-prefixes', '--option-loss']);
  return {
    reference_items: built.kept,
    prefix_warmup: r.prefix_warmup,
    items: r.completed,
    none_ms: r.mean_ms.none,
    c3po_ms: r.mean_ms.method,
    ratio: r.overhead,
    cpu: r.mean_cpu_ms,
    cpu_ratio: r.cpu_overhead,
    option_loss: { none_ms: o.mean_ms.none, c3po_ms: o.mean_ms.method, ratio: o.overhead, cpu_ratio: o.cpu_overhead },
    target: TARGET_C3PO,
    met: r.overhead <= TARGET_C3PO,
  };
}

/** Wall and process CPU time of one run (CPU time: steadier than wall time when other work shares the cores). */
async function measure(run) {
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  await run();
  const c = process.cpuUsage(c0);
  return { ms: performance.now() - t0, cpu_ms: (c.user + c.system) / 1000 };
}

/** Loss + router gradients of every MoE layer vs a forward over the same tokens (logits of every position, and of
 *  the last one), best of `repeat` interleaved runs. */
async function gradOverhead(modelDir) {
  const addon = require(path.join(ROOT, 'build', 'Release', 'routescope.node'));
  const model = addon.loadModel(modelDir, { threads });
  try {
    const info = model.info();
    const T = Math.min(gradTokens, info.maxPositionEmbeddings);
    const tokens = Int32Array.from({ length: T }, (_, i) => 3 + ((i * 7) % 48));
    const session = model.createSession();
    await session.grad(tokens.slice(0, 8), { layers: info.moeLayers }); // warm-up
    const best = { forward_all_ms: Infinity, forward_last_ms: Infinity, grad_ms: Infinity };
    const cpu = { forward_all_ms: Infinity, forward_last_ms: Infinity, grad_ms: Infinity };
    const timed = async (key, run) => {
      const t = await measure(run);
      best[key] = Math.min(best[key], t.ms);
      cpu[key] = Math.min(cpu[key], t.cpu_ms);
    };
    for (let r = 0; r < repeat; r++) {
      await timed('forward_all_ms', async () => { session.reset(); await session.forward(tokens, { logits: 'all' }); });
      await timed('grad_ms', () => session.grad(tokens, { layers: info.moeLayers }));
      await timed('forward_last_ms', async () => { session.reset(); await session.forward(tokens, { logits: 'last' }); });
    }
    session.reset();
    const ratio = best.grad_ms / best.forward_all_ms;
    return {
      tokens: T,
      layers: info.moeLayers.length,
      ...best,
      ratio,
      ratio_vs_last: best.grad_ms / best.forward_last_ms,
      cpu,
      cpu_ratio: cpu.grad_ms / cpu.forward_all_ms,
      target: TARGET_GRAD,
      met: ratio <= TARGET_GRAD,
    };
  } finally {
    model.close();
  }
}

/** Plain greedy generation vs generation with continuous rerouting (defaults: exact semantics; and the loss over
 *  the tokens since the last round), same prompt, same length, best of `repeat` interleaved runs each. */
async function rerouteOverhead(modelDir, prompt) {
  const addon = require(path.join(ROOT, 'build', 'Release', 'routescope.node'));
  const model = addon.loadModel(modelDir, { threads });
  try {
    const info = model.info();
    const n = Math.min(genTokens, info.maxPositionEmbeddings - prompt.length);
    const base = { maxNewTokens: n, temperature: 0, topP: 1, seed: 0, stopTokens: [] };
    const reroute = { interval: 128, steps: 5, lr: 0.05, optimizer: 'adam', layerFraction: 0.5, leastConfidentFirst: true };
    const session = model.createSession();
    await session.generate(Int32Array.from(prompt.slice(0, 4)), { ...base, maxNewTokens: 2 }); // warm-up
    session.reset();
    const best = { plain_ms: Infinity, reroute_ms: Infinity, recent_ms: Infinity };
    const cpu = { plain_ms: Infinity, reroute_ms: Infinity, recent_ms: Infinity };
    const keep = (key, t) => {
      best[key] = Math.min(best[key], t.ms);
      cpu[key] = Math.min(cpu[key], t.cpu_ms);
    };
    let rounds = 0;
    let newTokens = 0;
    let reroutedTokens = 0;
    for (let r = 0; r < repeat; r++) {
      keep('plain_ms', await measure(async () => (newTokens = (await session.generate(Int32Array.from(prompt), base)).tokens.length)));
      session.reset();
      rounds = 0;
      keep('reroute_ms', await measure(async () => {
        reroutedTokens = (await session.generateRerouted(Int32Array.from(prompt), { ...base, onRound: () => rounds++, reroute })).tokens.length;
      }));
      keep('recent_ms', await measure(() => session.generateRerouted(Int32Array.from(prompt), { ...base, reroute: { ...reroute, sinceLastRound: true } })));
    }
    const ratio = best.reroute_ms / best.plain_ms;
    const recent = best.recent_ms / best.plain_ms;
    return {
      prompt_tokens: prompt.length,
      new_tokens: newTokens,
      rerouted_tokens: reroutedTokens,
      rounds,
      ...best,
      ratio,
      ratio_since_last_round: recent,
      cpu,
      cpu_ratio: cpu.reroute_ms / cpu.plain_ms,
      cpu_ratio_since_last_round: cpu.recent_ms / cpu.plain_ms,
      target: TARGET_REROUTE,
      met: ratio <= TARGET_REROUTE,
      met_since_last_round: recent <= TARGET_REROUTE,
    };
  } finally {
    model.close();
  }
}

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  const results = { date: new Date().toISOString(), threads, repeat, loadavg_before: os.loadavg(), grad: {}, c3po: {}, reroute: {} };
  const synthetic = path.join(OUT, 'adapt-synthetic');
  fs.mkdirSync(synthetic, { recursive: true });
  writeJsonl(path.join(synthetic, 'reference.jsonl'), syntheticItems(refItems, 0));
  writeJsonl(path.join(synthetic, 'eval.jsonl'), syntheticItems(items, 10000));

  if (!values['skip-demo']) {
    if (fs.existsSync(path.join(DEMO, 'config.json'))) {
      log(`demo: router-gradient pass vs forward (${gradTokens} tokens)`);
      results.grad.demo = await gradOverhead(DEMO);
      results.c3po.demo = c3poOverhead('demo', DEMO, path.join(TASKS, 'reference.jsonl'), path.join(TASKS, 'eval.jsonl'));
      const prompt = cli(['generate', '--model', DEMO, '--prompt', 'Q: What is 18 + 702?\nA:', '--max-new-tokens', '1']).prompt_tokens;
      log('demo: rerouting vs plain generation');
      results.reroute.demo = await rerouteOverhead(DEMO, prompt);
    } else {
      log(`demo model not found (${DEMO}): skipped`);
    }
  }
  if (!values['skip-olmoe']) {
    const layers = Number(values.layers);
    const ck = ensureCheckpoint(path.join(OUT, `olmoe-shaped-L${layers}`), layers, CHECKPOINT_SEED, log);
    // The same weights with a tokenizer, so the task format (and the harness) can run on it.
    const dir = path.join(OUT, `olmoe-shaped-L${layers}-tok`);
    fs.mkdirSync(dir, { recursive: true });
    for (const f of ['config.json', 'generation_config.json', 'model.safetensors']) {
      const link = path.join(dir, f);
      fs.rmSync(link, { force: true });
      fs.symlinkSync(path.join(ck.dir, f), link);
    }
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(charTokenizer()));
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>' }));
    const name = `olmoe-shaped-L${layers}`;
    log(`${name}: router-gradient pass vs forward (${gradTokens} tokens)`);
    results.grad[name] = await gradOverhead(dir);
    results.c3po[name] = c3poOverhead(name, dir, path.join(synthetic, 'reference.jsonl'), path.join(synthetic, 'eval.jsonl'));
    log(`${name}: rerouting vs plain generation`);
    const prompt = Array.from({ length: 32 }, (_, i) => 3 + ((i * 7) % 48));
    results.reroute[name] = await rerouteOverhead(dir, prompt);
  }
  results.loadavg_after = os.loadavg();
  fs.writeFileSync(path.join(OUT, 'adapt-results.json'), JSON.stringify(results, null, 2) + '\n');
  if (values.json) {
    process.stdout.write(JSON.stringify(results) + '\n');
    return;
  }
  const x = (r) => `${r.toFixed(2)}×`;
  const lines = ['', 'Test-time adaptation costs (both sides of each ratio from the same run)', ''];
  lines.push(`| model | tokens | loss + router gradients ms | forward (all logits) ms | ratio | target ≤${TARGET_GRAD}× | CPU-time ratio | forward (last logits) ms | ratio |`);
  lines.push('|---|---|---|---|---|---|---|---|---|');
  for (const [m, r] of Object.entries(results.grad))
    lines.push(`| ${m} | ${r.tokens} | ${r.grad_ms.toFixed(1)} | ${r.forward_all_ms.toFixed(1)} | ${x(r.ratio)} | ${r.met ? 'met' : 'MISSED'} | ${x(r.cpu_ratio)} | ${r.forward_last_ms.toFixed(1)} | ${x(r.ratio_vs_last)} |`);
  lines.push('');
  lines.push(`| model | C3PO-NGD ms/item | plain ms/item | ratio | target ≤${TARGET_C3PO}× | CPU-time ratio | with --option-loss (CPU) | prefixes cached first |`);
  lines.push('|---|---|---|---|---|---|---|---|');
  for (const [m, r] of Object.entries(results.c3po))
    lines.push(`| ${m} | ${r.c3po_ms.toFixed(1)} | ${r.none_ms.toFixed(1)} | ${x(r.ratio)} | ${r.met ? 'met' : 'MISSED'} | ${x(r.cpu_ratio)} | ${x(r.option_loss.ratio)} (${x(r.option_loss.cpu_ratio)}) | ${r.prefix_warmup ? `${r.prefix_warmup.prefixes} in ${r.prefix_warmup.seconds.toFixed(1)} s` : ''} |`);
  lines.push('');
  lines.push(`| model | tokens | rounds | rerouted ms | plain ms | ratio (exact) | target ≤${TARGET_REROUTE}× | CPU-time ratio | since-last-round ms | ratio (CPU) |`);
  lines.push('|---|---|---|---|---|---|---|---|---|---|');
  for (const [m, r] of Object.entries(results.reroute))
    lines.push(`| ${m} | ${r.new_tokens} | ${r.rounds} | ${r.reroute_ms.toFixed(0)} | ${r.plain_ms.toFixed(0)} | ${x(r.ratio)} | ${r.met ? 'met' : 'MISSED'} | ${x(r.cpu_ratio)} | ${r.recent_ms.toFixed(0)} | ${x(r.ratio_since_last_round)} (${x(r.cpu_ratio_since_last_round)}) |`);
  const busy = Math.max(...results.loadavg_before, ...results.loadavg_after) > os.availableParallelism();
  if (busy) lines.push('', `note: the machine was busy (load average up to ${Math.max(...results.loadavg_after).toFixed(2)} on ${os.availableParallelism()} CPUs); ratios are steadier than absolute times`);
  lines.push('', `written: ${path.relative(ROOT, path.join(OUT, 'adapt-results.json'))}`);
  process.stdout.write(lines.join('\n') + '\n');
}

main().catch((error) => {
  process.stderr.write(`bench/adapt: ${error.message}\n`);
  process.exit(1);
});
