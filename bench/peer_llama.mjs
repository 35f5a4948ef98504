#!/usr/bin/env node
// The bench's llama.cpp peer: node-llama-cpp (installed in bench/peers/, prebuilt CPU binaries) on a GGUF of the
// bench checkpoint. One process per measurement so that its peak RSS is its own and a crash stays here.
//
//   node bench/peer_llama.mjs --model FILE.gguf --vocab V --threads T --check-tokens 1,2,3 --check-out PREFIX
//       writes PREFIX.logits.f32 (last-position logits of the prompt) and prints JSON
//   node bench/peer_llama.mjs --model FILE.gguf --vocab V --threads T --prompt-tokens N --decode-tokens M [--seed S] [--mmap on|off]
//       times one prefill of N random tokens and M greedy single-token steps; prints JSON
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const PEERS_DIR = path.join(HERE, 'peers');
const ENTRY = path.join(PEERS_DIR, 'node_modules', 'node-llama-cpp', 'dist', 'index.js');

/** Why the llama.cpp peer cannot run, or null when it is installed. */
export function llamaPeerMissing() {
  if (!fs.existsSync(ENTRY)) return `node-llama-cpp is not installed in ${path.relative(process.cwd(), PEERS_DIR)} (npm run bench installs it; or: cd bench/peers && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm ci --ignore-scripts --omit=optional)`;
  if (!fs.existsSync(path.join(PEERS_DIR, 'node_modules', '@node-llama-cpp', 'linux-x64', 'bins'))) return 'the prebuilt @node-llama-cpp/linux-x64 binaries are missing';
  return null;
}

/** The release of llama.cpp the package bundles and its version (read from the package, not the network). */
export function llamaPeerBuild() {
  const pkgDir = path.join(PEERS_DIR, 'node_modules', 'node-llama-cpp');
  const read = (f) => {
    try {
      return JSON.parse(fs.readFileSync(f, 'utf8'));
    } catch {
      return null;
    }
  };
  const pkg = read(path.join(pkgDir, 'package.json'));
  const info = read(path.join(pkgDir, 'llama', 'llama.cpp.info.json'));
  const bins = read(path.join(PEERS_DIR, 'node_modules', '@node-llama-cpp', 'linux-x64', 'bins', 'linux-x64', '_nlcBuildMetadata.json'));
  return {
    node_llama_cpp: pkg?.version ?? null,
    llama_cpp_repo: info?.llamaCppGithubRepo ?? null,
    llama_cpp_release: info?.tag ?? null,
    prebuilt_release: bins?.buildOptions?.llamaCpp?.release ?? null,
  };
}

/** Deterministic token ids (mulberry32): the prompts the bench times and cross-checks (bench/run.mjs imports it). */
export function randomTokens(n, vocab, seed) {
  let state = (seed ^ 0x5bd1e995) >>> 0;
  const out = [];
  for (let i = 0; i < n; i++) {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out.push(((t ^ (t >>> 14)) >>> 0) % vocab);
  }
  return out;
}

async function main() {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      threads: { type: 'string', default: '2' },
      'prompt-tokens': { type: 'string', default: '512' },
      'decode-tokens': { type: 'string', default: '32' },
      seed: { type: 'string', default: '0' },
      vocab: { type: 'string' },
      'check-tokens': { type: 'string' },
      'check-out': { type: 'string' },
      mmap: { type: 'string', default: 'on' },
    },
    strict: true,
  });
  if (!values.model) throw new Error('--model FILE.gguf is required');
  const missing = llamaPeerMissing();
  if (missing) throw new Error(missing);
  const threads = Number(values.threads);
  const { getLlama, LlamaLogLevel } = await import(pathToFileURL(ENTRY).href);
  // Prebuilt CPU binaries only: never download or compile anything.
  const llama = await getLlama({ gpu: false, build: 'never', usePrebuiltBinaries: true, skipDownload: true, logLevel: LlamaLogLevel.error, progressLogs: false });
  const model = await llama.loadModel({ modelPath: values.model, gpuLayers: 0, useMmap: values.mmap !== 'off' });
  const vocab = Number(values.vocab ?? 0);
  if (!(vocab > 0)) throw new Error('--vocab N (the model\'s vocabulary size) is required');
  const check = values['check-tokens'];
  const promptTokens = Number(values['prompt-tokens']);
  const decodeTokens = Number(values['decode-tokens']);
  const contextSize = check ? check.split(',').length + 8 : promptTokens + decodeTokens + 8;
  // node-llama-cpp's default batch (512 tokens, also the micro-batch) is llama.cpp's own default micro-batch: a
  // longer prompt is evaluated in batches of 512 as llama.cpp users run it.
  const ctx = await model.createContext({ contextSize, threads: { ideal: threads, min: threads }, sequences: 1 });
  const seq = ctx.getSequence();
  // Which of the package's CPU backend variants ggml loaded for this CPU (libggml-cpu-<variant>.so).
  let cpuBackend = null;
  try {
    cpuBackend = /libggml-cpu-([\w-]+)\.so/.exec(fs.readFileSync('/proc/self/maps', 'utf8'))?.[1] ?? null;
  } catch {
    // not Linux
  }
  const base = {
    build: llamaPeerBuild(),
    cpu_backend: cpuBackend,
    build_type: llama.buildType,
    system_info: llama.systemInfo,
    threads: ctx.currentThreads ?? threads,
    flash_attention: ctx.flashAttention ?? null,
    batch_size: ctx.batchSize,
    vocab_size: vocab,
  };
  if (check) {
    const tokens = check.split(',').map(Number);
    const items = tokens.map((t, i) => (i === tokens.length - 1 ? [t, { generateNext: { logits: true } }] : t));
    const out = await seq.controlledEvaluate(items);
    const logits = out[tokens.length - 1]?.next?.logits;
    if (!logits) throw new Error('node-llama-cpp returned no logits for the last position');
    // A Map token -> logit over the whole vocabulary: write it as a dense float32 row.
    if (!(logits instanceof Map) || logits.size !== vocab) throw new Error(`expected ${vocab} logits, got ${logits.size ?? logits.length}`);
    const row = new Float32Array(vocab);
    for (const [t, v] of logits) row[t] = v;
    fs.writeFileSync(`${values['check-out']}.logits.f32`, Buffer.from(row.buffer));
    process.stdout.write(JSON.stringify({ ...base, tokens: tokens.length, logits: row.length }) + '\n');
  } else {
    const tokens = randomTokens(promptTokens, vocab, Number(values.seed) + 7);
    const greedy = { generateNext: { token: true, options: { temperature: 0 } } };
    const items = tokens.map((t, i) => (i === tokens.length - 1 ? [t, greedy] : t));
    // The same warm-up as `routescope bench`: one untimed prefill of the prompt and one single-token step, then an
    // empty sequence.
    await seq.controlledEvaluate(items);
    await seq.clearHistory();
    await seq.controlledEvaluate([[tokens[0], greedy]]);
    await seq.clearHistory();
    const cpuSeconds = (since) => {
      const d = process.cpuUsage(since);
      return (d.user + d.system) / 1e6;
    };
    let t0 = performance.now();
    let c0 = process.cpuUsage();
    const out = await seq.controlledEvaluate(items);
    const prefill = (performance.now() - t0) / 1000;
    const prefillCpu = cpuSeconds(c0);
    let next = out[tokens.length - 1]?.next?.token;
    if (typeof next !== 'number') throw new Error('no token after the prefill');
    t0 = performance.now();
    c0 = process.cpuUsage();
    for (let i = 0; i < decodeTokens; i++) {
      const r = await seq.controlledEvaluate([[next, greedy]]);
      next = r[0]?.next?.token;
      if (typeof next !== 'number') throw new Error(`no token at decode step ${i}`);
    }
    const decode = (performance.now() - t0) / 1000;
    const decodeCpu = cpuSeconds(c0);
    process.stdout.write(
      JSON.stringify({
        ...base,
        prompt_tokens: promptTokens,
        decode_tokens: decodeTokens,
        prefill_tokens_per_s: promptTokens / prefill,
        prefill_cpu_seconds: prefillCpu,
        decode_tokens_per_s: decodeTokens / decode,
        decode_cpu_seconds: decodeCpu,
        peak_rss_bytes: process.resourceUsage().maxRSS * 1024,
      }) + '\n',
    );
  }
  await ctx.dispose();
  await model.dispose();
  await llama.dispose();
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().then(
    () => process.exit(0),
    (e) => {
      process.stderr.write(`peer_llama: ${e?.message ?? e}\n`);
      process.exit(1);
    },
  );
}
