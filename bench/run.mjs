#!/usr/bin/env node
// `npm run bench`: Routescope against PyTorch eager on an OLMoE-shaped checkpoint with random bf16 weights.
//
//   npm run bench -- [--layers 2] [--prompt-tokens 512] [--decode-tokens 32] [--threads T] [--skip-peer] [--json]
//
// 1. writes bench/out/olmoe-shaped-L<layers>/ (once; reused while its stamp matches),
// 2. measures the memory read bandwidth (build/rs_bench --bandwidth),
// 3. runs the product (`routescope bench --json`; build/rs_bench when the CLI is not there or fails),
// 4. runs the peer bench/peer_torch.py (PyTorch eager, HF-style per-expert loop, fp32) on the same weights,
// 5. cross-checks the last-position logits and selected experts of a short prompt (`routescope inspect`),
// 6. prints the table and writes bench/out/results.json.
// Benchmarks report, they do not assert: missed targets never fail the run; real errors do.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { SHAPES, activeDecodeBytes, ensureCheckpoint } from './checkpoint.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(ROOT, 'bench', 'out');
const RS_BENCH = path.join(ROOT, 'build', process.platform === 'win32' ? 'rs_bench.exe' : 'rs_bench');
const CLI = path.join(ROOT, 'bin', 'routescope.js');
const CLI_BUNDLE = path.join(ROOT, 'dist', 'cli.js');
const PEER = path.join(ROOT, 'bench', 'peer_torch.py');
const TARGET_RATIO = 3;
const TARGET_BOUND_FRACTION = 0.5;
const CHECKPOINT_SEED = 20240901;

class BenchError extends Error {}

function usage() {
  return `usage: npm run bench -- [--layers N] [--prompt-tokens N] [--decode-tokens M] [--threads T] [--check-tokens K]
                        [--seed S] [--repeat R] [--python PATH] [--engine auto|cli|rs_bench] [--skip-peer] [--json]
  --layers         layers in the random checkpoint (default 2)
  --shape          olmoe (OLMoE-1B-7B, default), deepseek-v2-lite or moonlight (their config.json, layers shrunk;
                   the PyTorch peer and the adaptation overhead run on olmoe only)
  --prompt-tokens  prefill length (default 512)
  --decode-tokens  single-token decode steps (default 32)
  --threads        threads for the engine, the bandwidth probe and PyTorch (default: all cores, ${os.availableParallelism()})
  --check-tokens   length of the logits cross-check prompt (default 16, 0 = skip)
  --seed           seed of the random prompt tokens (default 0)
  --repeat         timed runs of the engine and of the peer; the best prefill and the best decode of each count
                   (default 1; more steadies the figures on a busy machine)
  --python         interpreter with torch (default $ROUTESCOPE_PYTHON or /usr/bin/python3)
  --engine         how to run the engine: the CLI's bench (cli), build/rs_bench, or auto (default: the CLI when it is
                   built, rs_bench when it is not or fails)
  --skip-peer      engine figures only
  --skip-adapt     leave out the test-time adaptation overhead (bench/adapt.mjs: C3PO-NGD and rerouting vs plain),
                   which otherwise runs afterwards on the demo model and this checkpoint (with --json: a second line)
  --json           print results.json to stdout instead of the table (progress still goes to stderr)
`;
}

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      layers: { type: 'string', default: '2' },
      shape: { type: 'string', default: 'olmoe' },
      'prompt-tokens': { type: 'string', default: '512' },
      'decode-tokens': { type: 'string', default: '32' },
      threads: { type: 'string' },
      'check-tokens': { type: 'string', default: '16' },
      seed: { type: 'string', default: '0' },
      repeat: { type: 'string', default: '1' },
      python: { type: 'string' },
      engine: { type: 'string', default: 'auto' },
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
  return {
    help: values.help,
    layers: int('layers', values.layers, 1),
    shape: Object.keys(SHAPES).includes(values.shape)
      ? values.shape
      : (() => {
          throw new BenchError(`--shape must be one of ${Object.keys(SHAPES).join(', ')}, got ${JSON.stringify(values.shape)}`);
        })(),
    promptTokens: int('prompt-tokens', values['prompt-tokens'], 1),
    decodeTokens: int('decode-tokens', values['decode-tokens'], 1),
    threads: values.threads === undefined ? os.availableParallelism() : int('threads', values.threads, 1),
    checkTokens: int('check-tokens', values['check-tokens'], 0),
    seed: int('seed', values.seed, 0),
    repeat: int('repeat', values.repeat, 1),
    python: values.python ?? process.env.ROUTESCOPE_PYTHON ?? '/usr/bin/python3',
    engine: ['auto', 'cli', 'rs_bench'].includes(values.engine)
      ? values.engine
      : (() => {
          throw new BenchError(`--engine must be auto, cli or rs_bench, got ${JSON.stringify(values.engine)}`);
        })(),
    skipPeer: values['skip-peer'],
    skipAdapt: values['skip-adapt'],
    json: values.json,
  };
}

const log = (line) => process.stderr.write(`[bench] ${line}\n`);

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
    const name = /^model name\s*:\s*(.+)$/m.exec(text)?.[1]?.trim();
    const flags = /^flags\s*:\s*(.+)$/m.exec(text)?.[1]?.split(/\s+/) ?? [];
    const ofNote = ['avx2', 'fma', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_bf16'].filter((f) => flags.includes(f));
    return { model: name ?? os.cpus()[0]?.model ?? 'unknown', flags: ofNote };
  } catch {
    return { model: os.cpus()[0]?.model ?? 'unknown', flags: [] };
  }
}

/** Deterministic token ids (mulberry32), distinct from the engine's and the peer's own prompt streams. */
function randomTokens(n, vocab, seed) {
  let state = (seed ^ 0x5bd1e995) >>> 0;
  const out = [];
  for (let i = 0; i < n; i++) {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out.push((((t ^ (t >>> 14)) >>> 0) % vocab));
  }
  return out;
}

// ---- steps ---------------------------------------------------------------------------------------------------

function measureBandwidth(threads) {
  if (!fs.existsSync(RS_BENCH)) return { error: `${path.relative(ROOT, RS_BENCH)} is missing (run npm install / npx cmake-js compile --out build)` };
  const r = run(RS_BENCH, ['--bandwidth', '--threads', String(threads)]);
  const j = r.ok ? lastJson(r.stdout) : null;
  if (!j || typeof j.read_bandwidth_gbps !== 'number') return { error: `rs_bench --bandwidth failed: ${describeFailure(r)}` };
  return { read_bandwidth_gbps: j.read_bandwidth_gbps, threads: j.threads };
}

function cliAvailable() {
  if (!fs.existsSync(CLI)) return `${path.relative(ROOT, CLI)} is missing`;
  if (!fs.existsSync(CLI_BUNDLE)) return `${path.relative(ROOT, CLI_BUNDLE)} is missing (the CLI is not built: npm run build:ts)`;
  return null;
}

function engineViaCli(dir, opts) {
  const r = run(process.execPath, [
    CLI, 'bench', '--model', dir,
    '--prompt-tokens', String(opts.promptTokens), '--decode-tokens', String(opts.decodeTokens),
    '--threads', String(opts.threads), '--json',
  ]);
  if (!r.ok) return { error: `routescope bench failed: ${describeFailure(r)}` };
  const j = lastJson(r.stdout);
  if (!j || typeof j.prefill_tokens_per_s !== 'number' || typeof j.decode_tokens_per_s !== 'number') {
    return { error: `routescope bench --json printed no prefill_tokens_per_s / decode_tokens_per_s: ${r.stdout.slice(0, 200)}` };
  }
  return {
    via: 'cli',
    command: `node bin/routescope.js bench --model ${path.relative(ROOT, dir)} --prompt-tokens ${opts.promptTokens} --decode-tokens ${opts.decodeTokens} --threads ${opts.threads} --json`,
    prefill_tokens_per_s: j.prefill_tokens_per_s,
    decode_tokens_per_s: j.decode_tokens_per_s,
    peak_rss_bytes: typeof j.peak_rss_bytes === 'number' ? j.peak_rss_bytes : null,
    threads: j.model?.threads ?? opts.threads,
    backend: j.model?.backend ?? null,
    active_parameters: j.model?.active_parameters ?? null,
    wall_seconds: r.seconds,
    raw: j,
  };
}

function engineViaRsBench(dir, opts) {
  if (!fs.existsSync(RS_BENCH)) return { error: `${path.relative(ROOT, RS_BENCH)} is missing` };
  const r = run(RS_BENCH, [
    '--model', dir, '--prompt-tokens', String(opts.promptTokens), '--decode-tokens', String(opts.decodeTokens),
    '--threads', String(opts.threads),
  ]);
  const j = r.ok ? lastJson(r.stdout) : null;
  if (!j || typeof j.prefill_tokens_per_s !== 'number') return { error: `rs_bench failed: ${describeFailure(r)}` };
  return {
    via: 'rs_bench',
    command: `build/rs_bench --model ${path.relative(ROOT, dir)} --prompt-tokens ${opts.promptTokens} --decode-tokens ${opts.decodeTokens} --threads ${opts.threads}`,
    prefill_tokens_per_s: j.prefill_tokens_per_s,
    decode_tokens_per_s: j.decode_tokens_per_s,
    peak_rss_bytes: typeof j.peak_rss_mb === 'number' ? Math.round(j.peak_rss_mb * 1024 * 1024) : null,
    threads: j.threads ?? opts.threads,
    backend: 'cpu',
    active_parameters: j.active_parameters ?? null,
    wall_seconds: r.seconds,
    raw: j,
  };
}

function torchAvailable(python) {
  const r = run(python, ['-c', 'import torch, numpy; print(torch.__version__)']);
  if (r.ok) return { ok: true, version: r.stdout.trim() };
  return { ok: false, why: r.error ? r.error.message : r.stderr.trim().split('\n').slice(-1)[0] || `exit ${r.status}` };
}

function runPeer(python, dir, opts, checkTokens, checkPrefix) {
  const args = [
    PEER, '--model', dir, '--prompt-tokens', String(opts.promptTokens), '--decode-tokens', String(opts.decodeTokens),
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

function crossCheck(dir, opts, tokens, checkPrefix) {
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

// ---- report --------------------------------------------------------------------------------------------------

const fmt = (x, digits = 1) => (typeof x === 'number' && Number.isFinite(x) ? x.toFixed(digits) : '—');
const gb = (bytes) => (typeof bytes === 'number' ? `${(bytes / 1e9).toFixed(2)} GB` : '—');
const pad = (s, n) => String(s).padStart(n);
const padEnd = (s, n) => String(s).padEnd(n);
const verdict = (ok) => (ok === null ? '' : ok ? '  met' : '  NOT met');

function table(res) {
  const lines = [];
  const c = res.config;
  lines.push(
    `Routescope bench: ${res.shape}-shaped (hidden ${c.hidden_size}, ${c.num_experts ?? c.n_routed_experts} experts top-${c.num_experts_per_tok}, expert width ${c.moe_intermediate_size ?? c.intermediate_size}, vocab ${c.vocab_size}), ${c.num_hidden_layers} layers, random bf16 weights (${gb(res.checkpoint.file_bytes)})`,
  );
  lines.push(`prefill ${res.prompt_tokens} tokens, decode ${res.decode_tokens} tokens${res.repeat > 1 ? `, best of ${res.repeat} runs each` : ''}`);
  lines.push(`CPU: ${res.machine.cpu_model} (${res.machine.logical_cpus} logical CPUs${res.machine.cpu_flags.length ? `; ${res.machine.cpu_flags.join(' ')}` : ''}), threads ${res.threads}, load avg before ${res.machine.loadavg_before.map((x) => x.toFixed(2)).join(' ')}`);
  lines.push('');
  const e = res.engine;
  const p = res.peer;
  const w = [30, 15, 15, 12];
  lines.push(padEnd('', w[0]) + pad('prefill tok/s', w[1]) + pad('decode tok/s', w[2]) + pad('peak RSS', w[3]));
  if (e && !e.error) {
    lines.push(padEnd(`Routescope (${e.via === 'cli' ? 'routescope bench' : 'rs_bench fallback'})`, w[0]) + pad(fmt(e.prefill_tokens_per_s), w[1]) + pad(fmt(e.decode_tokens_per_s), w[2]) + pad(gb(e.peak_rss_bytes), w[3]));
  }
  if (p && !p.error && !p.skipped) {
    lines.push(padEnd(`PyTorch ${p.torch} eager fp32`, w[0]) + pad(fmt(p.prefill_tokens_per_s), w[1]) + pad(fmt(p.decode_tokens_per_s), w[2]) + pad(gb(p.peak_rss_bytes), w[3]));
    const r = res.ratios;
    lines.push(padEnd(`ratio (target >= ${TARGET_RATIO}x)`, w[0]) + pad(`${fmt(r.prefill, 2)}x`, w[1]) + pad(`${fmt(r.decode, 2)}x`, w[2]));
    lines.push(padEnd('', w[0]) + pad(verdict(r.prefill_met).trim(), w[1]) + pad(verdict(r.decode_met).trim(), w[2]));
  }
  lines.push('');
  const b = res.bandwidth;
  if (b && !b.error) {
    lines.push(
      `decode vs bandwidth bound: ${fmt(e?.decode_tokens_per_s)} of ${fmt(b.bound_tokens_per_s)} tok/s = ${fmt(100 * b.fraction_of_bound, 0)}% (target >= ${100 * TARGET_BOUND_FRACTION}%)${verdict(b.fraction_met)}`,
    );
    lines.push(`  bound = read bandwidth ${fmt(b.read_bandwidth_gbps, 2)} GB/s / ${fmt(b.active_bytes_per_token / 1e9, 3)} GB of bf16 weights read per decoded token`);
    if (p && !p.error && !p.skipped) lines.push(`  (PyTorch reads fp32 weights, ${fmt((2 * b.active_bytes_per_token) / 1e9, 3)} GB/token: ${fmt(100 * p.decode_tokens_per_s * 2 * b.active_bytes_per_token / 1e9 / b.read_bandwidth_gbps, 0)}% of its own bound)`);
  } else if (b?.error) {
    lines.push(`bandwidth: not measured (${b.error})`);
  }
  if (p && !p.error && !p.skipped) {
    const names = p.blas?.alternative ?? (p.blas?.mapped ?? []).join(', ');
    lines.push(`peer BLAS: ${p.blas?.name ?? 'unknown'} (${names || 'no libblas.so.3 alternative found'}), sgemm 1024^3 ${fmt(p.sgemm_1024_gflops, 0)} GFLOP/s on ${p.threads} threads`);
    if (p.blas?.name && !/openblas|blis|mkl/i.test(p.blas.name)) {
      lines.push('  WARNING: the peer is not on an optimised BLAS, so the ratios flatter the engine: apt-get install libopenblas0-pthread');
    }
  } else if (p?.skipped) {
    lines.push(`peer: skipped (${p.skipped})`);
  } else if (p?.error) {
    lines.push(`peer: FAILED (${p.error})`);
  }
  const x = res.cross_check;
  if (x && !x.error && !x.skipped) {
    lines.push(
      `cross-check (${x.tokens}-token prompt, last position): max |logit diff| = ${x.max_abs_logit_diff.toExponential(2)} (logits up to ${fmt(x.max_abs_logit, 2)}), argmax ${x.same_argmax ? 'same' : 'DIFFERS'}, selected experts identical at ${x.experts_identical}/${x.experts_compared} (layer, position)`,
    );
  } else if (x?.skipped) {
    lines.push(`cross-check: skipped (${x.skipped})`);
  } else if (x?.error) {
    lines.push(`cross-check: FAILED (${x.error})`);
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

  // 1. checkpoint
  const dir = path.join(OUT, `${opts.shape}-shaped-L${opts.layers}`);
  const ck = ensureCheckpoint(dir, opts.layers, CHECKPOINT_SEED, log, opts.shape);
  log(ck.reused ? `reusing ${path.relative(ROOT, dir)}` : `wrote ${path.relative(ROOT, dir)} in ${ck.seconds.toFixed(1)} s`);
  const config = ck.config;
  if (opts.promptTokens + opts.decodeTokens + 1 > config.max_position_embeddings) {
    throw new BenchError(`--prompt-tokens + --decode-tokens must stay below max_position_embeddings=${config.max_position_embeddings}`);
  }
  const activeBytes = activeDecodeBytes(config);

  // 2. bandwidth
  log(`measuring memory read bandwidth (${opts.threads} threads) ...`);
  const bw = measureBandwidth(opts.threads);
  if (bw.error) notes.push(`bandwidth not measured: ${bw.error}`);

  // 3. engine
  let engine;
  const noCli = opts.engine === 'rs_bench' ? '--engine rs_bench' : cliAvailable();
  if (noCli !== null && opts.engine === 'cli') throw new BenchError(`--engine cli: ${noCli}`);
  if (noCli === null) {
    log('running the engine: routescope bench ...');
    engine = engineViaCli(dir, opts);
    if (engine.error && opts.engine === 'cli') throw new BenchError(engine.error);
    if (engine.error) {
      notes.push(`the CLI bench failed, engine figures come from build/rs_bench instead (${engine.error})`);
      log(`${engine.error}; falling back to build/rs_bench`);
    }
  } else {
    notes.push(opts.engine === 'rs_bench' ? 'engine figures come from build/rs_bench (--engine rs_bench)' : `the CLI is not available (${noCli}): engine figures come from build/rs_bench`);
    log(`${noCli}; running build/rs_bench instead`);
  }
  if (!engine || engine.error) {
    engine = engineViaRsBench(dir, opts);
    if (engine.error) throw new BenchError(`no engine figures: ${engine.error}`);
  }
  // --repeat: further runs by the same route; the best prefill and the best decode count (as in the peer).
  const runs = [engine];
  for (let i = 1; i < opts.repeat; i++) {
    const again = engine.via === 'cli' ? engineViaCli(dir, opts) : engineViaRsBench(dir, opts);
    if (again.error) throw new BenchError(`engine run ${i + 1} of ${opts.repeat}: ${again.error}`);
    runs.push(again);
  }
  if (runs.length > 1) {
    engine = {
      ...engine,
      prefill_tokens_per_s: Math.max(...runs.map((r) => r.prefill_tokens_per_s)),
      decode_tokens_per_s: Math.max(...runs.map((r) => r.decode_tokens_per_s)),
      peak_rss_bytes: runs.every((r) => typeof r.peak_rss_bytes === 'number') ? Math.max(...runs.map((r) => r.peak_rss_bytes)) : null,
      runs: runs.map(({ prefill_tokens_per_s, decode_tokens_per_s, peak_rss_bytes }) => ({ prefill_tokens_per_s, decode_tokens_per_s, peak_rss_bytes })),
    };
  }
  engine.repeat = opts.repeat;
  log(`engine: prefill ${fmt(engine.prefill_tokens_per_s)} tok/s, decode ${fmt(engine.decode_tokens_per_s)} tok/s`);

  // 4. peer + 5. cross-check
  let peer;
  let cross = null;
  let realError = null;
  const checkTokens = randomTokens(Math.min(opts.checkTokens, config.max_position_embeddings - 1), config.vocab_size, opts.seed + 1);
  const checkPrefix = path.join(OUT, 'peer-check');
  if (opts.skipPeer || opts.shape !== 'olmoe') {
    peer = { skipped: opts.skipPeer ? '--skip-peer' : `the PyTorch peer implements OLMoE only (--shape ${opts.shape})` };
    cross = { skipped: 'needs the peer' };
  } else {
    const t = torchAvailable(opts.python);
    if (!t.ok) {
      peer = { skipped: `PyTorch is not importable by ${opts.python}: ${t.why}; engine figures only` };
      cross = { skipped: 'needs the peer' };
      notes.push(`PyTorch missing: ${opts.python} cannot import torch; install python3-torch and libopenblas0-pthread (Debian) for the peer`);
    } else {
      log(`running the peer: PyTorch ${t.version} eager (a few minutes) ...`);
      fs.rmSync(`${checkPrefix}.logits.f32`, { force: true });
      peer = runPeer(opts.python, dir, opts, checkTokens, checkPrefix);
      if (peer.error) {
        realError = peer.error;
      } else {
        log(`peer: prefill ${fmt(peer.prefill_tokens_per_s)} tok/s, decode ${fmt(peer.decode_tokens_per_s)} tok/s, BLAS ${peer.blas?.name}`);
        if (checkTokens.length === 0) cross = { skipped: '--check-tokens 0' };
        else if (noCli !== null) cross = { skipped: `needs the CLI (${noCli})` };
        else {
          log(`cross-check: routescope inspect on ${checkTokens.length} tokens ...`);
          cross = crossCheck(dir, opts, checkTokens, checkPrefix);
          if (cross.error) realError = `cross-check: ${cross.error}`;
        }
      }
    }
  }

  // 6. report
  const peerOk = peer && !peer.error && !peer.skipped;
  const ratios = peerOk
    ? {
        prefill: engine.prefill_tokens_per_s / peer.prefill_tokens_per_s,
        decode: engine.decode_tokens_per_s / peer.decode_tokens_per_s,
      }
    : null;
  if (ratios) {
    ratios.target = TARGET_RATIO;
    ratios.prefill_met = ratios.prefill >= TARGET_RATIO;
    ratios.decode_met = ratios.decode >= TARGET_RATIO;
  }
  const bandwidth = bw.error
    ? { error: bw.error, active_bytes_per_token: activeBytes }
    : {
        read_bandwidth_gbps: bw.read_bandwidth_gbps,
        active_bytes_per_token: activeBytes,
        bound_tokens_per_s: (bw.read_bandwidth_gbps * 1e9) / activeBytes,
      };
  if (!bw.error) {
    bandwidth.fraction_of_bound = engine.decode_tokens_per_s / bandwidth.bound_tokens_per_s;
    bandwidth.target_fraction = TARGET_BOUND_FRACTION;
    bandwidth.fraction_met = bandwidth.fraction_of_bound >= TARGET_BOUND_FRACTION;
  }
  const loadAfter = os.loadavg();
  if (Math.max(...loadBefore, ...loadAfter) > opts.threads + 0.5) {
    notes.push(`the machine was busy with other work (load average up to ${Math.max(...loadBefore, ...loadAfter).toFixed(2)} on ${os.availableParallelism()} CPUs): absolute figures are noisy, compare the ratios`);
  }
  const results = {
    date: new Date().toISOString(),
    machine: {
      cpu_model: cpu.model,
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
    decode_tokens: opts.decodeTokens,
    shape: opts.shape,
    config,
    checkpoint: { dir: path.relative(ROOT, dir), reused: ck.reused, file_bytes: ck.fileBytes, write_seconds: ck.seconds },
    engine,
    peer,
    ratios,
    bandwidth,
    cross_check: cross,
    notes,
  };
  fs.writeFileSync(path.join(OUT, 'results.json'), JSON.stringify(results, null, 2) + '\n');
  process.stdout.write(opts.json ? JSON.stringify(results) + '\n' : table(results) + '\n');
  if (!opts.skipAdapt && opts.shape === 'olmoe') {
    // 7. test-time adaptation overhead (its own script; a failure there is reported, not hidden)
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
