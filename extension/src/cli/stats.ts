// `routescope stats`: routing statistics over a prompt set (stats/collect.ts, common/src/routingStats.ts — the same
// code the statistics panel runs in the engine process): activation rates per layer and expert (per group), each
// expert's top tokens and contexts, co-activation, layer-to-layer flow; with --pair A,B the activation-rate
// difference ranking (SteerMoE), and with --steer the patch masking or forcing one side's top experts, re-run on both
// sets (stats/steer.ts). --out / --csv export (stats/export.ts). Output for people, or one JSON object with --json.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import { plural, visibleToken } from '../../../common/src/format';
import { QUANTITY } from '../../../common/src/quantities';
import type { RoutingStatsResult } from '../../../common/src/routingStats';
import { activationDifference, activationRates, coActivationShare, describeExperts, expertContexts, expertTopTokens, flowCounts, meanEntropy, steeringPatch, totalCounts, type ExpertDifference, type PairSide, type SteerMode } from '../../../common/src/statsQueries';
import { loadTokenizer } from '../checkpoint/tokenizer';
import { collectStats } from '../stats/collect';
import { statsCsv, statsSafetensors, writeStatsCsv } from '../stats/export';
import { GROUP_BY, readPromptSet, type GroupBy, type PromptSet } from '../stats/promptSet';
import { evaluateSteering, type SteeringOutcome } from '../stats/steer';
import { CliError, UsageError, parseInteger } from './args';
import { describeModel, jsonText } from './output';
import { action, commonOptions, itemByItem, out, withModel, type CommonOptions } from './setup';

interface StatsCliOptions extends CommonOptions {
  data: string[];
  groupBy?: GroupBy;
  limit?: string;
  top?: string;
  tokenSlots?: string;
  pair?: string;
  steer?: SteerMode;
  steerTop?: string;
  steerSide?: PairSide;
  out?: string;
  csv?: string;
}

const pct = (x: number, d = 1): string => `${(100 * x).toFixed(d)}`;

function progress(text: string, done: number, total: number): void {
  if (process.stderr.isTTY) process.stderr.write(`\r\x1b[2K${text}${done === total ? '\n' : ''}`);
  else if (done % 500 === 0 || done === total) process.stderr.write(`${text}\n`);
}

/** The pair's group names, checked against the set's groups. */
function parsePair(text: string | undefined, set: PromptSet): [string, string] | undefined {
  if (text === undefined) return undefined;
  const parts = text.split(',').map((s) => s.trim());
  if (parts.length !== 2 || !parts[0] || !parts[1] || parts[0] === parts[1]) throw new UsageError(`--pair: expected two different groups "A,B", got "${text}"`);
  for (const p of parts) if (!set.groups.includes(p)) throw new CliError(`--pair: no group "${p}" (groups: ${set.groups.join(', ')})`);
  return [parts[0], parts[1]];
}

async function stats(options: StatsCliOptions): Promise<void> {
  const groupBy: GroupBy = options.groupBy ?? (options.data.length > 1 ? 'file' : 'skill');
  const limit = options.limit !== undefined ? parseInteger('--limit', options.limit, 1) : undefined;
  const top = options.top !== undefined ? parseInteger('--top', options.top, 1, 1000) : 10;
  const tokenSlots = options.tokenSlots !== undefined ? parseInteger('--token-slots', options.tokenSlots, 1, 65536) : undefined;
  if ((options.steer !== undefined || options.steerTop !== undefined) && options.pair === undefined) throw new UsageError('--steer needs --pair A,B');
  const steerTop = options.steerTop !== undefined ? parseInteger('--steer-top', options.steerTop, 1, 1_000_000) : 2;
  const set = readPromptSet(options.data, groupBy, limit);
  const pair = parsePair(options.pair, set);
  await withModel(options, async ({ model, info, dir }) => {
    const tokenizer = loadTokenizer(dir);
    const session = model.createSession();
    const started = performance.now();
    const collected = await itemByItem(session, (shouldStop) => collectStats({
      session, info, encode: (t) => tokenizer.encode(t), prompts: set.prompts, groups: set.groups, topTokens: Math.max(top, 32),
      ...(tokenSlots !== undefined ? { tokenSlots } : {}),
      shouldStop,
      onProgress: (p) => progress(`[${p.done}/${p.total}] ${plural(p.tokens, 'token')}${p.skipped ? `, ${p.skipped} skipped` : ''}`, p.done, p.total),
    }));
    const result = collected.result;
    const ranking = pair ? activationDifference(result, pair[0], pair[1]) : undefined;
    let steering: { plan: ReturnType<typeof steeringPatch>; outcome: SteeringOutcome; mode: SteerMode; side: PairSide } | undefined;
    if (pair && ranking && options.steer && !collected.cancelled) {
      const side = options.steerSide ?? 'A';
      const plan = steeringPatch(ranking, side, steerTop, options.steer, info);
      if (plan.experts.length === 0) throw new CliError(`--steer: no expert is more active in ${side === 'A' ? pair[0] : pair[1]} than in ${side === 'A' ? pair[1] : pair[0]}`);
      const run = [set.groups.indexOf(pair[0]), set.groups.indexOf(pair[1])];
      const outcome = await itemByItem(session, (shouldStop) => evaluateSteering({
        session, info, tokenizer, prompts: set.prompts, groups: set.groups, run, patch: plan.patch, shouldStop,
        onProgress: (done, total) => progress(`steering [${done}/${total}]`, done, total),
      }));
      steering = { plan, outcome, mode: options.steer, side };
    }
    const exportInfo = { model: { dir, modelType: info.modelType }, sources: set.sources, ...(pair && ranking ? { pair: { a: pair[0], b: pair[1], ranking } } : {}) };
    const written: string[] = [];
    if (options.out !== undefined) {
      const file = path.resolve(options.out);
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, statsSafetensors(result, exportInfo));
      written.push(file);
    }
    if (options.csv !== undefined) written.push(...writeStatsCsv(path.resolve(options.csv), statsCsv(result, exportInfo, (id) => tokenizer.tokenText(id))));
    const seconds = (performance.now() - started) / 1000;
    const text = (id: number): string => tokenizer.tokenText(id);
    if (options.json) {
      out(jsonText(statsJson(result, set, text, top, { seconds, cancelled: collected.cancelled, pair, ranking, steering, written })) + '\n');
    } else {
      out(`${describeModel(info)}\n`);
      out(formatStats(result, set, groupBy, text, top, seconds));
      if (pair && ranking) out(formatPair(pair, ranking, top));
      if (steering && pair) out(formatSteering(pair, steering));
      for (const f of written) out(`wrote ${f}\n`);
    }
    if (collected.cancelled) throw new CliError(`cancelled after ${collected.completed} of ${set.prompts.length} prompts`, 130);
  });
}

interface JsonExtras {
  seconds: number;
  cancelled: boolean;
  pair?: [string, string];
  ranking?: ExpertDifference[];
  steering?: { plan: ReturnType<typeof steeringPatch>; outcome: SteeringOutcome; mode: SteerMode; side: PairSide };
  written: string[];
}

/** The JSON contract of `stats --json` (README "CLI reference"): rates as fractions, counts as integers. */
export function statsJson(result: RoutingStatsResult, set: PromptSet, text: (id: number) => string, top: number, x: JsonExtras): Record<string, unknown> {
  const { layers, numExperts: E } = result.shape;
  const rows = (a: ArrayLike<number>, per: number): number[][] => layers.map((_, r) => Array.from({ length: per }, (_, e) => a[r * per + e]));
  const square = (a: ArrayLike<number>): number[][] => Array.from({ length: E }, (_, i) => Array.from({ length: E }, (_, j) => a[i * E + j]));
  const totals = totalCounts(result).activations;
  const experts = layers.flatMap((layer, r) => Array.from({ length: E }, (_, e) => ({
    layer, expert: e, activations: totals[r * E + e],
    top_tokens: expertTopTokens(result, r, e, top, totals).map((t) => ({ token: t.token, text: text(t.token), count: t.count, share_of_expert: t.shareOfExpert, share_of_token: t.shareOfToken, count_error: t.error })),
    top_contexts: expertContexts(result, r, e).map((c) => ({ prompt: set.prompts[c.prompt]?.id ?? String(c.prompt), prompt_index: c.prompt, position: c.position, token: c.token, text: text(c.token), weight: c.weight })),
  })));
  return {
    prompts: result.prompts, skipped: result.skipped, tokens: totalCounts(result).tokens, seconds: x.seconds, cancelled: x.cancelled,
    layers, experts: E, top_k: result.shape.topK, token_slots: result.tokenSlots,
    groups: result.groups.map((g) => ({ name: g.name, prompts: g.prompts, tokens: g.tokens, activation_rate: rows(activationRates(g), E), mean_router_entropy: Array.from(meanEntropy(g)) })),
    activation_rate: rows(activationRates(totalCounts(result)), E),
    expert_tokens: experts,
    co_activation: layers.map((_, r) => square(coActivationShare(result, r))),
    flow: layers.slice(0, -1).map((layer, r) => ({ from_layer: layer, to_layer: layers[r + 1], tokens: square(flowCounts(result, r)) })),
    ...(x.pair && x.ranking ? { pair: { a: x.pair[0], b: x.pair[1], ranking: x.ranking.slice(0, Math.max(top, 20)).map((d) => ({ layer: d.layer, expert: d.expert, rate_a: d.rateA, rate_b: d.rateB, difference: d.delta })) } } : {}),
    ...(x.steering ? { steering: {
      mode: x.steering.mode, side: x.steering.side, experts: x.steering.plan.experts.map((d) => ({ layer: d.layer, expert: d.expert, difference: d.delta })),
      skipped: x.steering.plan.skipped.map((s) => ({ layer: s.expert.layer, expert: s.expert.expert, reason: s.reason })), patch: x.steering.plan.patch,
      groups: x.steering.outcome.groups, completed: x.steering.outcome.completed, cancelled: x.steering.outcome.cancelled,
    } } : {}),
    ...(x.written.length ? { written: x.written } : {}),
  };
}

function formatStats(result: RoutingStatsResult, set: PromptSet, groupBy: GroupBy, text: (id: number) => string, top: number, seconds: number): string {
  const { layers, numExperts: E } = result.shape;
  const all = totalCounts(result);
  const lines: string[] = [];
  const groups = result.groups.length > 1 ? ` in ${result.groups.length} groups by ${groupBy} (${result.groups.map((g) => `${g.name} ${g.prompts}`).join(', ')})` : '';
  lines.push(`${plural(result.prompts, 'prompt')} (${plural(all.tokens, 'token')}) from ${set.sources.join(', ')}${groups}${result.skipped ? `; ${result.skipped} skipped (too long or empty)` : ''}; ${seconds.toFixed(1)} s`, '');
  const head = (label: string): string => `${label.padEnd(10)}${Array.from({ length: E }, (_, e) => `e${e}`.padStart(6)).join('')}`;
  const cells = (row: ArrayLike<number>): string => {
    const max = Math.max(...Array.from(row));
    return Array.from(row, (v) => (v === max && max > 0 ? `[${pct(v, 0)}]` : pct(v, 0)).padStart(6)).join('');
  };
  const rates = activationRates(all);
  lines.push(`${QUANTITY.activationRate.name} (${QUANTITY.activationRate.unit}), all prompts; [largest] per layer`, head('layer'));
  layers.forEach((layer, r) => lines.push(`${`L${layer}`.padEnd(10)}${cells(rates.subarray(r * E, (r + 1) * E))}`));
  lines.push(`mean ${QUANTITY.routerEntropy.name} (nats; uniform = ln ${E} = ${Math.log(E).toFixed(2)}): ${Array.from(meanEntropy(all), (h, r) => `L${layers[r]} ${h.toFixed(2)}`).join(' · ')}`, '');
  if (result.groups.length > 1) {
    lines.push(`${QUANTITY.activationRate.name} (${QUANTITY.activationRate.unit}) per group`);
    const w = Math.max(10, ...result.groups.map((g) => g.name.length + 1));
    layers.forEach((layer, r) => {
      lines.push(`layer ${layer}`, `${'group'.padEnd(w)}${head('').slice(10)}`);
      for (const g of result.groups) lines.push(`${g.name.padEnd(w)}${cells(activationRates(g).subarray(r * E, (r + 1) * E))}`);
    });
    lines.push('');
  }
  const shown = Math.min(top, 5);
  lines.push(`top tokens per expert: token count (% of the expert's activations, % of the token's occurrences)${E > 16 ? '; the 8 busiest experts per layer (--json lists all)' : ''}`);
  layers.forEach((layer, r) => {
    const order = Array.from({ length: E }, (_, e) => e).sort((a, b) => all.activations[r * E + b] - all.activations[r * E + a] || a - b);
    for (const e of (E > 16 ? order.slice(0, 8) : order.sort((a, b) => a - b))) {
      const tokens = expertTopTokens(result, r, e, shown, all.activations).map((t) => `"${visibleToken(text(t.token))}" ${t.count}${t.error ? `±${t.error}` : ''} (${pct(t.shareOfExpert, 0)}, ${pct(t.shareOfToken, 0)})`);
      lines.push(`L${layer} e${e} (${pct(rates[r * E + e])} % of tokens): ${tokens.join(' · ') || '–'}`);
    }
  });
  lines.push('', `${QUANTITY.coActivation.name} (${QUANTITY.coActivation.unit}): the most frequent expert pairs per layer`);
  layers.forEach((layer, r) => {
    const share = coActivationShare(result, r);
    const pairs: [number, number, number][] = [];
    for (let i = 0; i < E; i++) for (let j = i + 1; j < E; j++) if (share[i * E + j] > 0) pairs.push([i, j, share[i * E + j]]);
    pairs.sort((a, b) => b[2] - a[2] || a[0] - b[0] || a[1] - b[1]);
    lines.push(`L${layer}: ${pairs.slice(0, 5).map(([i, j, s]) => `e${i}+e${j} ${pct(s)}`).join(' · ') || '–'}`);
  });
  lines.push('', `${QUANTITY.routingFlow.name} (${QUANTITY.routingFlow.unit}, and % of all tokens): the most frequent top-1 paths between consecutive MoE layers`);
  for (let r = 0; r + 1 < layers.length; r++) {
    const flow = flowCounts(result, r);
    const paths: [number, number, number][] = [];
    for (let i = 0; i < E; i++) for (let j = 0; j < E; j++) if (flow[i * E + j] > 0) paths.push([i, j, flow[i * E + j]]);
    paths.sort((a, b) => b[2] - a[2] || a[0] - b[0] || a[1] - b[1]);
    lines.push(`L${layers[r]}→L${layers[r + 1]}: ${paths.slice(0, 5).map(([i, j, c]) => `e${i}→e${j} ${c} (${pct(c / all.tokens)} %)`).join(' · ') || '–'}`);
  }
  return lines.join('\n') + '\n';
}

function formatPair(pair: [string, string], ranking: ExpertDifference[], top: number): string {
  const lines = ['', `paired sets: ${pair[0]} (A) vs ${pair[1]} (B): ${QUANTITY.activationDifference.name} Δ = A − B (SteerMoE risk difference), by |Δ|`,
    `${'rank'.padStart(4)} ${'layer'.padStart(5)} ${'expert'.padStart(6)} ${'A %'.padStart(7)} ${'B %'.padStart(7)} ${'Δ points'.padStart(9)}`];
  ranking.slice(0, Math.max(top, 10)).forEach((d, i) => lines.push(`${String(i + 1).padStart(4)} ${String(d.layer).padStart(5)} ${String(d.expert).padStart(6)} ${pct(d.rateA).padStart(7)} ${pct(d.rateB).padStart(7)} ${`${d.delta > 0 ? '+' : d.delta < 0 ? '−' : ''}${pct(Math.abs(d.delta))}`.padStart(9)}`));
  return lines.join('\n') + '\n';
}

function formatSteering(pair: [string, string], s: NonNullable<JsonExtras['steering']>): string {
  const side = s.side === 'A' ? pair[0] : pair[1];
  const lines = ['', `steering: ${s.mode} the top ${s.plan.experts.length} experts of ${side} (${describeExperts(s.plan.experts)}); both sets without and with the patch`];
  for (const k of s.plan.skipped) lines.push(`  left out L${k.expert.layer} e${k.expert.expert}: ${k.reason}`);
  for (const g of s.outcome.groups) {
    const parts = [`${g.group.padEnd(12)} ${plural(g.prompts, 'prompt')}`];
    if (g.accuracy) parts.push(`accuracy ${pct(g.accuracy.before)} % → ${pct(g.accuracy.after)} % (${g.accuracy.after >= g.accuracy.before ? '+' : '−'}${pct(Math.abs(g.accuracy.after - g.accuracy.before))} points; wrong→right ${g.flips!.wrongToRight}, right→wrong ${g.flips!.rightToWrong})`);
    if (g.nextToken) parts.push(`next token: mean total variation ${g.nextToken.meanTotalVariation.toFixed(3)}, mean KL ${g.nextToken.meanKl.toFixed(3)} nats, most likely token changed in ${pct(g.nextToken.top1Changed)} %`);
    lines.push(`  ${parts.join(' · ')}`);
  }
  if (s.outcome.cancelled) lines.push(`  cancelled after ${s.outcome.completed} of ${s.outcome.total} prompts`);
  return lines.join('\n') + '\n';
}

export function registerStatsCommand(program: Command): void {
  commonOptions(program.command('stats').description('routing statistics over a prompt set: load, top tokens, co-activation, flow, paired sets'))
    .requiredOption('--data <paths...>', 'prompt sets: .jsonl (prompt/question lines, or labelled task items), .prompts.md / .md / .txt files, or folders of .txt / .md files')
    .addOption(new Option('--group-by <how>', 'groups: the input a prompt came from (file), its "skill" field (skill), or none (default: file for several inputs, else skill)').choices([...GROUP_BY]))
    .option('--limit <n>', 'only the first n prompts of each input')
    .option('--top <n>', 'top tokens and ranking rows listed (default 10)')
    .option('--token-slots <n>', 'top-token counters per expert (default: exact up to a 1,024-token vocabulary, else 256)')
    .option('--pair <A,B>', 'rank experts by the activation-rate difference between groups A and B')
    .addOption(new Option('--steer <mode>', 'with --pair: mask or force the top experts of one side and re-run both sets').choices(['mask', 'force']))
    .option('--steer-top <n>', 'experts in the steering patch (default 2)')
    .addOption(new Option('--steer-side <side>', 'the side whose experts are steered (default A)').choices(['A', 'B']))
    .option('--out <file>', 'write the statistics as .safetensors')
    .option('--csv <dir>', 'write the statistics as CSV files into this folder')
    .action(action(stats));
}
