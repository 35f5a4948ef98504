// The `routescope` CLI: inspect, grad, generate, bench and info over the native engine. Its flags and JSON keys
// are a scripting contract (README "CLI reference"). Errors: one line "routescope: <message>" on stderr, exit 1
// (2 for a malformed command line, 130 when cancelled), never a stack trace.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import { loadAddon, packageRoot } from '../engine/addon';
import type { NativeModel, NativeModelInfo, NativeSession } from '../engine/native';
import { RoutingCollector } from '../engine/routing';
import { PatchError, parsePatch, serializePatch } from '../../../common/src/patch';
import { loadTokenizer, type ModelTokenizer } from '../checkpoint/tokenizer';
import { CliError, UsageError, parseInteger, parseIntegerList, parseNumber, parseSpan } from './args';
import { describeModel, f32Row, f32Rows, formatBytes, formatF32, formatNumber, intRow, jsonText, modelInfoJson, requireFinite, writeJsonObject } from './output';
import { FILE_KINDS, readTextFile } from '../inputFiles';
import type { LayerRoutingRows } from '../engine/routing';
import { formatRoutingTable, formatWeight, visibleToken } from './table';
import { adaptInterrupt, registerAdaptCommands } from './adapt';
import { jsonErrorText } from '../../../common/src/jsonError';

const VERSION = '0.1.0';
const DEMO_MODEL = path.join('media', 'demo-model');
const DEFAULT_NEW_TOKENS = 64;

// ---------------------------------------------------------------------------------------------------------------
// Output and cancellation.

const out = (chunk: string): void => {
  process.stdout.write(chunk);
};

function terminalWidth(): number {
  const columns = process.stdout.columns || Number(process.env.COLUMNS) || 100;
  return Math.max(40, columns);
}

let activeSession: NativeSession | undefined;
let interrupted = false;

function onInterrupt(): void {
  if (adaptInterrupt()) return; // reference build / eval stop between items and keep their partial log
  if (interrupted || !activeSession) process.exit(130); // nothing to cancel, or asked twice
  interrupted = true;
  activeSession.cancel();
}

/** Runs one engine call with Ctrl-C mapped to Session.cancel(). */
async function engineCall<T>(session: NativeSession, call: () => Promise<T>): Promise<T> {
  activeSession = session;
  try {
    return await call();
  } finally {
    activeSession = undefined;
  }
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ').trim();
}

/** Engine and library errors → CliError; anything unknown is reported as internal. */
function toCliError(error: unknown): CliError {
  if (error instanceof CliError) return error;
  if (error instanceof Error) {
    const code = (error as Error & { code?: unknown }).code;
    if (code === 'CANCELLED' || interrupted) return new CliError('cancelled', 130);
    if (typeof code === 'string' && code !== '') return new CliError(oneLine(error.message));
    return new CliError(`internal error: ${oneLine(error.message)}`);
  }
  return new CliError(`internal error: ${String(error)}`);
}

// ---------------------------------------------------------------------------------------------------------------
// Shared steps: model, tokenizer, tokens, patch.

interface CommonOptions {
  model?: string;
  threads?: number;
  backend?: 'auto' | 'cpu' | 'cuda';
  json?: boolean;
}

function resolveModelDir(flag: string | undefined): string {
  if (flag === undefined) {
    const demo = path.join(packageRoot(), DEMO_MODEL);
    if (!fs.existsSync(path.join(demo, 'config.json'))) {
      throw new CliError(`no --model given and the demo model is missing (${demo}); pass --model DIR`);
    }
    return demo;
  }
  const dir = path.resolve(flag);
  let stat: fs.Stats;
  try {
    stat = fs.statSync(dir);
  } catch {
    throw new CliError(`${flag}: model folder not found`);
  }
  if (!stat.isDirectory()) throw new CliError(`${flag}: not a folder (--model takes a Hugging Face model folder)`);
  return dir;
}

function openModel(options: CommonOptions): { model: NativeModel; info: NativeModelInfo; dir: string } {
  const dir = resolveModelDir(options.model);
  const addon = loadAddon();
  const model = addon.loadModel(dir, {
    ...(options.threads !== undefined ? { threads: options.threads } : {}),
    ...(options.backend !== undefined ? { backend: options.backend } : {}),
  });
  return { model, info: model.info(), dir };
}

function tryTokenizer(dir: string): ModelTokenizer | undefined {
  try {
    return loadTokenizer(dir);
  } catch {
    return undefined;
  }
}

interface TokenOptions {
  prompt?: string;
  tokens?: string;
}

/** --prompt or --tokens, checked for form before the model loads. */
type TokenInput = { flag: '--tokens'; ids: number[] } | { flag: '--prompt'; text: string };

function parseTokenInput(options: TokenOptions): TokenInput {
  if ((options.prompt === undefined) === (options.tokens === undefined)) {
    throw new UsageError('give exactly one of --prompt TEXT or --tokens 1,2,3');
  }
  if (options.tokens !== undefined) return { flag: '--tokens', ids: parseIntegerList('--tokens', options.tokens, Number.MIN_SAFE_INTEGER) };
  return { flag: '--prompt', text: options.prompt! };
}

/** The token ids, checked against the vocabulary and the context length (`reserve` = tokens still to come). */
function resolveTokens(input: TokenInput, dir: string, info: NativeModelInfo, tokenizer: ModelTokenizer | undefined, reserve = 0): number[] {
  let tokens: number[];
  if (input.flag === '--tokens') {
    tokens = input.ids;
  } else {
    const tok = tokenizer ?? loadTokenizer(dir); // throws the tokenizer's own message when absent
    tokens = tok.encode(input.text);
    if (tokens.length === 0) throw new CliError('--prompt: the text encodes to no tokens');
  }
  checkTokens(input.flag, tokens, info, reserve);
  return tokens;
}

export function checkTokens(flag: string, tokens: readonly number[], info: NativeModelInfo, reserve = 0): void {
  const bad = tokens.find((t) => !Number.isInteger(t) || t < 0 || t >= info.vocabSize);
  if (bad !== undefined) {
    throw new CliError(
      `${flag}: token id ${bad} is outside the vocabulary of ${path.join(info.dir, 'config.json')} (vocab_size=${info.vocabSize}: ids 0..${info.vocabSize - 1})`,
    );
  }
  const limit = info.maxPositionEmbeddings;
  if (limit > 0 && tokens.length + reserve > limit) {
    const what = reserve > 0 ? `${tokens.length} tokens + ${reserve} new tokens` : `${tokens.length} tokens`;
    throw new CliError(
      `${flag}: ${what} exceed max_position_embeddings=${limit} of ${path.join(info.dir, 'config.json')}`,
    );
  }
}

function readPatch(file: string | undefined, info: NativeModelInfo): string | undefined {
  if (file === undefined) return undefined;
  if (!fs.existsSync(file)) throw new CliError(`${file}: patch file not found`);
  const text = readTextFile(file, FILE_KINDS.patch, (message) => new CliError(message));
  try {
    return serializePatch(parsePatch(text, file, info));
  } catch (error) {
    if (error instanceof PatchError) throw new CliError(error.message);
    throw error;
  }
}

function checkLayers(flag: string, layers: number[], info: NativeModelInfo): void {
  for (const layer of layers) {
    if (layer >= info.numLayers) throw new CliError(`${flag}: layer ${layer} is out of range (the model has ${info.numLayers} layers: 0..${info.numLayers - 1})`);
    if (!info.moeLayers.includes(layer)) throw new CliError(`${flag}: layer ${layer} is a dense layer without a router`);
  }
}

function labelFor(tokenizer: ModelTokenizer | undefined, id: number): string {
  return tokenizer ? tokenizer.tokenText(id) : `#${id}`;
}

/** Top-n next tokens of one logits row, as people read them. */
function formatTopTokens(row: Float32Array, tokenizer: ModelTokenizer | undefined, n = 5): string {
  let max = -Infinity;
  for (const v of row) if (v > max) max = v;
  let sum = 0;
  for (const v of row) sum += Math.exp(v - max);
  const order = [...row.keys()].sort((a, b) => row[b] - row[a]).slice(0, n);
  return order
    .map((id) => `${truncateLabel(visibleToken(labelFor(tokenizer, id)))} ${formatWeight(Math.exp(row[id] - max) / sum)}`)
    .join('  ');
}

/** Refuses routing that holds NaN/Inf before anything is printed. */
function requireFiniteRouting(dir: string, layers: LayerRoutingRows[]): void {
  for (const l of layers) {
    l.positions.forEach((p, i) => {
      requireFinite(`${dir}: the router logits of layer ${l.layer} at position ${p}`, l.routerLogits[i]);
      requireFinite(`${dir}: the routing weights of layer ${l.layer} at position ${p}`, l.weights[i]);
    });
  }
}

function truncateLabel(text: string): string {
  const cs = Array.from(text);
  return cs.length > 16 ? cs.slice(0, 15).join('') + '…' : text;
}

// ---------------------------------------------------------------------------------------------------------------
// Commands.

interface InspectOptions extends CommonOptions, TokenOptions {
  patch?: string;
  logits: 'last' | 'all' | 'none';
}

async function inspect(options: InspectOptions): Promise<void> {
  const input = parseTokenInput(options);
  const { model, info, dir } = openModel(options);
  try {
    const tokenizer = tryTokenizer(dir);
    const tokens = resolveTokens(input, dir, info, tokenizer);
    const patch = readPatch(options.patch, info);
    const session = model.createSession(tokens.length);
    const routing = new RoutingCollector();
    const result = await engineCall(session, () =>
      session.forward(Int32Array.from(tokens), { ...(patch ? { patch } : {}), logits: options.logits, onLayer: routing.onLayer }),
    );
    const layers = routing.layers(0, tokens.length);
    const vocab = result.rows > 0 ? result.logits.length / result.rows : info.vocabSize;
    requireFinite(`${dir}: the logits`, result.logits, vocab);
    requireFiniteRouting(dir, layers);

    if (options.json) {
      writeJsonObject(out, [
        ['tokens', intRow(tokens)],
        ['logits', f32Rows(result.logits, vocab)],
        [
          'layers',
          layers.map(
            (l) =>
              `{"layer":${l.layer},"router_logits":[${l.routerLogits.map(f32Row).join(',')}],` +
              `"experts":[${l.experts.map(intRow).join(',')}],"weights":[${l.weights.map(f32Row).join(',')}]}`,
          ),
        ],
      ]);
      return;
    }
    out(`${describeModel(info)}\n`);
    out(`${tokens.length} tokens${patch ? `, patch ${options.patch}` : ''} — cells: top-1 expert and its weight\n\n`);
    out(
      formatRoutingTable(
        layers.map((l) => {
          const byPosition = new Map(l.positions.map((p, i) => [p, i]));
          const rows = tokens.map((_, p) => byPosition.get(p));
          return {
            layer: l.layer,
            experts: rows.map((i) => (i === undefined ? undefined : l.experts[i])),
            weights: rows.map((i) => (i === undefined ? undefined : l.weights[i])),
          };
        }),
        tokens.map((t) => labelFor(tokenizer, t)),
        { width: terminalWidth() },
      ),
    );
    if (result.rows > 0) {
      const last = result.logits.subarray((result.rows - 1) * vocab, result.rows * vocab);
      out(`\nnext token: ${formatTopTokens(last, tokenizer)}\n`);
    }
  } finally {
    model.close();
  }
}

interface GradOptions extends CommonOptions, TokenOptions {
  layers: string;
  patch?: string;
  target?: string;
  mix?: string;
}

interface MixRequest {
  layer: number;
  position: number;
  logits: number[];
}

/** Largest float32 magnitude: logits beyond it would become ±Infinity, and the loss NaN. */
const F32_MAX = 3.4028234663852886e38;

function readMix(file: string, info: NativeModelInfo, tokenCount: number): MixRequest {
  const text = readTextFile(file, FILE_KINDS.mix, (message) => new CliError(message));
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new CliError(`${file}: invalid JSON (${jsonErrorText(error)})`);
  }
  const mix = value as Partial<MixRequest> | null;
  if (
    !mix ||
    typeof mix !== 'object' ||
    !Number.isInteger(mix.layer) ||
    !Number.isInteger(mix.position) ||
    !Array.isArray(mix.logits) ||
    !mix.logits.every((v) => typeof v === 'number' && Number.isFinite(v))
  ) {
    throw new CliError(`${file}: expected {"layer": l, "position": p, "logits": [E numbers]}`);
  }
  checkLayers(file, [mix.layer!], info);
  if (mix.position! < 0 || mix.position! >= tokenCount) throw new CliError(`${file}: position ${mix.position} is outside the ${tokenCount} tokens`);
  if (mix.logits.length !== info.numExperts) throw new CliError(`${file}: logits has ${mix.logits.length} values, expected ${info.numExperts} (one per expert)`);
  const beyond = mix.logits.findIndex((v) => Math.abs(v) > F32_MAX);
  if (beyond >= 0) throw new CliError(`${file}: logits[${beyond}] = ${mix.logits[beyond]} is beyond float32 range (|x| <= 3.4e38)`);
  return mix as MixRequest;
}

async function grad(options: GradOptions): Promise<void> {
  const layers = parseIntegerList('--layers', options.layers);
  const target = options.target !== undefined ? parseSpan('--target', options.target) : undefined;
  const input = parseTokenInput(options);
  const { model, info, dir } = openModel(options);
  try {
    checkLayers('--layers', layers, info);
    const tokens = resolveTokens(input, dir, info, undefined);
    if (tokens.length < 2) throw new CliError(`${input.flag}: the loss needs at least 2 tokens`);
    if (target && (target[0] < 1 || target[1] > tokens.length)) {
      throw new CliError(`--target: ${target[0]}:${target[1]} must lie within 1:${tokens.length} (targets are predicted from the token before)`);
    }
    const patch = readPatch(options.patch, info);
    const mix = options.mix !== undefined ? readMix(options.mix, info, tokens.length) : undefined;
    const session = model.createSession(tokens.length);
    const result = await engineCall(session, () =>
      session.grad(Int32Array.from(tokens), {
        ...(patch ? { patch } : {}),
        layers,
        ...(target ? { target } : {}),
        ...(mix ? { mix: { layer: mix.layer, position: mix.position, logits: Float32Array.from(mix.logits) } } : {}),
      }),
    );
    const keys = Object.keys(result.biasGrad).sort((a, b) => Number(a) - Number(b));
    requireFinite(`${dir}: the loss`, [result.loss]);
    for (const key of keys) requireFinite(`${dir}: the router bias gradients of layer ${key}`, result.biasGrad[key]);
    if (result.mixGrad) requireFinite(`${options.mix ?? dir}: the mix gradients`, result.mixGrad);
    if (options.json) {
      const entries: [string, string | string[]][] = [
        ['loss', formatNumber(result.loss)],
        ['bias_grad', `{${keys.map((k) => `${JSON.stringify(k)}:${f32Row(result.biasGrad[k])}`).join(',')}}`],
      ];
      if (mix && result.mixGrad) entries.push(['mix_grad', f32Row(result.mixGrad)]);
      writeJsonObject(out, entries);
      return;
    }
    const span = target ? `${target[0]}:${target[1]}` : `1:${tokens.length}`;
    out(`loss ${result.loss.toFixed(6)} (mean next-token cross-entropy over targets ${span})\n`);
    for (const key of keys) {
      out(`\nlayer ${key}: d loss / d router bias\n`);
      const g = result.biasGrad[key];
      const cells = [...g].map((v, e) => `${String(e).padStart(3)} ${v >= 0 ? '+' : ''}${v.toExponential(2)}`);
      for (let i = 0; i < cells.length; i += 6) out(`  ${cells.slice(i, i + 6).join('   ')}\n`);
    }
    if (mix && result.mixGrad) out(`\nmix grad at layer ${mix.layer}, position ${mix.position}: ${[...result.mixGrad].map(formatF32).join(' ')}\n`);
  } finally {
    model.close();
  }
}

interface GenerateOptions extends CommonOptions, TokenOptions {
  maxNewTokens?: string;
  temperature: string;
  topP: string;
  seed: string;
  patch?: string;
  routing?: boolean;
}

async function generate(options: GenerateOptions): Promise<void> {
  const explicitMax = options.maxNewTokens !== undefined;
  let maxNewTokens = explicitMax ? parseInteger('--max-new-tokens', options.maxNewTokens!, 1, 1_000_000) : DEFAULT_NEW_TOKENS;
  const temperature = parseNumber('--temperature', options.temperature, 0, 100);
  const topP = parseNumber('--top-p', options.topP, Number.MIN_VALUE, 1);
  const seed = parseInteger('--seed', options.seed, 0);
  const input = parseTokenInput(options);
  const { model, info, dir } = openModel(options);
  try {
    const tokenizer = tryTokenizer(dir);
    const prompt = resolveTokens(input, dir, info, tokenizer, explicitMax ? maxNewTokens : 1);
    // Without --max-new-tokens, generation simply stops at the end of the context.
    if (!explicitMax && info.maxPositionEmbeddings > 0) maxNewTokens = Math.min(maxNewTokens, info.maxPositionEmbeddings - prompt.length);
    const patch = readPatch(options.patch, info);
    const session = model.createSession(prompt.length + maxNewTokens);
    const routing = options.json && options.routing ? new RoutingCollector() : undefined;

    // Streams text as tokens arrive; a token ending inside a multi-byte character waits for the next one.
    const streamed: number[] = [];
    let shown = '';
    const onToken = (token: number): void => {
      streamed.push(token);
      if (options.json) return;
      if (!tokenizer) {
        out(`${token} `);
        return;
      }
      const text = tokenizer.decode(streamed);
      if (text.endsWith('\uFFFD')) return;
      if (text.startsWith(shown)) out(text.slice(shown.length));
      else out(text); // decoding changed earlier text (rare); show the new piece whole
      shown = text;
    };
    if (!options.json) out(tokenizer && options.prompt !== undefined ? options.prompt : `${prompt.join(' ')} | `);
    const result = await engineCall(session, () =>
      session.generate(Int32Array.from(prompt), {
        ...(patch ? { patch } : {}),
        maxNewTokens,
        temperature,
        topP,
        seed,
        stopTokens: info.eosTokenIds,
        onToken,
        ...(routing ? { onLayer: routing.onLayer } : {}),
      }),
    );
    const generated = [...result.tokens];
    if (routing) requireFiniteRouting(dir, routing.layers(prompt.length));
    if (options.json) {
      const entries: [string, string | string[]][] = [
        ['prompt_tokens', intRow(prompt)],
        ['tokens', intRow(generated)],
        ['text', JSON.stringify(tokenizer ? tokenizer.decode(generated) : null)],
      ];
      if (routing) {
        entries.push([
          'layers',
          routing
            .layers(prompt.length)
            .map(
              (l) =>
                `{"layer":${l.layer},"positions":${intRow(l.positions)},"router_logits":[${l.routerLogits.map(f32Row).join(',')}],` +
                `"experts":[${l.experts.map(intRow).join(',')}],"weights":[${l.weights.map(f32Row).join(',')}]}`,
            ),
        ]);
      }
      writeJsonObject(out, entries);
      return;
    }
    if (tokenizer) {
      const text = tokenizer.decode(generated);
      if (text.startsWith(shown) && text.length > shown.length) out(text.slice(shown.length));
    }
    out('\n');
  } finally {
    model.close();
  }
}

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
  const { model, info } = openModel(options);
  try {
    const limit = info.maxPositionEmbeddings;
    if (limit > 0 && promptTokens + decodeTokens > limit) {
      throw new CliError(`--prompt-tokens + --decode-tokens = ${promptTokens + decodeTokens} exceed max_position_embeddings=${limit} of ${path.join(info.dir, 'config.json')}`);
    }
    const tokens = randomTokens(promptTokens + decodeTokens, info.vocabSize, seed);
    const prompt = Int32Array.from(tokens.slice(0, promptTokens));
    const session = model.createSession(promptTokens + decodeTokens);

    // Warm-up: touch the weights and the kernels once, then start from an empty cache.
    await engineCall(session, () => session.forward(prompt.subarray(0, Math.min(promptTokens, 16)), { logits: 'last' }));
    await engineCall(session, () => session.forward(Int32Array.of(tokens[0]), { logits: 'last' }));
    session.reset();

    let t0 = performance.now();
    await engineCall(session, () => session.forward(prompt, { logits: 'last' }));
    const prefillSeconds = (performance.now() - t0) / 1000;
    t0 = performance.now();
    for (let i = 0; i < decodeTokens; i++) {
      const token = Int32Array.of(tokens[promptTokens + i]);
      await engineCall(session, () => session.forward(token, { logits: 'last' }));
    }
    const decodeSeconds = (performance.now() - t0) / 1000;
    const peakRssBytes = process.resourceUsage().maxRSS * 1024;
    const report = {
      prompt_tokens: promptTokens,
      decode_tokens: decodeTokens,
      prefill_seconds: prefillSeconds,
      prefill_tokens_per_s: promptTokens / prefillSeconds,
      decode_seconds: decodeSeconds,
      decode_tokens_per_s: decodeTokens > 0 ? decodeTokens / decodeSeconds : null,
      peak_rss_bytes: peakRssBytes,
      model: modelInfoJson(info),
    };
    if (options.json) {
      out(jsonText(report) + '\n');
      return;
    }
    out(`${describeModel(info)}\n`);
    out(`weights mapped: ${formatBytes(info.weightBytes)}\n`);
    out(`prefill: ${promptTokens} tokens in ${prefillSeconds.toFixed(3)} s = ${report.prefill_tokens_per_s.toFixed(1)} tokens/s\n`);
    if (decodeTokens > 0) out(`decode:  ${decodeTokens} tokens in ${decodeSeconds.toFixed(3)} s = ${(decodeTokens / decodeSeconds).toFixed(1)} tokens/s\n`);
    out(`peak RSS: ${formatBytes(peakRssBytes)}\n`);
  } finally {
    model.close();
  }
}

async function info(options: CommonOptions): Promise<void> {
  const { model, info } = openModel(options);
  try {
    if (options.json) {
      out(jsonText(modelInfoJson(info)) + '\n');
      return;
    }
    out(`${info.dir}\n${describeModel(info)}\n`);
    out(`hidden ${info.hiddenSize}, heads ${info.numHeads}/${info.numKvHeads} × ${info.headDim}, expert width ${info.expertWidth}`);
    out(`${info.sharedExpertWidth ? `, shared expert ${info.sharedExpertWidth}` : ''}, vocab ${info.vocabSize}, context ${info.maxPositionEmbeddings}\n`);
    out(`weights mapped: ${formatBytes(info.weightBytes)} in ${info.shards} file${info.shards === 1 ? '' : 's'}\n`);
  } finally {
    model.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Program.

function commonOptions(command: Command): Command {
  return command
    .option('--model <dir>', `Hugging Face model folder (default: the demo model, ${DEMO_MODEL})`)
    .addOption(
      new Option('--threads <n>', 'engine threads (default: all cores)').argParser((v) => parseInteger('--threads', v, 1, 4096)),
    )
    .addOption(new Option('--backend <name>', 'compute backend').choices(['auto', 'cpu', 'cuda']))
    .option('--json', 'print one JSON object for scripts');
}

function tokenOptions(command: Command): Command {
  return command
    .option('--prompt <text>', 'text, encoded with the model folder\'s tokenizer.json')
    .option('--tokens <ids>', 'token ids, comma-separated (no tokenizer needed)');
}

type Action<T> = (options: T) => Promise<void>;

function action<T>(run: Action<T>): (options: T) => Promise<void> {
  return async (options: T) => {
    try {
      await run(options);
    } catch (error) {
      fail(error);
    }
  };
}

function fail(error: unknown): void {
  const cliError = toCliError(error);
  process.stderr.write(`routescope: ${oneLine(cliError.message)}\n`);
  if (process.env.ROUTESCOPE_DEBUG && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
  process.exitCode = cliError.exitCode;
}

export function buildProgram(): Command {
  const program = new Command('routescope')
    .description('Run Hugging Face Mixture-of-Experts checkpoints and see which experts every token uses.')
    .version(VERSION)
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({
      outputError: (text, write) => write(`routescope: ${oneLine(text.replace(/^error:\s*/i, ''))}\n`),
    });

  tokenOptions(commonOptions(program.command('inspect').description('one forward pass: routing of every layer and token, and logits')))
    .option('--patch <file>', 'routing patch JSON (mask / force / bias / mix per layer)')
    .addOption(new Option('--logits <which>', 'logits rows to output').choices(['last', 'all', 'none']).default('last'))
    .action(action(inspect));

  tokenOptions(commonOptions(program.command('grad').description('loss and its gradient w.r.t. a router-logit bias per layer')))
    .requiredOption('--layers <list>', 'layers whose router bias gradient to compute, e.g. 1,2')
    .option('--patch <file>', 'routing patch JSON applied during the forward')
    .option('--target <start:end>', 'target token indices [start, end) of the loss (default 1:T)')
    .option('--mix <file>', 'also d loss / d theta for {"layer","position","logits": theta}, the softmax row replaced by softmax(theta)')
    .action(action(grad));

  tokenOptions(commonOptions(program.command('generate').description('generate text, streaming it as tokens arrive')))
    .option('--max-new-tokens <n>', `tokens to generate at most (default ${DEFAULT_NEW_TOKENS}, within the context)`)
    .option('--temperature <t>', 'sampling temperature, 0 = greedy', '0')
    .option('--top-p <p>', 'nucleus sampling mass', '1')
    .option('--seed <n>', 'sampling seed', '0')
    .option('--patch <file>', 'routing patch JSON')
    .option('--routing', 'with --json: include the routing of the generated positions')
    .action(action(generate));

  commonOptions(program.command('bench').description('prefill and decode throughput and peak memory'))
    .option('--prompt-tokens <n>', 'prefill length (random in-vocabulary tokens)', '512')
    .option('--decode-tokens <n>', 'single-token decode steps after the prefill', '64')
    .option('--seed <n>', 'seed of the random tokens', '0')
    .action(action(bench));

  commonOptions(program.command('info').description('what the engine read from a model folder')).action(action(info));

  registerAdaptCommands(program, commonOptions, action);

  // Options after the subcommand belong to it; global flags are only --help and --version.
  for (const command of program.commands) {
    command.exitOverride().configureOutput({
      outputError: (text, write) => write(`routescope: ${oneLine(text.replace(/^error:\s*/i, ''))}\n`),
    });
  }
  return program;
}

export async function main(argv: string[]): Promise<void> {
  process.on('SIGINT', onInterrupt);
  process.on('SIGTERM', onInterrupt);
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(process.exitCode ?? 0); // output piped into e.g. head
    throw error;
  });
  const program = buildProgram();
  try {
    if (argv.length <= 2) {
      program.outputHelp();
      process.exitCode = 2;
      return;
    }
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      const ok = ['commander.helpDisplayed', 'commander.version', 'commander.help'].includes(error.code);
      process.exitCode = ok ? 0 : 2;
      return;
    }
    fail(error);
  }
}

// bin/routescope.js calls main(); running the bundle directly works too.
if (require.main === module) void main(process.argv);
