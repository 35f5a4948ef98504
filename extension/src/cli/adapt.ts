// CLI commands of the test-time adaptation methods: `reference build` (C3PO reference sets) and `eval` (the
// evaluation harness). Registered by main.ts; Ctrl-C stops them between items (main.ts forwards the signal here).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import { loadAddon, packageRoot } from '../engine/addon';
import type { NativeLayerRouting, NativeModel, NativeModelInfo, NativeSession } from '../engine/native';
import { loadTokenizer } from '../checkpoint/tokenizer';
import { C3po } from '../adapt/c3po';
import { OnnxEmbedder, SelfEmbedder, type Embedder } from '../adapt/embedder';
import { C3PO_METHOD, EVAL_METHODS, describeMethod, runEval, type EvalMethod, type EvalSummary } from '../adapt/eval';
import { sameEmbedder, describeEmbedder } from '../adapt/identity';
import { buildReference, checkReferenceOutput, loadReference, saveReference, type ReferenceSet } from '../adapt/reference';
import { DEFAULT_C3PO, DEFAULT_EMBEDDING, DEFAULT_REROUTE, checkC3poSettings, checkRerouteSettings, type C3poSettings, type RerouteSettings } from '../adapt/settings';
import { TaskRunner, readTasks, type TaskItem } from '../adapt/tasks';
import { CliError, UsageError, parseInteger, parseIntegerList, parseNumber } from './args';
import { jsonText } from './output';

// ---------------------------------------------------------------------------------------------------------------
// Interruption: the first Ctrl-C asks the running command to stop after the current step (the engine call in
// flight is cancelled where it can be); a second one exits at once.

let stopRequested = false;
let running: { session?: NativeSession } | undefined;

/** Called by main.ts on SIGINT/SIGTERM; true when an adaptation command took the signal. */
export function adaptInterrupt(): boolean {
  if (!running) return false;
  if (stopRequested) process.exit(130);
  stopRequested = true;
  process.stderr.write('\nroutescope: stopping after the current item (Ctrl-C again to quit at once)\n');
  running.session?.cancel();
  return true;
}

const out = (chunk: string): void => {
  process.stdout.write(chunk);
};

interface CommonOptions {
  model?: string;
  threads?: number;
  backend?: 'auto' | 'cpu' | 'cuda';
  json?: boolean;
}

function openModel(options: CommonOptions): { model: NativeModel; info: NativeModelInfo; dir: string } {
  let dir: string;
  if (options.model === undefined) {
    dir = path.join(packageRoot(), 'media', 'demo-model');
    if (!fs.existsSync(path.join(dir, 'config.json'))) throw new CliError(`no --model given and the demo model is missing (${dir}); pass --model DIR`);
  } else {
    dir = path.resolve(options.model);
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new CliError(`${options.model}: model folder not found`);
  }
  const model = loadAddon().loadModel(dir, {
    ...(options.threads !== undefined ? { threads: options.threads } : {}),
    ...(options.backend !== undefined ? { backend: options.backend } : {}),
  });
  return { model, info: model.info(), dir };
}

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
  return new SelfEmbedder(session, encode, layer, DEFAULT_EMBEDDING.maxTokens);
}

function progressLine(text: string, final = false): void {
  if (process.stderr.isTTY) process.stderr.write(`\r\x1b[2K${text}${final ? '\n' : ''}`);
}

function pct(x: number): string {
  return `${(100 * x).toFixed(1)}%`;
}

// ---------------------------------------------------------------------------------------------------------------
// reference build

interface ReferenceBuildOptions extends CommonOptions, EmbedderFlags {
  data: string;
  out: string;
  limit?: string;
}

async function referenceBuild(options: ReferenceBuildOptions): Promise<void> {
  const limit = options.limit !== undefined ? parseInteger('--limit', options.limit, 1) : undefined;
  let items = readTasks(options.data);
  if (limit !== undefined) items = items.slice(0, limit);
  const outDir = path.resolve(options.out);
  checkReferenceOutput(outDir, `--out ${options.out}`);
  const { model, info, dir } = openModel(options);
  const tokenizer = loadTokenizer(dir);
  const session = model.createSession();
  const runner = new TaskRunner(info, tokenizer);
  const embedder = await openEmbedder(options, info, session, (t) => tokenizer.encode(t));
  running = { session };
  stopRequested = false;
  const t0 = performance.now();
  try {
    const built = await buildReference({
      session,
      runner,
      embedder,
      items,
      source: options.data,
      shouldStop: () => stopRequested,
      onProgress: (p) => {
        progressLine(`[${p.done}/${p.total}] kept ${p.kept} (${pct(p.kept / p.done)} answered correctly)`, p.done === p.total);
        if (!process.stderr.isTTY && (p.done % 50 === 0 || p.done === p.total)) process.stderr.write(`[${p.done}/${p.total}] kept ${p.kept}\n`);
      },
    });
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
    running = undefined;
    await embedder.dispose();
    model.close();
  }
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
  k?: string;
  steps?: string;
  criticalLayers?: string;
  coreExperts?: string;
  rerouteSteps?: string;
  rerouteLr?: string;
  rerouteInterval?: string;
  rerouteFraction?: string;
  rerouteLayers?: string;
}

function c3poSettingsFrom(o: EvalCliOptions): C3poSettings {
  const s: C3poSettings = { ...DEFAULT_C3PO };
  if (o.k !== undefined) s.k = parseInteger('--k', o.k, 1);
  if (o.steps !== undefined) s.steps = parseInteger('--steps', o.steps, 0);
  if (o.criticalLayers !== undefined) s.criticalLayers = parseInteger('--critical-layers', o.criticalLayers, 0);
  if (o.coreExperts !== undefined) s.coreExperts = parseInteger('--core-experts', o.coreExperts, 1);
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
  checkRerouteSettings(s);
  return s;
}

async function evaluate(options: EvalCliOptions): Promise<void> {
  const method = options.method;
  const needsReference = method in C3PO_METHOD;
  if (needsReference && options.reference === undefined) throw new UsageError(`--method ${method} needs --reference REF (build one with routescope reference build)`);
  const limit = options.limit !== undefined ? parseInteger('--limit', options.limit, 1) : undefined;
  const c3poSettings = c3poSettingsFrom(options);
  const rerouteSettings = rerouteSettingsFrom(options);
  let items = readTasks(options.data);
  if (limit !== undefined) items = items.slice(0, limit);

  const { model, info, dir } = openModel(options);
  const tokenizer = loadTokenizer(dir);
  const session = model.createSession();
  const runner = new TaskRunner(info, tokenizer);
  const load = options.expertLoad ? new ExpertLoad(info.moeLayers, info.numExperts) : undefined;
  let reference: ReferenceSet | undefined;
  let embedder: Embedder | undefined;
  let c3po: C3po | undefined;
  let logFd: number | undefined;
  running = { session };
  stopRequested = false;
  try {
    if (needsReference) {
      reference = loadReference(options.reference!, info, dir);
      // The embedder the set was built with, unless one is given (then it must match).
      const recorded = reference.manifest.embedder;
      if (options.embedder === undefined && options.embeddingLayer === undefined) {
        embedder =
          recorded.kind === 'onnx'
            ? await OnnxEmbedder.open(recorded.dir, DEFAULT_EMBEDDING.maxTokens)
            : new SelfEmbedder(model.createSession(), (t) => tokenizer.encode(t), recorded.layer, DEFAULT_EMBEDDING.maxTokens);
      } else {
        // its own session: the evaluation keeps each item's prompt cached in `session` while the method runs
        embedder = await openEmbedder(options, info, model.createSession(), (t) => tokenizer.encode(t));
      }
      if (!sameEmbedder(recorded, embedder.identity)) {
        throw new CliError(
          `${options.reference}: built with ${describeEmbedder(recorded)}, but ${describeEmbedder(embedder.identity)} is configured; use the same embedder or rebuild the set`,
        );
      }
      c3po = new C3po({ model, info, reference, embedder, settings: c3poSettings, encode: (t) => tokenizer.encode(t) });
    }
    if (options.log !== undefined) {
      try {
        fs.mkdirSync(path.dirname(path.resolve(options.log)), { recursive: true });
        logFd = fs.openSync(options.log, 'w');
      } catch (error) {
        throw new CliError(`--log ${options.log}: cannot write (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
      }
    }
    if (!options.json) {
      out(`${describeMethod(method)} on ${items.length} items of ${options.data}`);
      if (reference) out(`, reference ${reference.dir} (${reference.entries.length} items), critical layers ${c3po!.layers.join(',')}`);
      out('\n');
    }
    const summary = await runEval({
      model,
      session,
      runner,
      items,
      method,
      ...(c3po ? { c3po } : {}),
      c3poSettings,
      rerouteSettings,
      shouldStop: () => stopRequested,
      ...(load ? { onRouting: (item: TaskItem, r: NativeLayerRouting, last: number) => load.add(item.skill, r, last) } : {}),
      onRecord: (record) => {
        if (logFd !== undefined) fs.writeSync(logFd, jsonText(record) + '\n');
      },
      onProgress: (p) => {
        const text = `[${p.done}/${p.total}] none ${pct(p.noneCorrect / p.done)}  ${method} ${pct(p.methodCorrect / p.done)}`;
        progressLine(text, p.done === p.total);
        if (!process.stderr.isTTY && (p.done % 50 === 0 || p.done === p.total)) process.stderr.write(`${text}\n`);
      },
    });
    const extra = { ...(options.log ? { log: path.resolve(options.log) } : {}), ...(load ? { expert_load: load.toJSON() } : {}) };
    if (options.json) out(jsonText({ ...summary, ...extra }) + '\n');
    else out(formatSummary(summary, options.log) + (load ? formatExpertLoad(load.toJSON()) : ''));
    if (summary.cancelled) {
      throw new CliError(`cancelled after ${summary.completed} of ${summary.items} items${options.log ? `; ${options.log} holds them` : ''}`, 130);
    }
  } finally {
    running = undefined;
    if (logFd !== undefined) fs.closeSync(logFd);
    c3po?.dispose();
    await embedder?.dispose();
    model.close();
  }
}

/** Share of the top-k routing slots that go to each expert, per skill and MoE layer: over every prompt position,
 *  and at the last prompt position alone (the one whose routing C3PO re-mixes). */
export interface ExpertLoadJSON {
  layers: number[];
  experts: number;
  per_skill: Record<string, { tokens: number; items: number; share: number[][]; last: number[][] }>;  // [layer row][expert], rows sum to 1
}

export class ExpertLoad {
  private readonly counts = new Map<string, { tokens: number; items: number; all: Float64Array[]; last: Float64Array[] }>();
  private readonly row: Map<number, number>;
  constructor(readonly layers: number[], readonly experts: number) {
    this.row = new Map(layers.map((l, i) => [l, i]));
  }

  add(skill: string, r: NativeLayerRouting, lastPosition: number): void {
    const i = this.row.get(r.layer);
    if (i === undefined) return;
    let c = this.counts.get(skill);
    if (!c) {
      const rows = (): Float64Array[] => this.layers.map(() => new Float64Array(this.experts));
      this.counts.set(skill, (c = { tokens: 0, items: 0, all: rows(), last: rows() }));
    }
    if (i === 0) c.tokens += r.count;
    const k = r.topK;
    for (let t = 0; t < r.count; t++) {
      for (let j = 0; j < k; j++) {
        const e = r.experts[t * k + j];
        if (e < 0 || e >= this.experts) continue;
        c.all[i][e]++;
        if (r.start + t === lastPosition) c.last[i][e]++;
      }
      if (i === 0 && r.start + t === lastPosition) c.items++;
    }
  }

  toJSON(): ExpertLoadJSON {
    const norm = (rows: Float64Array[]): number[][] =>
      rows.map((s) => {
        const total = s.reduce((a, b) => a + b, 0);
        return Array.from(s, (v) => (total ? v / total : 0));
      });
    const perSkill: ExpertLoadJSON['per_skill'] = Object.create(null); // skills are user text ("__proto__" too)
    for (const skill of [...this.counts.keys()].sort()) {
      const c = this.counts.get(skill)!;
      perSkill[skill] = { tokens: c.tokens, items: c.items, share: norm(c.all), last: norm(c.last) };
    }
    return { layers: this.layers, experts: this.experts, per_skill: perSkill };
  }
}

/** Per MoE layer: skills × experts, percent of the routing slots over all prompt tokens | at the last prompt token;
 *  the largest share of each row in brackets. */
export function formatExpertLoad(load: ExpertLoadJSON): string {
  const skills = Object.keys(load.per_skill);
  if (skills.length === 0) return 'expert load: no multiple-choice items\n';
  const w = Math.max(5, ...skills.map((s) => s.length));
  const cells = (row: number[]): string => {
    const max = Math.max(...row);
    return row.map((v) => (v === max ? `[${(100 * v).toFixed(0)}]` : (100 * v).toFixed(0)).padStart(6)).join('');
  };
  const head = Array.from({ length: load.experts }, (_, e) => `e${e}`.padStart(6)).join('');
  const lines = ['', 'expert load, % of the top-k routing slots of the multiple-choice prompts ([max] per row):',
    'all prompt tokens | the last prompt token'];
  load.layers.forEach((layer, i) => {
    lines.push(`layer ${layer}`);
    lines.push(`${'skill'.padEnd(w)} ${head}  | ${head}`);
    for (const skill of skills) lines.push(`${skill.padEnd(w)} ${cells(load.per_skill[skill].share[i])}  | ${cells(load.per_skill[skill].last[i])}`);
  });
  return lines.join('\n') + '\n';
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
  else lines.push(`time per item: none ${s.mean_ms.none.toFixed(1)} ms, ${name} ${s.mean_ms.method.toFixed(1)} ms, overhead ${s.overhead.toFixed(2)}×`);
  if (log) lines.push(`log: ${log}`);
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------------------------

export function registerAdaptCommands(
  program: Command,
  commonOptions: (command: Command) => Command,
  action: <T>(run: (options: T) => Promise<void>) => (options: T) => Promise<void>,
): void {
  const reference = program.command('reference').description('C3PO reference sets');
  commonOptions(reference.command('build').description('run labelled items; keep the correctly answered ones with their routing and embedding'))
    .requiredOption('--data <file>', 'labelled items (JSONL: multiple choice or generative)')
    .requiredOption('--out <dir>', 'the reference set folder to write')
    .option('--embedder <dir>', 'ONNX text embedder folder (model.onnx + tokenizer.json); default: the model\'s own hidden state')
    .option('--embedding-layer <l>', 'self-embedding: mean-pooled hidden state entering layer l (default: the last layer\'s output)')
    .option('--limit <n>', 'only the first n items')
    .action(action(referenceBuild));
  for (const command of reference.commands) {
    command.exitOverride().configureOutput({
      outputError: (text, write) => write(`routescope: ${text.replace(/^error:\s*/i, '').replace(/\s*\n\s*/g, ' ').trim()}\n`),
    });
  }

  commonOptions(program.command('eval').description('accuracy, flips and time of an adaptation method against the plain model'))
    .requiredOption('--data <file>', 'evaluation items (JSONL: multiple choice or generative)')
    .addOption(new Option('--method <name>', 'adaptation method').choices([...EVAL_METHODS]).default('none'))
    .option('--reference <dir>', 'C3PO reference set (routescope reference build)')
    .option('--limit <n>', 'only the first n items')
    .option('--log <file>', 'per-item JSONL log (answers, correctness, ω or δ summary)')
    .option('--expert-load', 'also report the plain model\'s expert load per skill and layer (multiple-choice prompts)')
    .option('--embedder <dir>', 'ONNX text embedder folder; default: the one the reference set was built with')
    .option('--embedding-layer <l>', 'self-embedding layer; default: the one the reference set was built with')
    .option('--k <n>', `C3PO neighbours (default ${DEFAULT_C3PO.k})`)
    .option('--steps <n>', `C3PO NGD steps (default ${DEFAULT_C3PO.steps})`)
    .option('--critical-layers <n>', 'C3PO critical layers: the last n MoE layers (default 5, or ceil(L/3) below 15 layers)')
    .option('--core-experts <n>', `C3PO core experts per layer (default ${DEFAULT_C3PO.coreExperts})`)
    .option('--reroute-steps <n>', `rerouting optimiser steps per round (default ${DEFAULT_REROUTE.steps})`)
    .option('--reroute-lr <x>', `rerouting learning rate (default ${DEFAULT_REROUTE.lr})`)
    .option('--reroute-interval <m>', `rerouting round every m generated tokens (default ${DEFAULT_REROUTE.interval})`)
    .option('--reroute-fraction <r>', 'rerouting: adapt this fraction of layers, least confident first (default 1)')
    .option('--reroute-layers <list>', 'rerouting candidate layers (default: every MoE layer)')
    .action(action(evaluate));
}
