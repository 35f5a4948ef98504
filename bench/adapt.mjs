#!/usr/bin/env node
// Test-time adaptation overhead (issue 5 targets: C3PO-NGD <= 2x plain inference per test item; continuous
// rerouting <= 1.3x plain generation). Runs after the throughput bench in `npm run bench`, or alone:
//
//   node bench/adapt.mjs [--layers 2] [--threads T] [--items 20] [--reference-items 60] [--gen-tokens 256] [--json]
//
// C3PO: the real pipeline of `routescope eval --method c3po` (forward for ω, self-embedding, neighbours, NGD with
//   k=3, 10 steps against cached neighbour prefixes, the patched forward that scores the answer) against method
//   none (one forward), both measured in the same run by the harness, per test item:
//   - on the demo model (media/demo-model, its task suite) when it is there;
//   - on the OLMoE-shaped random checkpoint of bench/checkpoint.mjs (--layers layers; a character-level tokenizer
//     is added so that the task format works; answers are meaningless, only the time counts).
// Rerouting: Session.generate vs Session.generateRerouted (defaults: a round after prefill then every 128 tokens,
//   5 Adam steps) for --gen-tokens greedy tokens from the same prompt, on both models.
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
    'skip-demo': { type: 'boolean', default: false },
    'skip-olmoe': { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
});
const threads = Number(values.threads);
const items = Number(values.items);
const refItems = Number(values['reference-items']);
const genTokens = Number(values['gen-tokens']);
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

/** C3PO-NGD vs none through the eval harness; reference set built (or reused) first. */
function c3poOverhead(name, modelDir, refData, evalData) {
  const ref = path.join(OUT, `adapt-ref-${name}`);
  log(`${name}: reference build (${refData})`);
  const built = cli(['reference', 'build', '--model', modelDir, '--data', refData, '--out', ref, '--limit', String(refItems)]);
  if (built.kept < 3) log(`${name}: only ${built.kept} reference items kept`);
  log(`${name}: eval --method c3po on ${items} items`);
  const r = cli(['eval', '--model', modelDir, '--data', evalData, '--method', 'c3po', '--reference', ref, '--limit', String(items)]);
  return { reference_items: built.kept, items: r.completed, none_ms: r.mean_ms.none, c3po_ms: r.mean_ms.method, ratio: r.overhead, target: TARGET_C3PO, met: r.overhead <= TARGET_C3PO };
}

/** Plain greedy generation vs generation with continuous rerouting (defaults), same prompt, same length. */
async function rerouteOverhead(modelDir, prompt) {
  const addon = require(path.join(ROOT, 'build', 'Release', 'routescope.node'));
  const model = addon.loadModel(modelDir, { threads });
  try {
    const info = model.info();
    const n = Math.min(genTokens, info.maxPositionEmbeddings - prompt.length);
    const base = { maxNewTokens: n, temperature: 0, topP: 1, seed: 0, stopTokens: [] };
    const session = model.createSession();
    await session.generate(Int32Array.from(prompt.slice(0, 4)), { ...base, maxNewTokens: 2 }); // warm-up
    session.reset();
    let t0 = performance.now();
    const plain = await session.generate(Int32Array.from(prompt), base);
    const plainMs = performance.now() - t0;
    session.reset();
    let rounds = 0;
    t0 = performance.now();
    const rr = await session.generateRerouted(Int32Array.from(prompt), {
      ...base,
      onRound: () => rounds++,
      reroute: { interval: 128, steps: 5, lr: 0.05, optimizer: 'adam', layerFraction: 1, leastConfidentFirst: true },
    });
    const rerouteMs = performance.now() - t0;
    const ratio = rerouteMs / plainMs;
    return { prompt_tokens: prompt.length, new_tokens: plain.tokens.length, rerouted_tokens: rr.tokens.length, rounds, plain_ms: plainMs, reroute_ms: rerouteMs, ratio, target: TARGET_REROUTE, met: ratio <= TARGET_REROUTE };
  } finally {
    model.close();
  }
}

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  const results = { date: new Date().toISOString(), threads, loadavg_before: os.loadavg(), c3po: {}, reroute: {} };
  const synthetic = path.join(OUT, 'adapt-synthetic');
  fs.mkdirSync(synthetic, { recursive: true });
  writeJsonl(path.join(synthetic, 'reference.jsonl'), syntheticItems(refItems, 0));
  writeJsonl(path.join(synthetic, 'eval.jsonl'), syntheticItems(items, 10000));

  if (!values['skip-demo']) {
    if (fs.existsSync(path.join(DEMO, 'config.json'))) {
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
  const lines = ['', 'Test-time adaptation overhead (per test item / per generation, same run)', ''];
  lines.push('| model | C3PO-NGD ms/item | plain ms/item | ratio | target ≤2× |');
  lines.push('|---|---|---|---|---|');
  for (const [m, r] of Object.entries(results.c3po)) lines.push(`| ${m} | ${r.c3po_ms.toFixed(1)} | ${r.none_ms.toFixed(1)} | ${r.ratio.toFixed(2)}× | ${r.met ? 'met' : 'MISSED'} |`);
  lines.push('');
  lines.push('| model | tokens | rounds | rerouted ms | plain ms | ratio | target ≤1.3× |');
  lines.push('|---|---|---|---|---|---|---|');
  for (const [m, r] of Object.entries(results.reroute)) lines.push(`| ${m} | ${r.new_tokens} | ${r.rounds} | ${r.reroute_ms.toFixed(0)} | ${r.plain_ms.toFixed(0)} | ${r.ratio.toFixed(2)}× | ${r.met ? 'met' : 'MISSED'} |`);
  const busy = Math.max(...results.loadavg_before, ...results.loadavg_after) > os.availableParallelism();
  if (busy) lines.push('', `note: the machine was busy (load average up to ${Math.max(...results.loadavg_after).toFixed(2)} on ${os.availableParallelism()} CPUs); ratios are steadier than absolute times`);
  lines.push('', `written: ${path.relative(ROOT, path.join(OUT, 'adapt-results.json'))}`);
  process.stdout.write(lines.join('\n') + '\n');
}

main().catch((error) => {
  process.stderr.write(`bench/adapt: ${error.message}\n`);
  process.exit(1);
});
