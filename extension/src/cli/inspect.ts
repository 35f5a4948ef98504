// `routescope inspect` (one forward pass with full routing capture) and `routescope grad` (loss and router-bias
// gradients). JSON keys are a scripting contract (README "CLI reference").
import type { Command } from 'commander';
import { Option } from 'commander';
import type { NativeModelInfo } from '../engine/native';
import { LayerRouting, type RoutingSpan } from '../../../common/src/routing';
import { softmax, topIndices } from '../../../common/src/math';
import type { ModelTokenizer } from '../checkpoint/tokenizer';
import { CliError, parseIntegerList, parseSpan } from './args';
import { FILE_KINDS, readTextFile } from '../io/files';
import { describeModel, f32Row, f32Rows, formatF32, formatNumber, intRow, requireFinite, writeJsonObject } from './output';
import { visibleToken } from '../../../common/src/format';
import { formatRoutingTable, formatWeight, truncate } from './table';
import { jsonErrorText } from '../../../common/src/jsonError';
import {
  action, checkLayers, commonOptions, engineCall, labelFor, out, parseTokenInput, readPatch, resolveTokens, terminalWidth,
  tokenOptions, tryTokenizer, withModel, type CommonOptions, type TokenOptions,
} from './setup';

/** Collects the streamed spans of every MoE layer (rows = positions 0..T-1). */
export function routingRecorder(info: NativeModelInfo): { layers: Map<number, LayerRouting>; onLayer: (span: RoutingSpan) => void } {
  const layers = new Map(info.moeLayers.map((l) => [l, new LayerRouting(l, info.numExperts, info.topK, 0, info.routerScoring)]));
  return { layers, onLayer: (span) => layers.get(span.layer)?.write(span) };
}

/** Refuses routing that holds NaN/Inf (rows [from, filled) of each layer) before anything is printed. */
export function requireFiniteRouting(dir: string, layers: Iterable<LayerRouting>, from = 0): void {
  for (const l of layers) {
    const E = l.numExperts;
    const k = l.topK;
    for (let p = from; p < l.filled; p++) {
      requireFinite(`${dir}: the router logits of layer ${l.layer} at position ${p}`, l.routerLogits.subarray(p * E, (p + 1) * E));
      requireFinite(`${dir}: the routing weights of layer ${l.layer} at position ${p}`, l.weights.subarray(p * k, (p + 1) * k));
    }
  }
}

/** `"router_logits":[...],"experts":[...],"weights":[...]` of rows [from, to) of a layer. */
export function routingJson(l: LayerRouting, from = 0, to = l.filled): string {
  const E = l.numExperts;
  const k = l.topK;
  const rows = (a: Float32Array | Int32Array, width: number, format: (v: ArrayLike<number>) => string): string =>
    Array.from({ length: to - from }, (_, i) => format(a.subarray((from + i) * width, (from + i + 1) * width))).join(',');
  return `"router_logits":[${rows(l.routerLogits, E, f32Row)}],"experts":[${rows(l.experts, k, intRow)}],"weights":[${rows(l.weights, k, f32Row)}]`;
}

/** Top-n next tokens of one logits row, as people read them. */
function formatTopTokens(row: Float32Array, tokenizer: ModelTokenizer | undefined, n = 5): string {
  const probs = softmax(row);
  return topIndices(probs, n).map((id) => `${truncate(visibleToken(labelFor(tokenizer, id)), 16)} ${formatWeight(probs[id])}`).join('  ');
}

interface InspectOptions extends CommonOptions, TokenOptions {
  patch?: string;
  logits: 'last' | 'all' | 'none';
}

async function inspect(options: InspectOptions): Promise<void> {
  const input = parseTokenInput(options);
  await withModel(options, async ({ model, info, dir }) => {
    const tokenizer = tryTokenizer(dir);
    const tokens = resolveTokens(input, dir, info, tokenizer);
    const patch = readPatch(options.patch, info);
    const session = model.createSession(tokens.length);
    const routing = routingRecorder(info);
    const result = await engineCall(session, () =>
      session.forward(Int32Array.from(tokens), { ...(patch ? { patch } : {}), logits: options.logits, onLayer: routing.onLayer }),
    );
    const layers = [...routing.layers.values()];
    const vocab = result.rows > 0 ? result.logits.length / result.rows : info.vocabSize;
    requireFinite(`${dir}: the logits`, result.logits, vocab);
    requireFiniteRouting(dir, layers);
    if (options.json) {
      writeJsonObject(out, [
        ['tokens', intRow(tokens)],
        ['logits', f32Rows(result.logits, vocab)],
        ['layers', layers.map((l) => `{"layer":${l.layer},${routingJson(l)}}`)],
      ]);
      return;
    }
    out(`${describeModel(info)}\n`);
    out(`${tokens.length} tokens${patch ? `, patch ${options.patch}` : ''} — cells: top-1 expert and its weight\n\n`);
    const k = info.topK;
    out(
      formatRoutingTable(
        layers.map((l) => ({
          layer: l.layer,
          experts: tokens.map((_, p) => (p < l.filled ? l.experts.subarray(p * k, (p + 1) * k) : undefined)),
          weights: tokens.map((_, p) => (p < l.filled ? l.weights.subarray(p * k, (p + 1) * k) : undefined)),
        })),
        tokens.map((t) => labelFor(tokenizer, t)),
        { width: terminalWidth() },
      ),
    );
    if (result.rows > 0) {
      const last = result.logits.subarray((result.rows - 1) * vocab, result.rows * vocab);
      out(`\nnext token: ${formatTopTokens(last, tokenizer)}\n`);
    }
  });
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
  await withModel(options, async ({ model, info, dir }) => {
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
    out(`loss ${result.loss.toFixed(6)} (mean next-token cross-entropy over targets ${span}, nats)\n`);
    for (const key of keys) {
      out(`\nlayer ${key}: d loss / d router bias\n`);
      const g = result.biasGrad[key];
      const cells = [...g].map((v, e) => `${String(e).padStart(3)} ${v >= 0 ? '+' : ''}${v.toExponential(2)}`);
      for (let i = 0; i < cells.length; i += 6) out(`  ${cells.slice(i, i + 6).join('   ')}\n`);
    }
    if (mix && result.mixGrad) out(`\nmix grad at layer ${mix.layer}, position ${mix.position}: ${[...result.mixGrad].map(formatF32).join(' ')}\n`);
  });
}

export function registerInspectCommands(program: Command): void {
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
}
