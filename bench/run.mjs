#!/usr/bin/env node
// `npm run bench`: Routescope against llama.cpp (and, on request, PyTorch eager) on an OLMoE-shaped checkpoint with
// random bf16 weights.
//
//   npm run bench -- [--layers 2] [--prompt-tokens 512] [--long-prompt-tokens 4096] [--decode-tokens 32]
//                    [--repeat 3] [--threads T] [--peers llama,torch] [--json]
//
// 1. writes bench/out/olmoe-shaped-L<layers>/ (once; reused while its stamp matches),
// 2. installs the llama.cpp peer into bench/peers/ (node-llama-cpp's prebuilt CPU binaries; once) and writes the
//    checkpoint as GGUF files in llama.cpp's `olmoe` layout (BF16, and Q8_0 for reference; once),
// 3. checks that llama.cpp runs the same model: last-position logits of a few prompts against `routescope inspect`,
// 4. measures the memory read bandwidth (build/rs_bench --bandwidth; again after step 5, the better of the two),
// 5. times prefill (two lengths) and batch-1 decode of every engine, interleaved round by round, best of --repeat,
// 6. optionally runs the PyTorch eager peer (bench/peer_torch.py) with its own cross-check,
// 7. repeats 2, 3 and 5 against llama.cpp BF16 on the --also-shapes checkpoints (DeepSeek-V2-Lite- and gpt-oss-20b-
//    shaped: GGUFs in llama.cpp's deepseek2 / gpt-oss layouts), timing llama.cpp only where the check passes,
// 8. prints the table and writes bench/out/results.json.
// Benchmarks report, they do not assert: missed targets never fail the run; real errors do.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { SHAPES, activeDecodeBytes, ensureCheckpoint, textConfig } from './checkpoint.mjs';
import { ensureGguf, ggufArchitecture } from './gguf.mjs';
import { PEERS_DIR, llamaPeerBuild, llamaPeerMissing, randomTokens } from './peer_llama.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(ROOT, 'bench', 'out');
const RS_BENCH = path.join(ROOT, 'build', process.platform === 'win32' ? 'rs_bench.exe' : 'rs_bench');
const CLI = path.join(ROOT, 'bin', 'routescope.js');
const CLI_BUNDLE = path.join(ROOT, 'dist', 'cli.js');
const PEER_TORCH = path.join(ROOT, 'bench', 'peer_torch.py');
const PEER_LLAMA = path.join(ROOT, 'bench', 'peer_llama.mjs');
const TARGET_TORCH_RATIO = 3;
const TARGET_LLAMA_BF16_RATIO = 1.2; // prefill (both lengths) and decode
const TARGET_LLAMA_Q8_DECODE_RATIO = 1.0;
const TARGET_BOUND_FRACTION = 0.8;
const CHECKPOINT_SEED = 20240901;
const CHECK_PROMPT_LENGTHS = [16, 61, 200];
// The engine's routed-expert kernel families (ROUTESCOPE_EXPERT_KERNELS, native/src/cpu/moe_experts.h).
const EXPERT_KERNELS = ['auto', 'generic', 'avx512', 'avx512_bf16', 'avx512_bf16_rounded'];

const ACTIVATIONS = ['fp32', 'bf16'];

/** The environment of a timed engine run: the expert kernels pinned unless auto. */
function engineEnv(opts) {
  const env = { ...process.env };
  if (opts.expertKernels === 'auto') delete env.ROUTESCOPE_EXPERT_KERNELS;
  else env.ROUTESCOPE_EXPERT_KERNELS = opts.expertKernels;
  return env;
}

/** The table's name for the engine at this activation precision and KV cache (and pinned expert kernels, if any). */
function engineLabel(activations, opts) {
  const kernels = opts.expertKernels === 'auto' ? '' : `, experts ${opts.expertKernels}`;
  const kv = kvCacheFor(activations, opts);
  return `Routescope (${activations} activations${kv === 'fp32' ? '' : `, ${kv} KV cache`}${kernels})`;
}

/** The KV cache of the row at these activations: --kv-cache auto follows them (bf16 activations with a bf16 cache
 *  is llama.cpp's own precision: its BF16 matmul rounds activations to bf16 and its KV cache is F16). */
function kvCacheFor(activations, opts) {
  return opts.kvCache === 'auto' ? activations : opts.kvCache;
}

/** Both precisions where the CPU runs bf16 activations (AVX512_BF16), else fp32 alone. */
function defaultActivations() {
  try {
    if (/^flags\s*:.*\bavx512_bf16\b/m.test(fs.readFileSync('/proc/cpuinfo', 'utf8'))) return 'fp32,bf16';
  } catch {
    // not Linux: fp32 only
  }
  return 'fp32';
}

class BenchError extends Error {}

function usage() {
  return `usage: npm run bench -- [--layers N] [--prompt-tokens N] [--long-prompt-tokens N] [--decode-tokens M]
                        [--repeat R] [--threads T] [--peers LIST] [--llama-types LIST] [--check-tokens K] [--seed S]
                        [--python PATH] [--engine auto|cli|rs_bench] [--activations LIST] [--kv-cache auto|fp32|bf16] [--expert-kernels K] [--skip-peer] [--skip-adapt]
                        [--json]
  --layers              layers in the random checkpoint (default 2)
  --shape               olmoe (OLMoE-1B-7B, default), deepseek-v2-lite, moonlight, gpt-oss-20b or llama4-scout (their
                        config.json, layers shrunk); the PyTorch peer and the adaptation overhead run on olmoe only
  --also-shapes         after the olmoe comparison, these shapes (same layers, prompt, decode and long-prefill lengths):
                        each written as GGUF too where the writer knows the architecture, checked against llama.cpp
                        BF16 (same-model check) and timed against it interleaved, and against their bandwidth bound
                        (default deepseek-v2-lite,gpt-oss-20b; none = skip)
  --prompt-tokens       prefill length of the main comparison (default 512); decode follows this prefill
  --long-prompt-tokens  a second, long prefill timed on its own (default 4096, at most max_position_embeddings;
                        0 = skip)
  --decode-tokens       single-token decode steps (default 32)
  --repeat              measurement rounds; every engine runs once per round, interleaved, and its best prefill
                        and best decode count (default 3)
  --threads             threads for every engine and the bandwidth probe (default: all cores, ${os.availableParallelism()})
  --peers               comma-separated peers: llama (llama.cpp through node-llama-cpp, installed into bench/peers/),
                        torch (PyTorch eager, bench/peer_torch.py); default llama; none = engine figures only
  --llama-types         GGUF types of the llama.cpp peer (default bf16,q8_0)
  --activations         comma-separated activation precisions, each timed as its own engine row in the same rounds
                        against the same peer runs: fp32 (the default of the product, held to transformers by the
                        parity tests) and bf16 (prefill activations rounded to bf16 as llama.cpp's BF16 matmul does;
                        --activations of the CLI). Default: fp32,bf16 on CPUs with AVX512_BF16, else fp32
  --kv-cache            KV cache of the engine rows: auto (default: each row's as its activations, so the bf16 row is
                        at llama.cpp's own precision, whose KV cache is F16), fp32 or bf16 for every row
  --expert-kernels      pin the routed-expert kernels of every engine run (ROUTESCOPE_EXPERT_KERNELS, for A/B
                        measurements): auto (default), avx512_bf16_rounded, avx512_bf16, avx512 or generic
  --check-tokens        length of the PyTorch cross-check prompt (default 16, 0 = skip)
  --seed                seed of the random prompt tokens (default 0)
  --python              interpreter with torch (default $ROUTESCOPE_PYTHON or /usr/bin/python3)
  --engine              how to run the engine: the CLI's bench (cli), build/rs_bench, or auto (default: the CLI when it is
                        built, rs_bench when it is not or fails)
  --skip-peer           same as --peers none
  --skip-adapt          leave out the test-time adaptation overhead (bench/adapt.mjs: C3PO-NGD and rerouting vs plain),
                        which otherwise runs afterwards on the demo model and this checkpoint (with --json: a second line)
  --json                print results.json to stdout instead of the table (progress still goes to stderr)
`;
}

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      layers: { type: 'string', default: '2' },
      shape: { type: 'string', default: 'olmoe' },
      'also-shapes': { type: 'string', default: 'deepseek-v2-lite,gpt-oss-20b' },
      'prompt-tokens': { type: 'string', default: '512' },
      'long-prompt-tokens': { type: 'string', default: '4096' },
      'decode-tokens': { type: 'string', default: '32' },
      threads: { type: 'string' },
      'check-tokens': { type: 'string', default: '16' },
      seed: { type: 'string', default: '0' },
      repeat: { type: 'string', default: '3' },
      python: { type: 'string' },
      engine: { type: 'string', default: 'auto' },
      peers: { type: 'string', default: 'llama' },
      'llama-types': { type: 'string', default: 'bf16,q8_0' },
      activations: { type: 'string', default: defaultActivations() },
      'kv-cache': { type: 'string', default: 'auto' },
      'expert-kernels': { type: 'string', default: process.env.ROUTESCOPE_EXPERT_KERNELS ?? 'auto' },
      'skip-peer': { type: 'boolean', default: false },
      'skip-adapt': { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  const int = (flag, text, min) => {
    if (!/^\d+$/.test(text) || Number(text) < min) throw new BenchError(`--${flag} must be an integer >= ${min}, got ${JSON.stringify(text)}`);
    return Number(text);
  };
  const list = (flag, text, allowed) => {
    const items = text.split(',').map((s) => s.trim()).filter(Boolean);
    for (const i of items) if (!allowed.includes(i)) throw new BenchError(`--${flag}: unknown ${JSON.stringify(i)} (one of ${allowed.join(', ')})`);
    return [...new Set(items)];
  };
  let peers = list('peers', values.peers, ['llama', 'torch', 'none']);
  if (values['skip-peer'] || peers.includes('none')) peers = [];
  if (!Object.keys(SHAPES).includes(values.shape)) throw new BenchError(`--shape must be one of ${Object.keys(SHAPES).join(', ')}, got ${JSON.stringify(values.shape)}`);
  if (values.shape !== 'olmoe') peers = peers.filter((p) => p === 'llama');  // the PyTorch peer implements OLMoE only
  if (!EXPERT_KERNELS.includes(values['expert-kernels'])) throw new BenchError(`--expert-kernels must be one of ${EXPERT_KERNELS.join(', ')}, got ${JSON.stringify(values['expert-kernels'])}`);
  const activations = list('activations', values.activations, ACTIVATIONS);
  if (activations.length === 0) throw new BenchError(`--activations needs at least one of ${ACTIVATIONS.join(', ')}`);
  let alsoShapes = list('also-shapes', values['also-shapes'], [...Object.keys(SHAPES), 'none']);
  if (alsoShapes.includes('none') || values.shape !== 'olmoe') alsoShapes = [];
  if (!['auto', 'fp32', 'bf16'].includes(values['kv-cache'])) throw new BenchError(`--kv-cache must be auto, fp32 or bf16, got ${JSON.stringify(values['kv-cache'])}`);
  if (!['auto', 'cli', 'rs_bench'].includes(values.engine)) throw new BenchError(`--engine must be auto, cli or rs_bench, got ${JSON.stringify(values.engine)}`);
  return {
    help: values.help,
    layers: int('layers', values.layers, 1),
    shape: values.shape,
    alsoShapes,
    promptTokens: int('prompt-tokens', values['prompt-tokens'], 1),
    longPromptTokens: int('long-prompt-tokens', values['long-prompt-tokens'], 0),
    decodeTokens: int('decode-tokens', values['decode-tokens'], 1),
    threads: values.threads === undefined ? os.availableParallelism() : int('threads', values.threads, 1),
    checkTokens: int('check-tokens', values['check-tokens'], 0),
    seed: int('seed', values.seed, 0),
    repeat: int('repeat', values.repeat, 1),
    python: values.python ?? process.env.ROUTESCOPE_PYTHON ?? '/usr/bin/python3',
    engine: values.engine,
    peers,
    llamaTypes: list('llama-types', values['llama-types'], ['bf16', 'q8_0']),
    expertKernels: values['expert-kernels'],
    activations,
    kvCache: values['kv-cache'],
    skipAdapt: values['skip-adapt'] || values.shape !== 'olmoe',
    json: values.json,
  };
}

const log = (line) => process.stderr.write(`[bench] ${line}\n`);

/** An engine row (one per activation precision: routescope, routescope_<precision>), not a peer. */
const isEngine = (e) => e.id.startsWith('routescope');

/** Runs a command; returns {ok, stdout, stderr, status, error, seconds}. */
function run(cmd, args, options = {}) {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, {
    cwd: ROOT,
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
    stdio: ['ignore', 'pipe', 'pipe'],
    ...options,
  });
  const seconds = (performance.now() - t0) / 1000;
  const ok = !r.error && r.status === 0;
  return { ok, stdout: r.stdout ?? '', stderr: r.stderr ?? '', status: r.status, signal: r.signal, error: r.error, seconds };
}

function describeFailure(r) {
  if (r.error) return r.error.message;
  const tail = r.stderr.trim().split('\n').slice(-3).join(' | ') || r.stdout.trim().split('\n').slice(-1)[0] || '';
  return `${r.signal ? `killed by ${r.signal}` : `exit ${r.status}`}${tail ? `: ${tail}` : ''}`;
}

/** The last line of stdout that parses as a JSON object. */
function lastJson(stdout) {
  const lines = stdout.trim().split('\n').reverse();
  for (const line of lines) {
    const t = line.trim();
    if (!t.startsWith('{')) continue;
    try {
      return JSON.parse(t);
    } catch {
      // keep looking
    }
  }
  return null;
}

function cpuModel() {
  try {
    const text = fs.readFileSync('/proc/cpuinfo', 'utf8');
    const field = (name) => new RegExp(`^${name}\\s*:\\s*(.+)$`, 'm').exec(text)?.[1]?.trim();
    const flags = field('flags')?.split(/\s+/) ?? [];
    const ofNote = ['avx2', 'fma', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_bf16'].filter((f) => flags.includes(f));
    const family = field('cpu family');
    return { model: field('model name') ?? os.cpus()[0]?.model ?? 'unknown', family: family ? Number(family) : null, model_number: field('model') ? Number(field('model')) : null, flags: ofNote };
  } catch {
    return { model: os.cpus()[0]?.model ?? 'unknown', family: null, model_number: null, flags: [] };
  }
}

const best = (xs) => {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x));
  return v.length ? Math.max(...v) : null;
};

// ---- steps ---------------------------------------------------------------------------------------------------

function measureBandwidth(threads, seconds) {
  if (!fs.existsSync(RS_BENCH)) return { error: `${path.relative(ROOT, RS_BENCH)} is missing (run npm install / npx cmake-js compile --out build)` };
  const r = run(RS_BENCH, ['--bandwidth', '--threads', String(threads), '--probe-seconds', String(seconds)]);
  const j = r.ok ? lastJson(r.stdout) : null;
  if (!j || typeof j.read_bandwidth_gbps !== 'number' || typeof j.sustained_gbps !== 'number') return { error: `rs_bench --bandwidth failed: ${describeFailure(r)}` };
  return { read_bandwidth_gbps: j.read_bandwidth_gbps, sustained_gbps: j.sustained_gbps, threads: j.threads };
}

/**
 * The read-bandwidth probe at the start of every round and once after the last: the decode bound is the best rate
 * sustained over about as long as a decode run of these samples, as each engine's decode is its best round;
 * the best single ~20 ms pass is kept beside it. On a shared host bandwidth moves from minute to minute, so a
 * probe only before and after the rounds can miss the moments the rounds ran in.
 */
function bandwidthSeries(threads, decodeTokens) {
  // About as long as one decode run (≈ 100 tokens/s on the OLMoE shape here), within [0.3, 2] s.
  const seconds = Math.min(2, Math.max(0.3, decodeTokens / 100));
  const samples = [];
  let error = null;
  const probe = () => {
    if (error) return;
    log(`measuring memory read bandwidth (${threads} threads) ...`);
    const b = measureBandwidth(threads, seconds);
    if (b.error) error = b.error;
    else {
      samples.push(b);
      log(`  ${fmt(b.sustained_gbps, 1)} GB/s sustained over ${fmt(seconds, 2)} s, best pass ${fmt(b.read_bandwidth_gbps, 1)} GB/s`);
    }
  };
  const summary = () => (error || !samples.length
    ? { error: error ?? 'no sample' }
    : {
        sustained_gbps: Math.max(...samples.map((b) => b.sustained_gbps)),
        best_pass_gbps: Math.max(...samples.map((b) => b.read_bandwidth_gbps)),
        samples_sustained_gbps: samples.map((b) => b.sustained_gbps),
        samples_best_pass_gbps: samples.map((b) => b.read_bandwidth_gbps),
        threads,
        sustained_seconds: seconds,
      });
  return { probe, summary };
}

function cliAvailable() {
  if (!fs.existsSync(CLI)) return `${path.relative(ROOT, CLI)} is missing`;
  if (!fs.existsSync(CLI_BUNDLE)) return `${path.relative(ROOT, CLI_BUNDLE)} is missing (the CLI is not built: npm run build:ts)`;
  return null;
}

function engineViaCli(dir, opts, activations, promptTokens, decodeTokens) {
  const r = run(process.execPath, [
    CLI, 'bench', '--model', dir,
    '--prompt-tokens', String(promptTokens), '--decode-tokens', String(decodeTokens),
    '--threads', String(opts.threads), '--activations', activations, '--kv-cache', kvCacheFor(activations, opts), '--json',
  ], { env: engineEnv(opts) });
  if (!r.ok) return { error: `routescope bench failed: ${describeFailure(r)}` };
  const j = lastJson(r.stdout);
  if (!j || typeof j.prefill_tokens_per_s !== 'number') {
    return { error: `routescope bench --json printed no prefill_tokens_per_s: ${r.stdout.slice(0, 200)}` };
  }
  return {
    via: 'cli',
    activations_used: j.model?.activations ?? null,
    kv_cache_used: j.model?.kv_cache ?? j.kv_cache ?? null,
    weights_used: j.model?.weights ?? null,
    prefill_tokens_per_s: j.prefill_tokens_per_s,
    decode_tokens_per_s: decodeTokens > 0 ? j.decode_tokens_per_s : null,
    prefill_cpu_seconds: j.prefill_cpu_seconds ?? null,
    decode_cpu_seconds: decodeTokens > 0 ? j.decode_cpu_seconds ?? null : null,
    peak_rss_bytes: typeof j.peak_rss_bytes === 'number' ? j.peak_rss_bytes : null,
    threads: j.model?.threads ?? opts.threads,
    backend: j.model?.backend ?? null,
    wall_seconds: r.seconds,
  };
}

function engineViaRsBench(dir, opts, activations, promptTokens, decodeTokens) {
  if (!fs.existsSync(RS_BENCH)) return { error: `${path.relative(ROOT, RS_BENCH)} is missing` };
  const r = run(RS_BENCH, [
    '--model', dir, '--prompt-tokens', String(promptTokens), '--decode-tokens', String(Math.max(decodeTokens, 1)),
    '--threads', String(opts.threads), '--activations', activations, '--kv-cache', kvCacheFor(activations, opts),
  ], { env: engineEnv(opts) });
  const j = r.ok ? lastJson(r.stdout) : null;
  if (!j || typeof j.prefill_tokens_per_s !== 'number') return { error: `rs_bench failed: ${describeFailure(r)}` };
  return {
    via: 'rs_bench',
    activations_used: j.activations ?? null,
    kv_cache_used: j.kv_cache ?? null,
    weights_used: j.weights ?? null,
    prefill_tokens_per_s: j.prefill_tokens_per_s,
    decode_tokens_per_s: decodeTokens > 0 ? j.decode_tokens_per_s : null,
    prefill_cpu_seconds: j.prefill_cpu_seconds ?? null,
    decode_cpu_seconds: decodeTokens > 0 ? j.decode_cpu_seconds ?? null : null,
    peak_rss_bytes: typeof j.peak_rss_mb === 'number' ? Math.round(j.peak_rss_mb * 1024 * 1024) : null,
    threads: j.threads ?? opts.threads,
    backend: 'cpu',
    wall_seconds: r.seconds,
  };
}

/** Installs node-llama-cpp into bench/peers/ (offline-safe flags: nothing downloaded or compiled); null when ready. */
function ensureLlamaPeer() {
  if (process.platform !== 'linux' || process.arch !== 'x64') return `the bench installs llama.cpp's prebuilt linux-x64 CPU binaries only (this is ${process.platform}-${process.arch})`;
  if (!llamaPeerMissing()) return null;
  log(`installing the llama.cpp peer (node-llama-cpp) into ${path.relative(ROOT, PEERS_DIR)} ...`);
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  const env = { ...process.env, NODE_LLAMA_CPP_SKIP_DOWNLOAD: 'true' };
  // The parent `npm run` exports npm_config_* for its own package; they must not leak into this install.
  for (const k of Object.keys(env)) if (k.startsWith('npm_')) delete env[k];
  const r = run(npm, ['ci', '--ignore-scripts', '--omit=optional', '--no-audit', '--no-fund'], { cwd: PEERS_DIR, env });
  if (!r.ok) return `npm ci in ${path.relative(ROOT, PEERS_DIR)} failed: ${describeFailure(r)}`;
  return llamaPeerMissing();
}

function llamaTime(gguf, opts, vocab, promptTokens, decodeTokens) {
  const r = run(process.execPath, [
    PEER_LLAMA, '--model', gguf, '--vocab', String(vocab), '--threads', String(opts.threads),
    '--prompt-tokens', String(promptTokens), '--decode-tokens', String(decodeTokens), '--seed', String(opts.seed),
  ]);
  const j = r.ok ? lastJson(r.stdout) : null;
  if (!j || typeof j.prefill_tokens_per_s !== 'number') return { error: `peer_llama.mjs failed: ${describeFailure(r)}` };
  return { ...j, decode_tokens_per_s: decodeTokens > 0 ? j.decode_tokens_per_s : null, wall_seconds: r.seconds };
}

/** Last-position logits of llama.cpp against `routescope inspect` on a few prompts: max |diff| and top-5 agreement,
 *  for each activation precision (the first one is the headline: top5_identical, max_abs_logit_diff). */
function llamaCrossCheck(dir, gguf, opts, vocab, activationsList) {
  const prompts = [];
  const top = (a) => Array.from(a.keys()).sort((x, y) => a[y] - a[x] || x - y).slice(0, 5);
  for (const [i, n] of CHECK_PROMPT_LENGTHS.entries()) {
    const tokens = randomTokens(n, vocab, opts.seed + 101 + i);
    const prefix = path.join(OUT, `llama-check-${path.basename(dir)}-${n}`);
    fs.rmSync(`${prefix}.logits.f32`, { force: true });
    const p = run(process.execPath, [PEER_LLAMA, '--model', gguf, '--vocab', String(vocab), '--threads', String(opts.threads), '--check-tokens', tokens.join(','), '--check-out', prefix]);
    if (!p.ok) return { error: `peer_llama.mjs --check-tokens failed: ${describeFailure(p)}` };
    const buf = fs.readFileSync(`${prefix}.logits.f32`);
    const peer = new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
    const tp = top(Array.from(peer));
    const byActivations = {};
    for (const activations of activationsList) {
      const e = run(process.execPath, [CLI, 'inspect', '--model', dir, '--tokens', tokens.join(','), '--logits', 'last', '--threads', String(opts.threads), '--activations', activations, '--kv-cache', kvCacheFor(activations, opts), '--json']);
      if (!e.ok) return { error: `routescope inspect --activations ${activations} failed: ${describeFailure(e)}` };
      let row;
      try {
        const j = JSON.parse(e.stdout);
        row = j.logits?.[j.logits.length - 1];
      } catch (err) {
        return { error: `routescope inspect --json printed no JSON object: ${err.message}` };
      }
      if (!Array.isArray(row)) return { error: 'routescope inspect --json has no "logits" rows' };
      if (peer.length !== row.length) return { error: `logits length differs: engine ${row.length}, llama.cpp ${peer.length}` };
      let maxAbs = 0;
      let maxRef = 0;
      for (let k = 0; k < row.length; k++) {
        maxAbs = Math.max(maxAbs, Math.abs(row[k] - peer[k]));
        maxRef = Math.max(maxRef, Math.abs(row[k]));
      }
      const te = top(row);
      byActivations[activations] = { max_abs_logit_diff: maxAbs, max_abs_logit: maxRef, top5_engine: te, top5_identical: te.every((t, k) => t === tp[k]) };
    }
    const first = byActivations[activationsList[0]];
    prompts.push({ tokens: n, ...first, top5_llama: tp, by_activations: byActivations });
  }
  const summary = (a) => ({
    max_abs_logit_diff: Math.max(...prompts.map((p) => p.by_activations[a].max_abs_logit_diff)),
    top5_identical: prompts.every((p) => p.by_activations[a].top5_identical),
  });
  return {
    activations: activationsList[0],
    prompts,
    ...summary(activationsList[0]),
    by_activations: Object.fromEntries(activationsList.map((a) => [a, summary(a)])),
  };
}

function torchAvailable(python) {
  const r = run(python, ['-c', 'import torch, numpy; print(torch.__version__)']);
  if (r.ok) return { ok: true, version: r.stdout.trim() };
  return { ok: false, why: r.error ? r.error.message : r.stderr.trim().split('\n').slice(-1)[0] || `exit ${r.status}` };
}

function runTorch(python, dir, opts, checkTokens, checkPrefix) {
  const args = [
    PEER_TORCH, '--model', dir, '--prompt-tokens', String(opts.promptTokens), '--decode-tokens', String(opts.decodeTokens),
    '--threads', String(opts.threads), '--seed', String(opts.seed), '--repeat', String(opts.repeat),
  ];
  if (checkTokens.length > 0) args.push('--check-tokens', checkTokens.join(','), '--check-out', checkPrefix);
  const threads = String(opts.threads);
  const env = { ...process.env, OPENBLAS_NUM_THREADS: threads, OMP_NUM_THREADS: threads, MKL_NUM_THREADS: threads };
  const r = run(python, args, { env });
  const j = r.ok ? lastJson(r.stdout) : null;
  if (!j || typeof j.prefill_tokens_per_s !== 'number') return { error: `peer_torch.py failed: ${describeFailure(r)}` };
  return { ...j, wall_seconds: r.seconds };
}

function torchCrossCheck(dir, opts, tokens, checkPrefix) {
  const r = run(process.execPath, [
    CLI, 'inspect', '--model', dir, '--tokens', tokens.join(','), '--logits', 'last', '--threads', String(opts.threads), '--json',
  ]);
  if (!r.ok) return { error: `routescope inspect failed: ${describeFailure(r)}` };
  let engine;
  try {
    engine = JSON.parse(r.stdout);
  } catch (e) {
    return { error: `routescope inspect --json printed no JSON object: ${e.message}` };
  }
  const row = engine.logits?.[engine.logits.length - 1];
  if (!Array.isArray(row)) return { error: 'routescope inspect --json has no "logits" rows' };
  const buf = fs.readFileSync(`${checkPrefix}.logits.f32`);
  const peer = new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
  if (peer.length !== row.length) return { error: `logits length differs: engine ${row.length}, peer ${peer.length}` };
  let maxAbs = 0;
  let maxRef = 0;
  let argmaxE = 0;
  let argmaxP = 0;
  for (let i = 0; i < row.length; i++) {
    maxAbs = Math.max(maxAbs, Math.abs(row[i] - peer[i]));
    maxRef = Math.max(maxRef, Math.abs(peer[i]));
    if (row[i] > row[argmaxE]) argmaxE = i;
    if (peer[i] > peer[argmaxP]) argmaxP = i;
  }
  // Selected experts, compared as sets per (layer, position).
  const peerExperts = JSON.parse(fs.readFileSync(`${checkPrefix}.experts.json`, 'utf8')).experts;
  let same = 0;
  let total = 0;
  for (const layer of engine.layers ?? []) {
    const p = peerExperts[layer.layer];
    if (!p) continue;
    layer.experts.forEach((sel, pos) => {
      total++;
      const a = [...sel].sort((x, y) => x - y).join(',');
      const b = [...p[pos]].sort((x, y) => x - y).join(',');
      if (a === b) same++;
    });
  }
  return {
    tokens: tokens.length,
    max_abs_logit_diff: maxAbs,
    max_abs_logit: maxRef,
    same_argmax: argmaxE === argmaxP,
    experts_identical: same,
    experts_compared: total,
  };
}

/**
 * Interleaved rounds: per round every engine once (the order rotates) for a promptTokens prefill plus decode, then
 * each once for the long prefill (0 = none). measureOne(e, promptTokens, decodeTokens) -> figures or {error}; runs
 * collect in e.runs. An engine that fails is left out of later rounds (e.error); when Routescope itself fails the
 * rounds stop. Returns the first failure, or null.
 */
function timeRounds(engines, opts, promptTokens, longPromptTokens, measureOne, prefix, beforeRound = () => {}) {
  let failure = null;
  const phases = [[promptTokens, opts.decodeTokens], ...(longPromptTokens > 0 ? [[longPromptTokens, 0]] : [])];
  for (let round = 0; round < opts.repeat; round++) {
    beforeRound(round);
    const order = engines.map((_, i) => engines[(i + round) % engines.length]);
    for (const [prompt, decode] of phases) {
      for (const e of order) {
        if (e.error) continue;
        log(`${prefix}round ${round + 1}/${opts.repeat}: ${e.label}, prefill ${prompt}${decode ? ` + decode ${decode}` : ''} ...`);
        const r = measureOne(e, prompt, decode);
        if (r.error) {
          e.error = r.error;
          failure = failure ?? `${prefix}${e.label}: ${r.error}`;
          if (isEngine(e)) return failure;
          continue;
        }
        e.runs.push({ prompt_tokens: prompt, ...r });
        log(`  prefill ${fmt(r.prefill_tokens_per_s)} tok/s${decode ? `, decode ${fmt(r.decode_tokens_per_s)} tok/s` : ''}`);
      }
    }
  }
  return failure;
}

/** Best-of figures of an engine's runs: tokens/s, tokens per CPU-second and peak RSS of each phase. */
function summarizeRuns(e, promptTokens, decodeTokens, longPromptTokens) {
  const main = e.runs.filter((r) => r.prompt_tokens === promptTokens);
  const long = longPromptTokens > 0 ? e.runs.filter((r) => r.prompt_tokens === longPromptTokens) : [];
  const perCpu = (runs, tokens, key) => best(runs.map((r) => (typeof r[key] === 'number' && r[key] > 0 ? tokens / r[key] : null)));
  e.prefill_tokens_per_cpu_s = perCpu(main, promptTokens, 'prefill_cpu_seconds');
  e.decode_tokens_per_cpu_s = perCpu(main, decodeTokens, 'decode_cpu_seconds');
  e.long_prefill_tokens_per_cpu_s = long.length ? perCpu(long, longPromptTokens, 'prefill_cpu_seconds') : null;
  e.prefill_tokens_per_s = best(main.map((r) => r.prefill_tokens_per_s));
  e.decode_tokens_per_s = best(main.map((r) => r.decode_tokens_per_s));
  e.long_prefill_tokens_per_s = long.length ? best(long.map((r) => r.prefill_tokens_per_s)) : null;
  e.peak_rss_bytes = best(main.map((r) => r.peak_rss_bytes));
  e.long_peak_rss_bytes = long.length ? best(long.map((r) => r.peak_rss_bytes)) : null;
}

const ratio = (a, b) => (typeof a === 'number' && typeof b === 'number' && b > 0 ? a / b : null);

/** Routescope (rs) against one peer e: the tokens/s and per-CPU-second ratios with the targets of issue 15. */
function ratioRow(rs, e) {
  const targetPrefill = e.id === 'llama_bf16' ? TARGET_LLAMA_BF16_RATIO : e.id === 'torch' ? TARGET_TORCH_RATIO : null;
  const targetDecode = e.id === 'llama_bf16' ? TARGET_LLAMA_BF16_RATIO : e.id === 'llama_q8_0' ? TARGET_LLAMA_Q8_DECODE_RATIO : e.id === 'torch' ? TARGET_TORCH_RATIO : null;
  const r = {
    peer: e.id,
    label: `Routescope ÷ ${e.label.replace(/ eager fp32$/, '')}`,
    prefill: ratio(rs.prefill_tokens_per_s, e.prefill_tokens_per_s),
    long_prefill: ratio(rs.long_prefill_tokens_per_s, e.long_prefill_tokens_per_s),
    decode: ratio(rs.decode_tokens_per_s, e.decode_tokens_per_s),
    target_prefill: targetPrefill,
    target_decode: targetDecode,
  };
  r.per_cpu_second = {
    prefill: ratio(rs.prefill_tokens_per_cpu_s, e.prefill_tokens_per_cpu_s),
    long_prefill: ratio(rs.long_prefill_tokens_per_cpu_s, e.long_prefill_tokens_per_cpu_s),
    decode: ratio(rs.decode_tokens_per_cpu_s, e.decode_tokens_per_cpu_s),
  };
  r.prefill_met = targetPrefill ? r.prefill >= targetPrefill : null;
  r.long_prefill_met = targetPrefill && r.long_prefill !== null ? r.long_prefill >= targetPrefill : null;
  r.decode_met = targetDecode ? r.decode >= targetDecode : null;
  return r;
}

// ---- report --------------------------------------------------------------------------------------------------

const fmt = (x, digits = 1) => (typeof x === 'number' && Number.isFinite(x) ? x.toFixed(digits) : '—');
const gb = (bytes) => (typeof bytes === 'number' ? `${(bytes / 1e9).toFixed(2)} GB` : '—');
const pad = (s, n) => String(s).padStart(n);
const padEnd = (s, n) => String(s).padEnd(n);
const ratioCell = (r, target) => (typeof r === 'number' ? `${r.toFixed(2)}x${target ? (r >= target ? ' ok' : ' NO') : ''}` : '—');

function table(res) {
  const lines = [];
  const c = res.config;
  const long = res.long_prompt_tokens;
  lines.push(
    `Routescope bench: ${res.shape}-shaped (hidden ${c.hidden_size}, ${c.num_experts ?? c.n_routed_experts ?? c.num_local_experts} experts top-${c.num_experts_per_tok}, expert width ${c.moe_intermediate_size ?? c.intermediate_size}, vocab ${c.vocab_size}), ${c.num_hidden_layers} layers, random bf16 weights (${gb(res.checkpoint.file_bytes)})`,
  );
  lines.push(`prefill ${res.prompt_tokens}${long ? ` and ${long}` : ''} tokens, batch-1 decode ${res.decode_tokens} tokens; ${res.repeat} interleaved round${res.repeat > 1 ? 's, best of each' : ''}; ${res.threads} threads`);
  const weights = [...new Set(res.engines.filter(isEngine).map((e) => e.weights_used).filter(Boolean))];
  if (weights.length) lines.push(`Routescope's weights: ${weights.join(', ')} (the engine's default, weights auto: read into memory when the files take at most half of the available memory); llama.cpp maps its GGUF (its default)`);
  lines.push(`CPU: ${res.machine.cpu_model} (family ${res.machine.cpu_family ?? '?'}, ${res.machine.logical_cpus} logical CPUs${res.machine.cpu_flags.length ? `; ${res.machine.cpu_flags.join(' ')}` : ''}); load average before ${res.machine.loadavg_before.map((x) => x.toFixed(2)).join(' ')}, after ${res.machine.loadavg_after.map((x) => x.toFixed(2)).join(' ')}`);
  lines.push('');
  const labels = [...res.engines, ...res.ratios, ...(res.other_shapes ?? []).flatMap((o) => [...o.engines, ...o.ratios])].map((x) => x.label);
  const w = [Math.max(28, ...labels.map((l) => l.length + 2)), 14, 15, 13, 10];
  lines.push(padEnd('', w[0]) + pad(`prefill ${res.prompt_tokens}`, w[1]) + pad(long ? `prefill ${long}` : '', w[2]) + pad('decode', w[3]) + pad('peak RSS', w[4]));
  lines.push(padEnd('', w[0]) + pad('tok/s', w[1]) + pad(long ? 'tok/s' : '', w[2]) + pad('tok/s', w[3]));
  for (const e of res.engines) {
    if (e.error || e.skipped) continue;
    lines.push(padEnd(e.label, w[0]) + pad(fmt(e.prefill_tokens_per_s), w[1]) + pad(long ? fmt(e.long_prefill_tokens_per_s) : '', w[2]) + pad(fmt(e.decode_tokens_per_s), w[3]) + pad(gb(e.peak_rss_bytes), w[4]));
  }
  for (const r of res.ratios) {
    lines.push(
      padEnd(r.label, w[0]) + pad(ratioCell(r.prefill, r.target_prefill), w[1]) + pad(long ? ratioCell(r.long_prefill, r.target_prefill) : '', w[2]) + pad(ratioCell(r.decode, r.target_decode), w[3]),
    );
  }
  if (res.ratios.some((r) => r.target_prefill || r.target_decode)) lines.push(`  (ok / NO: the target of issue 15: >= ${TARGET_LLAMA_BF16_RATIO}x llama.cpp BF16, decode >= ${TARGET_LLAMA_Q8_DECODE_RATIO}x llama.cpp Q8_0${res.ratios.some((r) => r.peer === 'torch') ? `, >= ${TARGET_TORCH_RATIO}x PyTorch` : ''})`);
  if (res.engines.some((e) => !e.error && !e.skipped && typeof e.prefill_tokens_per_cpu_s === 'number')) {
    lines.push('');
    lines.push(padEnd('per CPU-second (all threads)', w[0]) + pad(`prefill ${res.prompt_tokens}`, w[1]) + pad(long ? `prefill ${long}` : '', w[2]) + pad('decode', w[3]));
    for (const e of res.engines) {
      if (e.error || e.skipped || typeof e.prefill_tokens_per_cpu_s !== 'number') continue;
      lines.push(padEnd(e.label, w[0]) + pad(fmt(e.prefill_tokens_per_cpu_s), w[1]) + pad(long ? fmt(e.long_prefill_tokens_per_cpu_s) : '', w[2]) + pad(fmt(e.decode_tokens_per_cpu_s), w[3]));
    }
    for (const r of res.ratios) {
      if (!r.per_cpu_second || r.per_cpu_second.prefill === null) continue;
      lines.push(padEnd(r.label, w[0]) + pad(ratioCell(r.per_cpu_second.prefill), w[1]) + pad(long ? ratioCell(r.per_cpu_second.long_prefill) : '', w[2]) + pad(ratioCell(r.per_cpu_second.decode), w[3]));
    }
    lines.push('  (CPU time of each process over the phase; llama.cpp\'s threads spin while they wait, Routescope\'s poll 250 µs and');
    lines.push('   then sleep. On a busy machine these move far less than tokens/s; the targets are judged on tokens/s.)');
  }
  lines.push('');
  const b = res.bandwidth;
  if (b && !b.error) {
    for (const rs of res.engines.filter((e) => isEngine(e) && !e.error && typeof e.fraction_of_bound === 'number')) {
      lines.push(
        `decode vs bandwidth bound, ${rs.label}: ${fmt(rs.decode_tokens_per_s)} of ${fmt(b.bound_tokens_per_s)} tok/s = ${fmt(100 * rs.fraction_of_bound, 0)}% (target >= ${100 * TARGET_BOUND_FRACTION}%)${rs.fraction_met ? '  met' : '  NOT met'}; ${fmt(100 * rs.fraction_of_best_pass_bound, 0)}% of the best-pass bound ${fmt(b.best_pass_bound_tokens_per_s)} tok/s`,
      );
    }
    lines.push(`  bound = read bandwidth sustained over ${fmt(b.sustained_seconds, 2)} s (about one decode run) ${fmt(b.sustained_gbps, 2)} GB/s (rs_bench --bandwidth, ${b.threads} threads, best of ${b.samples_sustained_gbps.map((g) => fmt(g, 1)).join(' / ')}: at the start of each round and after the last) / ${fmt(b.active_bytes_per_token / 1e9, 3)} GB of bf16 weights read per decoded token`);
    lines.push(`  best-pass bound: the fastest single ~20 ms pass of those probes, ${fmt(b.best_pass_gbps, 2)} GB/s (${b.samples_best_pass_gbps.map((g) => fmt(g, 1)).join(' / ')})`);
    const q8 = res.engines.find((e) => e.id === 'llama_q8_0' && !e.error && !e.skipped);
    const bf = res.engines.find((e) => e.id === 'llama_bf16' && !e.error && !e.skipped);
    if (bf) lines.push(`  llama.cpp BF16 decode: ${fmt((100 * bf.decode_tokens_per_s) / b.bound_tokens_per_s, 0)}% of the same bound${q8 ? `; Q8_0 reads ≈ ${fmt((b.active_bytes_per_token * 34) / 64 / 1e9, 3)} GB/token` : ''}`);
  } else if (b?.error) {
    lines.push(`bandwidth: not measured (${b.error})`);
  }
  for (const o of res.other_shapes ?? []) {
    lines.push('');
    lines.push(`${o.shape}-shaped (${o.model_type}, ${res.config.num_hidden_layers} layers, random weights, ${gb(o.file_bytes)}): prefill ${o.prompt_tokens}${o.long_prompt_tokens ? ` and ${o.long_prompt_tokens}` : ''}, decode ${res.decode_tokens}`);
    if (o.error) {
      lines.push(`  FAILED: ${o.error}`);
      continue;
    }
    const olong = o.long_prompt_tokens;
    lines.push(padEnd('', w[0]) + pad(`prefill ${o.prompt_tokens}`, w[1]) + pad(olong ? `prefill ${olong}` : '', w[2]) + pad('decode', w[3]) + pad('peak RSS', w[4]));
    for (const e of o.engines) {
      if (e.error) {
        lines.push(`${padEnd(e.label, w[0])}FAILED: ${e.error}`);
        continue;
      }
      lines.push(padEnd(e.label, w[0]) + pad(fmt(e.prefill_tokens_per_s), w[1]) + pad(olong ? fmt(e.long_prefill_tokens_per_s) : '', w[2]) + pad(fmt(e.decode_tokens_per_s), w[3]) + pad(gb(e.peak_rss_bytes), w[4]));
    }
    for (const r of o.ratios) {
      lines.push(padEnd(r.label, w[0]) + pad(ratioCell(r.prefill, r.target_prefill), w[1]) + pad(olong ? ratioCell(r.long_prefill, r.target_prefill) : '', w[2]) + pad(ratioCell(r.decode, r.target_decode), w[3]));
      lines.push(padEnd('  per CPU-second', w[0]) + pad(ratioCell(r.per_cpu_second.prefill), w[1]) + pad(olong ? ratioCell(r.per_cpu_second.long_prefill) : '', w[2]) + pad(ratioCell(r.per_cpu_second.decode), w[3]));
    }
    if (typeof o.bound_tokens_per_s === 'number') {
      const rows = o.engines.filter((e) => isEngine(e) && !e.error && typeof e.fraction_of_bound === 'number');
      const each = rows.length > 1 ? rows.map((e) => `${e.activations} activations ${fmt(e.decode_tokens_per_s, 2)} = ${fmt(100 * e.fraction_of_bound, 0)}%`).join(', ') : `${fmt(o.decode_tokens_per_s, 2)} = ${fmt(100 * o.fraction_of_bound, 0)}%`;
      lines.push(`  decode vs bandwidth bound of ${fmt(o.bound_tokens_per_s)} tok/s (${fmt(o.bandwidth.sustained_gbps, 1)} GB/s sustained, best of this shape's rounds; ${fmt(o.active_bytes_per_token / 1e9, 3)} GB read per token): ${each}; best-pass bound ${fmt(o.best_pass_bound_tokens_per_s)} tok/s`);
    }
    const om = o.llama_check_mxfp4;
    if (om?.prompts) {
      lines.push(`  same model check, MXFP4 experts: top-5 tokens ${om.top5_identical ? 'identical' : 'DIFFER'}, max |logit diff| ${om.prompts.map((x) => x.max_abs_logit_diff.toFixed(4)).join(' / ')} (llama.cpp's MXFP4 kernel rounds activations to Q8_0): not timed`);
    }
    const oc = o.llama_check;
    if (oc?.prompts) {
      // One line per activation precision checked; llama.cpp is timed when the first (the default) agrees.
      const checked = Object.keys(oc.by_activations ?? { [oc.activations]: oc });
      for (const [i, a] of checked.entries()) {
        const ps = oc.prompts.map((x) => x.by_activations?.[a] ?? x);
        const same = ps.every((x) => x.top5_identical);
        const verdict = same ? 'identical' : i === 0 ? 'DIFFER (llama.cpp not timed)' : 'DIFFER';
        lines.push(`  same model check (llama.cpp BF16 vs routescope inspect${checked.length > 1 ? ` --activations ${a}` : ''}, last position, ${oc.prompts.map((x) => x.tokens).join('/')}-token prompts): top-5 tokens ${verdict}, max |logit diff| ${ps.map((x) => x.max_abs_logit_diff.toFixed(4)).join(' / ')} (logits up to ${fmt(Math.max(...ps.map((x) => x.max_abs_logit)), 2)})`);
      }
    } else if (oc?.skipped) {
      lines.push(`  llama.cpp: not compared (${oc.skipped})`);
    } else if (oc?.error) {
      lines.push(`  same model check: FAILED (${oc.error})`);
    }
  }
  const lc = res.llama_check;
  if (lc && !lc.error && !lc.skipped) {
    for (const a of Object.keys(lc.by_activations ?? { [lc.activations]: lc })) {
      const diffs = lc.prompts.map((p) => (p.by_activations?.[a] ?? p).max_abs_logit_diff.toFixed(4)).join(' / ');
      const same = lc.prompts.every((p) => (p.by_activations?.[a] ?? p).top5_identical);
      lines.push(
        `same model check (llama.cpp BF16 vs routescope inspect --activations ${a}, last position, prompts of ${lc.prompts.map((p) => p.tokens).join('/')} tokens): top-5 tokens ${same ? 'identical' : 'DIFFER'}, max |logit diff| ${diffs}`,
      );
    }
    lines.push("  (llama.cpp's BF16 matmul rounds activations to bf16; --activations bf16 does the same in prefill)");
  } else if (lc?.skipped) {
    lines.push(`same model check: skipped (${lc.skipped})`);
  } else if (lc?.error) {
    lines.push(`same model check: FAILED (${lc.error})`);
  }
  if (res.llama_build) {
    const lb = res.llama_build;
    lines.push(`llama.cpp: node-llama-cpp ${lb.node_llama_cpp} (${lb.build_type ?? 'unknown'} binaries), ${lb.llama_cpp_repo} release ${lb.llama_cpp_release}, CPU backend ${lb.cpu_backend ? `libggml-cpu-${lb.cpu_backend}.so` : 'unknown'}; ${lb.system_info ?? ''}`.trim());
    lines.push(`  context: batch ${lb.batch_size ?? '?'}, flash attention ${lb.flash_attention ?? '?'}, ${lb.threads ?? '?'} threads`);
  }
  const t = res.engines.find((e) => e.id === 'torch' && !e.error && !e.skipped);
  if (t) {
    const names = t.blas?.alternative ?? (t.blas?.mapped ?? []).join(', ');
    lines.push(`PyTorch BLAS: ${t.blas?.name ?? 'unknown'} (${names || 'no libblas.so.3 alternative found'}), sgemm 1024^3 ${fmt(t.sgemm_1024_gflops, 0)} GFLOP/s`);
    if (t.blas?.name && !/openblas|blis|mkl/i.test(t.blas.name)) lines.push('  WARNING: PyTorch is not on an optimised BLAS, so its ratio flatters the engine: apt-get install libopenblas0-pthread');
  }
  const x = res.torch_check;
  if (x && !x.error && !x.skipped) {
    lines.push(
      `PyTorch cross-check (${x.tokens}-token prompt, last position): max |logit diff| = ${x.max_abs_logit_diff.toExponential(2)} (logits up to ${fmt(x.max_abs_logit, 2)}), argmax ${x.same_argmax ? 'same' : 'DIFFERS'}, selected experts identical at ${x.experts_identical}/${x.experts_compared} (layer, position)`,
    );
  } else if (x?.error) {
    lines.push(`PyTorch cross-check: FAILED (${x.error})`);
  }
  for (const e of res.engines) {
    if (e.skipped) lines.push(`${e.label}: skipped (${e.skipped})`);
    else if (e.error) lines.push(`${e.label}: FAILED (${e.error})`);
  }
  for (const n of res.notes) lines.push(`note: ${n}`);
  lines.push(`results: ${path.relative(ROOT, path.join(OUT, 'results.json'))}`);
  return lines.join('\n');
}

// ---- main ----------------------------------------------------------------------------------------------------

async function main() {
  const opts = parseOptions(process.argv.slice(2));
  if (opts.help) {
    process.stdout.write(usage());
    return 0;
  }
  const notes = [];
  const cpu = cpuModel();
  const loadBefore = os.loadavg();
  fs.mkdirSync(OUT, { recursive: true });
  let realError = null;

  // 1. checkpoint
  const dir = path.join(OUT, `${opts.shape}-shaped-L${opts.layers}`);
  const ck = ensureCheckpoint(dir, opts.layers, CHECKPOINT_SEED, log, opts.shape);
  log(ck.reused ? `reusing ${path.relative(ROOT, dir)}` : `wrote ${path.relative(ROOT, dir)} in ${ck.seconds.toFixed(1)} s`);
  const config = textConfig(ck.config);
  if (opts.promptTokens + opts.decodeTokens > config.max_position_embeddings) {
    throw new BenchError(`--prompt-tokens + --decode-tokens must stay within max_position_embeddings=${config.max_position_embeddings}`);
  }
  if (opts.longPromptTokens > config.max_position_embeddings) {
    throw new BenchError(`--long-prompt-tokens must stay within max_position_embeddings=${config.max_position_embeddings}`);
  }
  const activeBytes = activeDecodeBytes(ck.config);

  // 2. the engine route
  const noCli = opts.engine === 'rs_bench' ? '--engine rs_bench' : cliAvailable();
  if (noCli !== null && opts.engine === 'cli') throw new BenchError(`--engine cli: ${noCli}`);
  let engineVia = noCli === null ? 'cli' : 'rs_bench';
  if (noCli !== null) notes.push(opts.engine === 'rs_bench' ? 'engine figures come from build/rs_bench (--engine rs_bench)' : `the CLI is not available (${noCli}): engine figures come from build/rs_bench`);

  // 3. the llama.cpp peer: install, GGUFs, same-model check
  // One engine row per activation precision, timed in the same interleaved rounds against the same peer runs.
  const engines = opts.activations.map((a, i) => ({
    id: i === 0 ? 'routescope' : `routescope_${a}`,
    label: engineLabel(a, opts),
    activations: a,
    kv_cache: kvCacheFor(a, opts),
    expert_kernels: opts.expertKernels,
    runs: [],
  }));
  let llamaCheck = null;
  let llamaBuild = null;
  const ggufs = {};
  if (opts.peers.includes('llama')) {
    const why = ensureLlamaPeer();
    if (why) {
      for (const t of opts.llamaTypes) engines.push({ id: `llama_${t}`, label: `llama.cpp ${t.toUpperCase()}`, skipped: why });
      llamaCheck = { skipped: why };
      notes.push(`llama.cpp peer unavailable: ${why}`);
    } else {
      for (const t of opts.llamaTypes) {
        const g = ensureGguf(dir, OUT, t, log);
        log(g.reused ? `reusing ${path.relative(ROOT, g.file)}` : `wrote ${path.relative(ROOT, g.file)} (${gb(g.bytes)}) in ${g.seconds.toFixed(1)} s`);
        ggufs[t] = g.file;
        engines.push({ id: `llama_${t}`, label: `llama.cpp ${t.toUpperCase()}`, gguf: path.relative(ROOT, g.file), gguf_bytes: g.bytes, runs: [] });
      }
      const checkGguf = ggufs.bf16 ?? ggufs[opts.llamaTypes[0]];
      if (noCli !== null) llamaCheck = { skipped: `needs the CLI (${noCli})` };
      else {
        log(`same-model check: llama.cpp vs routescope inspect on ${CHECK_PROMPT_LENGTHS.join('/')}-token prompts ...`);
        llamaCheck = llamaCrossCheck(dir, checkGguf, opts, config.vocab_size, opts.activations);
        if (llamaCheck.error) realError = `same-model check: ${llamaCheck.error}`;
        else if (!llamaCheck.top5_identical) {
          notes.push('llama.cpp and Routescope disagree on the top-5 tokens of a check prompt, so llama.cpp is not timed: the runs would not compare the same model');
          for (const e of engines) if (e.id.startsWith('llama_')) e.skipped = 'failed the same-model check';
        }
      }
    }
  }

  // 4. bandwidth: probed at the start of every round and after the last (bandwidthSeries)
  const bwSeries = bandwidthSeries(opts.threads, opts.decodeTokens);

  // 5. interleaved rounds: every engine once per round (order rotated), main prefill + decode, then the long prefill
  const timed = engines.filter((e) => !e.skipped);
  const engineRun = (modelDir, activations, promptTokens, decodeTokens) => {
    let r = engineVia === 'cli' ? engineViaCli(modelDir, opts, activations, promptTokens, decodeTokens) : engineViaRsBench(modelDir, opts, activations, promptTokens, decodeTokens);
    if (r.error && engineVia === 'cli' && opts.engine === 'auto') {
      notes.push(`the CLI bench failed, engine figures come from build/rs_bench instead (${r.error})`);
      engineVia = 'rs_bench';
      r = engineViaRsBench(modelDir, opts, activations, promptTokens, decodeTokens);
    }
    return r;
  };
  const measureOne = (e, promptTokens, decodeTokens) => (isEngine(e)
    ? engineRun(dir, e.activations, promptTokens, decodeTokens)
    : llamaTime(ggufs[e.id.slice('llama_'.length)], opts, config.vocab_size, promptTokens, decodeTokens));
  const failed = timeRounds(timed, opts, opts.promptTokens, opts.longPromptTokens, measureOne, '', bwSeries.probe);
  bwSeries.probe();
  const bw = bwSeries.summary();
  if (bw.error) notes.push(`bandwidth not measured: ${bw.error}`);
  const engineFailed = engines.find((e) => isEngine(e) && e.error);
  if (engineFailed) throw new BenchError(`no engine figures: ${engineFailed.error}`);
  realError = realError ?? failed;
  for (const e of timed) {
    summarizeRuns(e, opts.promptTokens, opts.decodeTokens, opts.longPromptTokens);
    const main = e.runs.find((r) => r.prompt_tokens === opts.promptTokens);
    if (isEngine(e)) {
      e.via = main?.via ?? engineVia;
      // The engine reports what it ran: a CPU without AVX512_BF16 runs bf16 requests at fp32.
      const used = [...new Set(e.runs.map((r) => r.activations_used).filter(Boolean))];
      e.activations_used = used.length === 1 ? used[0] : used.length ? used : null;
      e.weights_used = [...new Set(e.runs.map((r) => r.weights_used).filter(Boolean))].join(', ') || null;
      e.kv_cache_used = [...new Set(e.runs.map((r) => r.kv_cache_used).filter(Boolean))].join(', ') || null;
      if (used.some((u) => u !== e.activations)) {
        notes.push(`${e.label}: the engine ran ${used.join(', ')} activations (see routescope info's warnings)`);
        e.label += ` [ran ${used.join(', ')}]`;
      }
    }
    if (e.id.startsWith('llama_') && main) {
      llamaBuild = llamaBuild ?? { ...main.build, build_type: main.build_type, cpu_backend: main.cpu_backend, system_info: main.system_info, threads: main.threads, flash_attention: main.flash_attention, batch_size: main.batch_size };
    }
  }
  if (!llamaBuild && opts.peers.includes('llama') && !llamaPeerMissing()) llamaBuild = llamaPeerBuild();

  // 6. PyTorch (opt-in: it loads ≈ 4 GB of fp32 weights and takes minutes on 2 cores)
  let torchCheck = null;
  if (opts.peers.includes('torch')) {
    const checkTokens = randomTokens(Math.min(opts.checkTokens, config.max_position_embeddings - 1), config.vocab_size, opts.seed + 1);
    const checkPrefix = path.join(OUT, 'peer-check');
    const t = torchAvailable(opts.python);
    if (!t.ok) {
      engines.push({ id: 'torch', label: 'PyTorch eager fp32', skipped: `PyTorch is not importable by ${opts.python}: ${t.why}` });
      notes.push(`PyTorch missing: ${opts.python} cannot import torch; install python3-torch and libopenblas0-pthread (Debian) for that peer`);
    } else {
      log(`running the PyTorch ${t.version} eager peer (a few minutes) ...`);
      fs.rmSync(`${checkPrefix}.logits.f32`, { force: true });
      const p = runTorch(opts.python, dir, opts, checkTokens, checkPrefix);
      if (p.error) {
        engines.push({ id: 'torch', label: 'PyTorch eager fp32', error: p.error });
        realError = realError ?? p.error;
      } else {
        engines.push({ id: 'torch', label: `PyTorch ${p.torch} eager fp32`, ...p, long_prefill_tokens_per_s: null });
        if (checkTokens.length > 0 && noCli === null) {
          torchCheck = torchCrossCheck(dir, opts, checkTokens, checkPrefix);
          if (torchCheck.error) realError = realError ?? `PyTorch cross-check: ${torchCheck.error}`;
        }
      }
    }
  }

  // 7. ratios and report
  const rsRows = engines.filter(isEngine);
  const ratios = [];
  for (const rs of rsRows) for (const e of engines.filter((x) => !isEngine(x))) {
    if (e.error || e.skipped) continue;
    const r = ratioRow(rs, e);
    r.engine = rs.id;
    r.label = `${rsRows.length > 1 ? rs.label.replace(/^Routescope \((.*)\)$/, '$1') : 'Routescope'} ÷ ${e.label.replace(/ eager fp32$/, '')}`;
    ratios.push(r);
  }
  const bandwidth = bw.error
    ? { error: bw.error, active_bytes_per_token: activeBytes }
    : {
        ...bw,
        active_bytes_per_token: activeBytes,
        bound_tokens_per_s: (bw.sustained_gbps * 1e9) / activeBytes,
        best_pass_bound_tokens_per_s: (bw.best_pass_gbps * 1e9) / activeBytes,
      };
  if (!bw.error) {
    // The first row (the default kernels) is the headline; every row is judged in `engines`.
    bandwidth.fraction_of_bound = rsRows[0].decode_tokens_per_s / bandwidth.bound_tokens_per_s;
    bandwidth.target_fraction = TARGET_BOUND_FRACTION;
    bandwidth.fraction_met = bandwidth.fraction_of_bound >= TARGET_BOUND_FRACTION;
    for (const rs of rsRows) {
      rs.fraction_of_bound = rs.decode_tokens_per_s / bandwidth.bound_tokens_per_s;
      rs.fraction_of_best_pass_bound = rs.decode_tokens_per_s / bandwidth.best_pass_bound_tokens_per_s;
      rs.fraction_met = rs.fraction_of_bound >= TARGET_BOUND_FRACTION;
    }
  }
  // 7b. the other shapes: the same-model check and the interleaved rounds against llama.cpp BF16 where the GGUF writer
  // knows the architecture and the check passes, the engine alone otherwise; each against its own bandwidth bound
  const otherShapes = [];
  const llamaReady = opts.peers.includes('llama') && !engines.some((e) => e.id.startsWith('llama_') && e.skipped);
  for (const shape of opts.alsoShapes) {
    const odir = path.join(OUT, `${shape}-shaped-L${opts.layers}`);
    const ock = ensureCheckpoint(odir, opts.layers, CHECKPOINT_SEED, log, shape);
    log(ock.reused ? `reusing ${path.relative(ROOT, odir)}` : `wrote ${path.relative(ROOT, odir)} in ${ock.seconds.toFixed(1)} s`);
    const ocfg = textConfig(ock.config);  // llama4: the text model's config is nested
    const promptTokens = Math.min(opts.promptTokens, ocfg.max_position_embeddings - opts.decodeTokens);
    const longPromptTokens = Math.min(opts.longPromptTokens, ocfg.max_position_embeddings);
    const entry = { shape, dir: path.relative(ROOT, odir), file_bytes: ock.fileBytes, model_type: ock.config.model_type, prompt_tokens: promptTokens, long_prompt_tokens: longPromptTokens, engines: [], ratios: [], llama_check: null };
    // The same engine rows as the main comparison (one per activation precision), in the same interleaved rounds.
    const rsEntries = engines.filter(isEngine).map((e) => ({ id: e.id, label: e.label.replace(/ \[ran .*\]$/, ''), activations: e.activations, runs: [] }));
    const rsEntry = rsEntries[0];
    entry.engines.push(...rsEntries);
    let gguf = null;
    if (!llamaReady) entry.llama_check = { skipped: opts.peers.includes('llama') ? 'the llama.cpp peer is unavailable' : 'no llama peer (--peers)' };
    else if (!ggufArchitecture(ocfg)) entry.llama_check = { skipped: `the GGUF writer has no llama.cpp layout for model_type ${ocfg.model_type}` };
    else if (noCli !== null) entry.llama_check = { skipped: `needs the CLI (${noCli})` };
    else {
      const g = ensureGguf(odir, OUT, 'bf16', log);
      log(g.reused ? `reusing ${path.relative(ROOT, g.file)}` : `wrote ${path.relative(ROOT, g.file)} (${gb(g.bytes)}) in ${g.seconds.toFixed(1)} s`);
      log(`${shape}: same-model check, llama.cpp vs routescope inspect on ${CHECK_PROMPT_LENGTHS.join('/')}-token prompts ...`);
      const checkActivations = rsEntries.map((e) => e.activations);
      let check = llamaCrossCheck(odir, g.file, opts, ocfg.vocab_size, checkActivations);
      let label = ocfg.model_type === 'gpt_oss' ? 'llama.cpp BF16 (MXFP4 experts)' : 'llama.cpp BF16';
      let file = g;
      if (!check.error && !check.top5_identical && ocfg.quantization_config?.quant_method === 'mxfp4') {
        // llama.cpp's MXFP4 kernel rounds the activations to Q8_0 (its BF16 kernel to bf16): a near-tie in the top 5
        // can flip. The same weights with the experts as their exact BF16 values take the BF16 kernel instead.
        entry.llama_check_mxfp4 = check;
        file = ensureGguf(odir, OUT, 'bf16', log, { dequantizeMxfp4: true });
        log(`${shape}: the MXFP4 GGUF's top 5 differ; same-model check of the experts dequantized to BF16 ...`);
        check = llamaCrossCheck(odir, file.file, opts, ocfg.vocab_size, checkActivations);
        label = 'llama.cpp BF16 (experts dequantized)';
      }
      entry.llama_check = check;
      if (check.error) realError = realError ?? `${shape} same-model check: ${check.error}`;
      else if (!check.top5_identical) notes.push(`${shape}: llama.cpp and Routescope disagree on the top-5 tokens of a check prompt, so llama.cpp is not timed on it`);
      else {
        gguf = file.file;
        entry.engines.push({ id: 'llama_bf16', label, gguf: path.relative(ROOT, file.file), gguf_bytes: file.bytes, runs: [] });
      }
    }
    const measure = (e, prompt, decode) => (isEngine(e) ? engineRun(odir, e.activations, prompt, decode) : llamaTime(gguf, opts, ocfg.vocab_size, prompt, decode));
    const shapeBw = bandwidthSeries(opts.threads, opts.decodeTokens);
    const failure = timeRounds(entry.engines, opts, promptTokens, longPromptTokens, measure, `${shape}: `, shapeBw.probe);
    shapeBw.probe();
    const sbw = shapeBw.summary();
    if (failure) {
      realError = realError ?? failure;
      const failed = rsEntries.find((e) => e.error);
      if (failed) entry.error = failed.error;
    }
    for (const e of entry.engines) summarizeRuns(e, promptTokens, opts.decodeTokens, longPromptTokens);
    for (const rs of rsEntries) {
      if (rs.error) continue;
      for (const e of entry.engines.filter((x) => !isEngine(x) && !x.error)) {
        const r = ratioRow(rs, e);
        r.engine = rs.id;
        if (rsEntries.length > 1) r.label = `${rs.label.replace(/^Routescope \((.*)\)$/, '$1')} ÷ ${e.label}`;
        entry.ratios.push(r);
      }
    }
    entry.prefill_tokens_per_s = rsEntry.prefill_tokens_per_s;
    entry.long_prefill_tokens_per_s = rsEntry.long_prefill_tokens_per_s;
    entry.decode_tokens_per_s = rsEntry.decode_tokens_per_s;
    entry.active_bytes_per_token = activeDecodeBytes(ock.config);
    if (!sbw.error) {
      entry.bandwidth = sbw;
      entry.bound_tokens_per_s = (sbw.sustained_gbps * 1e9) / entry.active_bytes_per_token;
      entry.best_pass_bound_tokens_per_s = (sbw.best_pass_gbps * 1e9) / entry.active_bytes_per_token;
      entry.fraction_of_bound = typeof entry.decode_tokens_per_s === 'number' ? entry.decode_tokens_per_s / entry.bound_tokens_per_s : null;
      for (const rs of rsEntries) rs.fraction_of_bound = typeof rs.decode_tokens_per_s === 'number' ? rs.decode_tokens_per_s / entry.bound_tokens_per_s : null;
    }
    otherShapes.push(entry);
  }
  const loadAfter = os.loadavg();
  if (Math.max(...loadBefore, ...loadAfter) > opts.threads + 0.5) {
    notes.push(`the machine was busy with other work (load average up to ${Math.max(...loadBefore, ...loadAfter).toFixed(2)} on ${os.availableParallelism()} CPUs): absolute figures are noisy, compare the ratios`);
  }
  const results = {
    date: new Date().toISOString(),
    machine: {
      cpu_model: cpu.model,
      cpu_family: cpu.family,
      cpu_model_number: cpu.model_number,
      cpu_flags: cpu.flags,
      logical_cpus: os.availableParallelism(),
      memory_bytes: os.totalmem(),
      loadavg_before: loadBefore,
      loadavg_after: loadAfter,
      node: process.version,
    },
    threads: opts.threads,
    repeat: opts.repeat,
    prompt_tokens: opts.promptTokens,
    long_prompt_tokens: opts.longPromptTokens,
    decode_tokens: opts.decodeTokens,
    shape: opts.shape,
    config,
    checkpoint: { dir: path.relative(ROOT, dir), reused: ck.reused, file_bytes: ck.fileBytes, write_seconds: ck.seconds },
    engines,
    ratios,
    bandwidth,
    other_shapes: otherShapes,
    llama_build: llamaBuild,
    llama_check: llamaCheck,
    torch_check: torchCheck,
    notes,
  };
  fs.writeFileSync(path.join(OUT, 'results.json'), JSON.stringify(results, null, 2) + '\n');
  process.stdout.write(opts.json ? JSON.stringify(results) + '\n' : table(results) + '\n');
  if (!opts.skipAdapt) {
    // 8. test-time adaptation overhead (its own script; a failure there is reported, not hidden)
    const adapt = spawnSync(process.execPath, [path.join(ROOT, 'bench', 'adapt.mjs'), '--layers', String(opts.layers), ...(opts.threads ? ['--threads', String(opts.threads)] : []), ...(opts.json ? ['--json'] : [])], { stdio: 'inherit' });
    if (adapt.status !== 0) realError = realError ?? `bench/adapt.mjs failed (${adapt.signal ?? `exit ${adapt.status}`})`;
  }
  if (realError) {
    process.stderr.write(`bench: ${realError}\n`);
    return 1;
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    const message = error instanceof BenchError || error?.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || error?.code?.startsWith?.('ERR_PARSE_ARGS')
      ? error.message
      : error?.stack ?? String(error);
    process.stderr.write(`bench: ${message}\n`);
    if (error?.code?.startsWith?.('ERR_PARSE_ARGS')) process.stderr.write(usage());
    process.exit(error instanceof BenchError || error?.code?.startsWith?.('ERR_PARSE_ARGS') ? 2 : 1);
  },
);
