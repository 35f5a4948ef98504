// CLI commands of the test-time adaptation methods: `reference build` (C3PO reference sets) and `eval` (the
// evaluation harness); their item helpers serve `headroom` (cli/headroom.ts) too. Ctrl-C stops them between items
// and keeps what is done (cli/setup.ts itemByItem).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import type { NativeModelInfo, NativeSession } from '../engine/native';
import type { RoutingSpan } from '../../../common/src/routing';
import { loadTokenizer, type ModelTokenizer } from '../checkpoint/tokenizer';
import { C3po } from '../adapt/c3po';
import { OnnxEmbedder, SelfEmbedder, type Embedder } from '../adapt/embedder';
import { C3PO_METHOD, EVAL_METHODS, describeMethod, runEval, type EvalMethod, type EvalSummary } from '../adapt/eval';
import { sameEmbedder, describeEmbedder } from '../adapt/identity';
import { buildReference, checkReferenceOutput, loadReference, saveReference, type ReferenceSet } from '../adapt/reference';
import {
  DEFAULT_C3PO,
  DEFAULT_EMBEDDING,
  DEFAULT_REROUTE,
  checkC3poSettings,
  checkRerouteSettings,
  type C3poSettings,
  type RerouteSettings,
} from '../adapt/settings';
import { TaskRunner, readTasks, type TaskItem } from '../adapt/tasks';
import { CliError, UsageError, parseInteger, parseIntegerList, parseNumber } from './args';
import { ExpertLoad, formatExpertLoad } from './expertLoad';
import { jsonText } from './output';
import { action, commonOptions, itemByItem, out, withModel, type CommonOptions, type OpenModel } from './setup';

interface EmbedderFlags {
  embedder?: string;
  embeddingLayer?: string;
}

async function openEmbedder(flags: EmbedderFlags, info: NativeModelInfo, session: NativeSession, encode: (t: string) => number[]): Promise<Embedder> {
  if (flags.embedder !== undefined && flags.embeddingLayer !== undefined) {
    throw new UsageError('--embedding-layer applies to the self-embedding only; leave it out with --embedder');
  }
  if (flags.embedder !== undefined) return OnnxEmbedder.open(flags.embedder, DEFAULT_EMBEDDING.maxTokens);
  const layer = flags.embeddingLayer !== undefined ? parseInteger('--embedding-layer', flags.embeddingLayer, 0, info.numLayers) : info.numLayers;
  return new SelfEmbedder(session, encode, layer);
}

/** A progress line: rewritten in place on a terminal, every 50 items (and the last) otherwise. */
export function progress(text: string, done: number, total: number): void {
  if (process.stderr.isTTY) process.stderr.write(`\r\x1b[2K${text}${done === total ? '\n' : ''}`);
  else if (done % 50 === 0 || done === total) process.stderr.write(`${text}\n`);
}

function pct(x: number): string {
  return `${(100 * x).toFixed(1)}%`;
}

/** The items of --data (the first --limit of them), read before the model opens. */
export function readItems(options: { data: string; limit?: string }): TaskItem[] {
  const limit = options.limit !== undefined ? parseInteger('--limit', options.limit, 1) : undefined;
  const items = readTasks(options.data);
  return limit !== undefined ? items.slice(0, limit) : items;
}

export interface ItemSetup extends OpenModel {
  tokenizer: ModelTokenizer;
  /** The session the items run on (Ctrl-C cancels the item in flight on it). */
  session: NativeSession;
  runner: TaskRunner;
}

/** Opens the model with its tokenizer and a session to run items on; closes the model afterwards. */
export function withItemRunner<T>(options: CommonOptions, body: (setup: ItemSetup) => Promise<T>): Promise<T> {
  return withModel(options, (opened) => {
    const tokenizer = loadTokenizer(opened.dir);
    return body({ ...opened, tokenizer, session: opened.model.createSession(), runner: new TaskRunner(opened.info, tokenizer) });
  });
}

// ---------------------------------------------------------------------------------------------------------------
// reference build

interface ReferenceBuildOptions extends CommonOptions, EmbedderFlags {
  data: string;
  out: string;
  limit?: string;
}

async function referenceBuild(options: ReferenceBuildOptions): Promise<void> {
  const items = readItems(options);
  const outDir = path.resolve(options.out);
  checkReferenceOutput(outDir, `--out ${options.out}`);
  await withItemRunner(options, async ({ info, dir, tokenizer, session, runner }) => {
    const embedder = await openEmbedder(options, info, session, (t) => tokenizer.encode(t));
    const t0 = performance.now();
    try {
      const built = await itemByItem(session, (shouldStop) =>
        buildReference({
          session,
          runner,
          embedder,
          items,
          source: options.data,
          shouldStop,
          onProgress: (p) => progress(`[${p.done}/${p.total}] kept ${p.kept} (${pct(p.kept / p.done)} answered correctly)`, p.done, p.total),
        }),
      );
      if (built.entries.length === 0) throw new CliError(`${options.data}: the model answered none of the ${items.length} items correctly; no reference set written`);
      const manifest = saveReference(outDir, info, dir, embedder.identity, built, { file: path.resolve(options.data), items: items.length });
      const seconds = (performance.now() - t0) / 1000;
      const report = {
        out: outDir,
        items: items.length,
        kept: built.entries.length,
        embedder: describeEmbedder(embedder.identity),
        embedding_dim: manifest.embedding_dim,
        seconds,
      };
      if (options.json) out(jsonText(report) + '\n');
      else
        out(
          `reference set ${outDir}: kept ${report.kept} of ${report.items} items (answered correctly), ` +
            `embeddings: ${report.embedder}, ${report.embedding_dim} dims, ${seconds.toFixed(1)} s\n`,
        );
    } catch (error) {
      if ((error as { code?: string }).code === 'CANCELLED') throw new CliError('cancelled; no reference set written', 130);
      throw error;
    } finally {
      await embedder.dispose();
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// eval

interface EvalCliOptions extends CommonOptions, EmbedderFlags {
  data: string;
  method: EvalMethod;
  reference?: string;
  limit?: string;
  log?: string;
  expertLoad?: boolean;
  warmPrefixes?: boolean;
  k?: string;
  steps?: string;
  lrStart?: string;
  lrEnd?: string;
  criticalLayers?: string;
  coreExperts?: string;
  dedup?: C3poSettings['dedup'];
  dedupThreshold?: string;
  optionLoss?: boolean;
  rerouteSteps?: string;
  rerouteLr?: string;
  rerouteInterval?: string;
  rerouteFraction?: string;
  rerouteLayers?: string;
  rerouteResetAdam?: boolean;
  rerouteWindow?: RerouteSettings['window'];
}

function c3poSettingsFrom(o: EvalCliOptions): C3poSettings {
  const s: C3poSettings = { ...DEFAULT_C3PO };
  if (o.k !== undefined) s.k = parseInteger('--k', o.k, 1);
  if (o.steps !== undefined) s.steps = parseInteger('--steps', o.steps, 0);
  if (o.criticalLayers !== undefined) s.criticalLayers = parseInteger('--critical-layers', o.criticalLayers, 0);
  if (o.coreExperts !== undefined) s.coreExperts = parseInteger('--core-experts', o.coreExperts, 1);
  if (o.lrStart !== undefined) s.lrStart = parseNumber('--lr-start', o.lrStart, Number.MIN_VALUE, 1e6);
  if (o.lrEnd !== undefined) s.lrEnd = parseNumber('--lr-end', o.lrEnd, Number.MIN_VALUE, 1e6);
  if (o.dedup !== undefined) s.dedup = o.dedup;
  if (o.dedupThreshold !== undefined) s.dedupThreshold = parseNumber('--dedup-threshold', o.dedupThreshold, -1, 1);
  if (o.optionLoss) s.optionLoss = true;
  checkC3poSettings(s);
  return s;
}

function rerouteSettingsFrom(o: EvalCliOptions): RerouteSettings {
  const s: RerouteSettings = { ...DEFAULT_REROUTE, layers: [] };
  if (o.rerouteSteps !== undefined) s.steps = parseInteger('--reroute-steps', o.rerouteSteps, 0);
  if (o.rerouteLr !== undefined) s.lr = parseNumber('--reroute-lr', o.rerouteLr, Number.MIN_VALUE, 100);
  if (o.rerouteInterval !== undefined) s.interval = parseInteger('--reroute-interval', o.rerouteInterval, 1);
  if (o.rerouteFraction !== undefined) s.layerFraction = parseNumber('--reroute-fraction', o.rerouteFraction, Number.MIN_VALUE, 1);
  if (o.rerouteLayers !== undefined) s.layers = parseIntegerList('--reroute-layers', o.rerouteLayers);
  if (o.rerouteResetAdam) s.resetAdamEachRound = true;
  if (o.rerouteWindow !== undefined) s.window = o.rerouteWindow;
  checkRerouteSettings(s);
  return s;
}

async function evaluate(options: EvalCliOptions): Promise<void> {
  const method = options.method;
  const needsReference = method in C3PO_METHOD;
  if (needsReference && options.reference === undefined) throw new UsageError(`--method ${method} needs --reference REF (build one with routescope reference build)`);
  const c3poSettings = c3poSettingsFrom(options);
  const rerouteSettings = rerouteSettingsFrom(options);
  const items = readItems(options);

  await withItemRunner(options, async ({ model, info, dir, tokenizer, session, runner }) => {
    const load = options.expertLoad ? new ExpertLoad(info.moeLayers, info.numExperts) : undefined;
    let reference: ReferenceSet | undefined;
    let embedder: Embedder | undefined;
    let c3po: C3po | undefined;
    let logFd: number | undefined;
    try {
      if (needsReference) {
        reference = loadReference(options.reference!, info, dir);
        // The embedder the set was built with, unless one is given (then it must match). Its own session: the
        // evaluation keeps each item's prompt cached in `session` while the method runs.
        const recorded = reference.manifest.embedder;
        if (options.embedder === undefined && options.embeddingLayer === undefined) {
          embedder =
            recorded.kind === 'onnx'
              ? await OnnxEmbedder.open(recorded.dir, DEFAULT_EMBEDDING.maxTokens)
              : new SelfEmbedder(model.createSession(), (t) => tokenizer.encode(t), recorded.layer);
        } else {
          embedder = await openEmbedder(options, info, model.createSession(), (t) => tokenizer.encode(t));
        }
        if (!sameEmbedder(recorded, embedder.identity)) {
          throw new CliError(
            `${options.reference}: built with ${describeEmbedder(recorded)}, but ${describeEmbedder(embedder.identity)} is configured; use the same embedder or rebuild the set`,
          );
        }
        c3po = new C3po({ model, info, reference, embedder, settings: c3poSettings, encode: (t) => tokenizer.encode(t) });
      }
      logFd = openLog(options.log);
      if (!options.json) {
        out(`${describeMethod(method)} on ${items.length} items of ${options.data}`);
        if (reference) out(`, reference ${reference.dir} (${reference.entries.length} items), critical layers ${c3po!.layers.join(',')}, duplicates dropped: ${c3po!.dedup}`);
        out('\n');
      }
      let warmup: { prefixes: number; seconds: number } | undefined;
      if (c3po && options.warmPrefixes) {
        const t0 = performance.now();
        const prefixes = await itemByItem(session, (shouldStop) => c3po!.warm(shouldStop));
        warmup = { prefixes, seconds: (performance.now() - t0) / 1000 };
        if (!options.json) out(`cached ${prefixes} reference prefixes in ${warmup.seconds.toFixed(1)} s (not counted in the time per item)\n`);
      }
      const summary = await itemByItem(session, (shouldStop) =>
        runEval({
          model,
          session,
          runner,
          items,
          method,
          ...(c3po ? { c3po } : {}),
          c3poSettings,
          rerouteSettings,
          shouldStop,
          ...(load ? { onRouting: (item: TaskItem, r: RoutingSpan, last: number) => load.add(item.skill, r, last) } : {}),
          onRecord: (record) => {
            if (logFd !== undefined) fs.writeSync(logFd, jsonText(record) + '\n');
          },
          onProgress: (p) => progress(`[${p.done}/${p.total}] none ${pct(p.noneCorrect / p.done)}  ${method} ${pct(p.methodCorrect / p.done)}`, p.done, p.total),
        }),
      );
      const extra = {
        ...(options.log ? { log: path.resolve(options.log) } : {}),
        ...(load ? { expert_load: load.toJSON() } : {}),
        ...(warmup ? { prefix_warmup: warmup } : {}),
      };
      if (options.json) out(jsonText({ ...summary, ...extra }) + '\n');
      else out(formatSummary(summary, options.log) + (load ? formatExpertLoad(load.toJSON()) : ''));
      if (summary.cancelled) {
        throw new CliError(`cancelled after ${summary.completed} of ${summary.items} items${options.log ? `; ${options.log} holds them` : ''}`, 130);
      }
    } finally {
      if (logFd !== undefined) fs.closeSync(logFd);
      c3po?.dispose();
      await embedder?.dispose();
    }
  });
}

/** Opens --log for writing (one JSON line per item as it finishes). */
export function openLog(file: string | undefined): number | undefined {
  if (file === undefined) return undefined;
  try {
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    return fs.openSync(file, 'w');
  } catch (error) {
    throw new CliError(`--log ${file}: cannot write (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
  }
}

export function formatSummary(s: EvalSummary, log?: string): string {
  const lines: string[] = [];
  const name = s.method;
  if (s.analysis_only) lines.push('ANALYSIS ONLY: the oracle optimises on each test item\'s own label; its accuracy is an upper bound, not a result.');
  lines.push(`${s.completed} of ${s.items} items${s.cancelled ? ' (cancelled)' : ''}`);
  const diff = (100 * (s.accuracy.method - s.accuracy.none)).toFixed(1);
  if (name === 'none') lines.push(`accuracy: ${pct(s.accuracy.none)}`);
  else {
    lines.push(`accuracy: none ${pct(s.accuracy.none)}  ${name} ${pct(s.accuracy.method)}  (${Number(diff) >= 0 ? '+' : ''}${diff} points)`);
    lines.push(`flips: wrong→right ${s.flips.wrong_to_right}, right→wrong ${s.flips.right_to_wrong}`);
  }
  const skills = Object.keys(s.per_skill).sort();
  if (skills.length > 1 || (skills.length === 1 && skills[0] !== '(none)')) {
    const w = Math.max(5, ...skills.map((k) => k.length));
    const plain = name === 'none';
    lines.push(`${'skill'.padEnd(w)}  items    none${plain ? '' : `  ${name.padStart(7)}`}`);
    for (const k of skills) {
      const r = s.per_skill[k];
      lines.push(`${k.padEnd(w)}  ${String(r.items).padStart(5)}  ${pct(r.none).padStart(6)}${plain ? '' : `  ${pct(r.method).padStart(7)}`}`);
    }
  }
  if (name === 'none') lines.push(`time per item: ${s.mean_ms.none.toFixed(1)} ms`);
  else {
    lines.push(
      `time per item: none ${s.mean_ms.none.toFixed(1)} ms, ${name} ${s.mean_ms.method.toFixed(1)} ms, overhead ${s.overhead.toFixed(2)}× ` +
        `(CPU time: ${s.mean_cpu_ms.none.toFixed(1)} ms vs ${s.mean_cpu_ms.method.toFixed(1)} ms, ${s.cpu_overhead.toFixed(2)}×)`,
    );
  }
  if (log) lines.push(`log: ${log}`);
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------------------------

export function registerAdaptCommands(program: Command): void {
  const reference = program.command('reference').description('C3PO reference sets');
  commonOptions(reference.command('build').description('run labelled items; keep the correctly answered ones with their routing and embedding'))
    .requiredOption('--data <file>', 'labelled items (JSONL: multiple choice or generative)')
    .requiredOption('--out <dir>', 'the reference set folder to write')
    .option('--embedder <dir>', 'ONNX text embedder folder (model.onnx + tokenizer.json); default: the model\'s own hidden state')
    .option('--embedding-layer <l>', 'self-embedding: mean-pooled hidden state entering layer l (default: the last layer\'s output)')
    .option('--limit <n>', 'only the first n items')
    .action(action(referenceBuild));

  commonOptions(program.command('eval').description('accuracy, flips and time of an adaptation method against the plain model'))
    .requiredOption('--data <file>', 'evaluation items (JSONL: multiple choice or generative)')
    .addOption(new Option('--method <name>', 'adaptation method').choices([...EVAL_METHODS]).default('none'))
    .option('--reference <dir>', 'C3PO reference set (routescope reference build)')
    .option('--limit <n>', 'only the first n items')
    .option('--log <file>', 'per-item JSONL log (answers, correctness, ω or δ summary)')
    .option('--expert-load', 'also report the plain model\'s expert load per skill and layer (multiple-choice prompts)')
    .option('--warm-prefixes', 'C3PO: cache every reference prompt before the first item (reported apart; the time per item is then the steady state)')
    .option('--embedder <dir>', 'ONNX text embedder folder; default: the one the reference set was built with')
    .option('--embedding-layer <l>', 'self-embedding layer; default: the one the reference set was built with')
    .option('--k <n>', `C3PO neighbours (default ${DEFAULT_C3PO.k})`)
    .option('--steps <n>', `C3PO NGD steps (default ${DEFAULT_C3PO.steps})`)
    .option('--lr-start <x>', `C3PO NGD: Adam on log ω, cosine schedule start (default ${DEFAULT_C3PO.lrStart})`)
    .option('--lr-end <x>', `C3PO NGD: cosine schedule end (default ${DEFAULT_C3PO.lrEnd})`)
    .option('--critical-layers <n>', 'C3PO critical layers: the last n MoE layers (default 5, every MoE layer when there are fewer)')
    .option('--core-experts <n>', `C3PO core experts per layer (default ${DEFAULT_C3PO.coreExperts})`)
    .addOption(new Option('--dedup <rule>', 'C3PO duplicates of the test item dropped from the reference set (default auto: the similarity cut for a text embedder, exact questions for the model\'s own embeddings)').choices(['auto', 'similarity', 'exact-question', 'none']))
    .option('--dedup-threshold <x>', `C3PO similarity cut for --dedup similarity (default ${DEFAULT_C3PO.dedupThreshold})`)
    .option('--option-loss', 'C3PO: the surrogate loss of multiple-choice neighbours over their option letters only (default: the whole vocabulary)')
    .option('--reroute-steps <n>', `rerouting optimiser steps per round (default ${DEFAULT_REROUTE.steps})`)
    .option('--reroute-lr <x>', `rerouting learning rate (default ${DEFAULT_REROUTE.lr})`)
    .option('--reroute-interval <m>', `rerouting round every m generated tokens (default ${DEFAULT_REROUTE.interval})`)
    .option('--reroute-fraction <r>', `rerouting: adapt this fraction of layers each round, least confident first (default ${DEFAULT_REROUTE.layerFraction})`)
    .option('--reroute-layers <list>', 'rerouting candidate layers (default: every MoE layer)')
    .option('--reroute-reset-adam', 'rerouting: reset Adam\'s moments every round (default: one optimiser per layer for the request)')
    .addOption(new Option('--reroute-window <w>', 'rerouting: a round\'s loss over the whole context or the tokens since the last round (default context)').choices(['context', 'since-last-round']))
    .action(action(evaluate));

}
