// `routescope bench` (prefill and decode throughput, peak memory) and `routescope info` (what the engine read).
import * as path from 'node:path';
import type { Command } from 'commander';
import { CliError, parseInteger } from './args';
import { formatBytes } from '../../../common/src/format';
import { describeModel, jsonText, modelInfoJson } from './output';
import { action, commonOptions, engineCall, out, withModel, type CommonOptions } from './setup';

interface BenchOptions extends CommonOptions {
  promptTokens: string;
  decodeTokens: string;
  seed: string;
}

/** Deterministic in-vocabulary token ids (mulberry32). */
function randomTokens(count: number, vocab: number, seed: number): number[] {
  let state = seed >>> 0;
  const next = (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return Array.from({ length: count }, () => Math.floor(next() * vocab));
}

async function bench(options: BenchOptions): Promise<void> {
  const promptTokens = parseInteger('--prompt-tokens', options.promptTokens, 1, 1_000_000);
  const decodeTokens = parseInteger('--decode-tokens', options.decodeTokens, 0, 1_000_000);
  const seed = parseInteger('--seed', options.seed, 0);
  await withModel(options, async ({ model, info }) => {
    const limit = info.maxPositionEmbeddings;
    if (limit > 0 && promptTokens + decodeTokens > limit) {
      throw new CliError(`--prompt-tokens + --decode-tokens = ${promptTokens + decodeTokens} exceed max_position_embeddings=${limit} of ${path.join(info.dir, 'config.json')}`);
    }
    const tokens = randomTokens(promptTokens + 1, info.vocabSize, seed);
    const prompt = Int32Array.from(tokens.slice(0, promptTokens));
    const session = model.createSession(promptTokens + decodeTokens);

    // Decode runs the engine's own generation loop, as the product generates: greedy, no stop token, one
    // single-token step per generated token (llama.cpp's peer likewise samples greedily in native code each step).
    const greedy = (maxNewTokens: number) => ({ maxNewTokens, temperature: 0, topP: 1, seed: 0, stopTokens: [] });
    // Warm-up: one full-length prefill maps the weights and sizes the engine's buffers (llama.cpp likewise allocates
    // its compute buffers and KV cache when a context is created, outside any timing), and two single-token steps;
    // then the timed runs start from an empty cache.
    await engineCall(session, () => session.forward(prompt, { logits: 'last' }));
    session.reset();
    await engineCall(session, () => session.generate(Int32Array.of(tokens[0]), greedy(2)));
    session.reset();

    // CPU seconds of the whole process (all engine threads) beside wall time: on a machine shared with other work,
    // tokens per CPU-second move far less than tokens per second.
    const cpuSeconds = (since: NodeJS.CpuUsage): number => {
      const d = process.cpuUsage(since);
      return (d.user + d.system) / 1e6;
    };
    let t0 = performance.now();
    let c0 = process.cpuUsage();
    await engineCall(session, () => session.forward(prompt, { logits: 'last' }));
    const prefillSeconds = (performance.now() - t0) / 1000;
    const prefillCpuSeconds = cpuSeconds(c0);
    t0 = performance.now();
    c0 = process.cpuUsage();
    let generated = 0;
    if (decodeTokens > 0) {
      const first = Int32Array.of(tokens[promptTokens]);
      generated = (await engineCall(session, () => session.generate(first, greedy(decodeTokens)))).tokens.length;
      if (generated !== decodeTokens) throw new CliError(`the engine generated ${generated} of ${decodeTokens} tokens`);
    }
    const decodeSeconds = (performance.now() - t0) / 1000;
    const decodeCpuSeconds = cpuSeconds(c0);
    const peakRssBytes = process.resourceUsage().maxRSS * 1024;
    const report = {
      prompt_tokens: promptTokens,
      decode_tokens: decodeTokens,
      generated_tokens: generated,
      prefill_seconds: prefillSeconds,
      prefill_tokens_per_s: promptTokens / prefillSeconds,
      prefill_cpu_seconds: prefillCpuSeconds,
      decode_seconds: decodeSeconds,
      decode_cpu_seconds: decodeCpuSeconds,
      decode_tokens_per_s: decodeTokens > 0 ? decodeTokens / decodeSeconds : null,
      peak_rss_bytes: peakRssBytes,
      model: modelInfoJson(info),
    };
    if (options.json) {
      out(jsonText(report) + '\n');
      return;
    }
    out(`${describeModel(info)}\n`);
    out(`weights ${info.weights}: ${formatBytes(info.weightBytes)}\n`);
    out(`prefill: ${promptTokens} tokens in ${prefillSeconds.toFixed(3)} s = ${report.prefill_tokens_per_s.toFixed(1)} tokens/s\n`);
    if (decodeTokens > 0) out(`decode:  ${decodeTokens} tokens in ${decodeSeconds.toFixed(3)} s = ${(decodeTokens / decodeSeconds).toFixed(1)} tokens/s\n`);
    out(`peak RSS: ${formatBytes(peakRssBytes)}\n`);
  });
}

async function info(options: CommonOptions): Promise<void> {
  await withModel(options, async ({ info }) => {
    if (options.json) {
      out(jsonText(modelInfoJson(info)) + '\n');
      return;
    }
    out(`${info.dir}\n${describeModel(info)}\n`);
    out(`hidden ${info.hiddenSize}, heads ${info.numHeads}/${info.numKvHeads} × ${info.headDim}, expert width ${info.expertWidth}`);
    out(`${info.sharedExpertWidth ? `, shared expert ${info.sharedExpertWidth}` : ''}, vocab ${info.vocabSize}, context ${info.maxPositionEmbeddings}\n`);
    out(`routing: ${info.routingRule}\n`);
    out(`weights ${info.weights}: ${formatBytes(info.weightBytes)} in ${info.shards} file${info.shards === 1 ? '' : 's'}; KV cache ${info.kvCache}\n`);
    for (const w of info.warnings) out(`warning: ${w}\n`);
  });
}

export function registerBenchCommands(program: Command): void {
  commonOptions(program.command('bench').description('prefill and decode throughput and peak memory'))
    .option('--prompt-tokens <n>', 'prefill length (random in-vocabulary tokens)', '512')
    .option('--decode-tokens <n>', 'tokens generated greedily after the prefill, one single-token step each', '64')
    .option('--seed <n>', 'seed of the random tokens', '0')
    .action(action(bench));

  commonOptions(program.command('info').description('what the engine read from a model folder')).action(action(info));
}
