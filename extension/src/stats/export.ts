// Routing statistics as files, the same from the CLI (`routescope stats --out / --csv`) and the statistics panel:
//   .safetensors: activations, top1, weight [G, L, E] F64 (counts per group), tokens [G] F64, router_entropy [G, L]
//     F64 (summed nats), co_activation [L, E, E] F64, flow [L-1, E, E] F64, token_counts [V] F64, top_token_ids
//     [L, E, n] I32 (-1 = none), top_token_counts / top_token_errors [L, E, n] F64, and `__metadata__` (format,
//     groups, layers, prompts, model, pair) as JSON strings;
//   CSV (a folder): load.csv, top_tokens.csv, co_activation.csv, flow.csv, and pair.csv when a pair is ranked.
// Column names use the product's quantity names (common/src/quantities.ts). No vscode import.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { RoutingStatsResult } from '../../../common/src/routingStats';
import { activationRates, expertTopTokens, totalCounts, type ExpertDifference } from '../../../common/src/statsQueries';
import { encodeSafetensors } from '../io/safetensors';

export interface StatsExportInfo {
  model: { dir: string; modelType: string };
  sources: string[];
  pair?: { a: string; b: string; ranking: ExpertDifference[] };
}

export function statsSafetensors(result: RoutingStatsResult, info: StatsExportInfo): Buffer {
  const { layers, numExperts: E, vocabSize: V } = result.shape;
  const L = layers.length;
  const G = result.groups.length;
  const stack = (pick: (g: RoutingStatsResult['groups'][number]) => Float64Array, per: number): Float64Array => {
    const out = new Float64Array(G * per);
    result.groups.forEach((g, i) => out.set(pick(g), i * per));
    return out;
  };
  const n = result.topTokens.n;
  return encodeSafetensors([
    { name: 'activations', dtype: 'F64', shape: [G, L, E], data: stack((g) => g.activations, L * E) },
    { name: 'top1', dtype: 'F64', shape: [G, L, E], data: stack((g) => g.top1, L * E) },
    { name: 'weight', dtype: 'F64', shape: [G, L, E], data: stack((g) => g.weight, L * E) },
    { name: 'tokens', dtype: 'F64', shape: [G], data: Float64Array.from(result.groups, (g) => g.tokens) },
    { name: 'router_entropy', dtype: 'F64', shape: [G, L], data: stack((g) => g.entropy, L) },
    { name: 'co_activation', dtype: 'F64', shape: [L, E, E], data: result.coActivation },
    { name: 'flow', dtype: 'F64', shape: [Math.max(0, L - 1), E, E], data: result.flow },
    { name: 'token_counts', dtype: 'F64', shape: [V], data: result.tokenCounts },
    { name: 'top_token_ids', dtype: 'I32', shape: [L, E, n], data: result.topTokens.ids },
    { name: 'top_token_counts', dtype: 'F64', shape: [L, E, n], data: result.topTokens.counts },
    { name: 'top_token_errors', dtype: 'F64', shape: [L, E, n], data: result.topTokens.errors },
  ], {
    format: 'routescope-stats-1',
    groups: JSON.stringify(result.groups.map((g) => ({ name: g.name, prompts: g.prompts, tokens: g.tokens }))),
    layers: JSON.stringify(layers),
    prompts: String(result.prompts),
    skipped: String(result.skipped),
    model: JSON.stringify({ dir: info.model.dir, model_type: info.model.modelType, num_experts: E, top_k: result.shape.topK }),
    sources: JSON.stringify(info.sources),
    ...(info.pair ? { pair: JSON.stringify({ a: info.pair.a, b: info.pair.b }) } : {}),
  });
}

/** A CSV field: quoted when it holds a comma, quote or line break. */
function field(value: string | number): string {
  const text = String(value);
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

const csv = (rows: (string | number)[][]): string => rows.map((r) => r.map(field).join(',')).join('\n') + '\n';
const num = (x: number): string => (Number.isInteger(x) ? String(x) : x.toPrecision(6));

/** The CSV files' contents by file name. */
export function statsCsv(result: RoutingStatsResult, info: StatsExportInfo, tokenText: (id: number) => string): Record<string, string> {
  const { layers, numExperts: E } = result.shape;
  const load: (string | number)[][] = [['group', 'layer', 'expert', 'tokens', 'activations', 'activation_rate', 'top1', 'mean_weight']];
  for (const g of result.groups) {
    const rates = activationRates(g);
    layers.forEach((layer, r) => {
      for (let e = 0; e < E; e++) {
        const x = r * E + e;
        load.push([g.name, layer, e, g.tokens, g.activations[x], num(rates[x]), g.top1[x], num(g.activations[x] > 0 ? g.weight[x] / g.activations[x] : 0)]);
      }
    });
  }
  const top: (string | number)[][] = [['layer', 'expert', 'rank', 'token', 'text', 'count', 'share_of_expert', 'share_of_token', 'count_error']];
  const totals = totalCounts(result).activations;
  layers.forEach((layer, r) => {
    for (let e = 0; e < E; e++) {
      expertTopTokens(result, r, e, result.topTokens.n, totals).forEach((t, i) => top.push([layer, e, i + 1, t.token, tokenText(t.token), t.count, num(t.shareOfExpert), num(t.shareOfToken), t.error]));
    }
  });
  const co: (string | number)[][] = [['layer', 'expert_i', 'expert_j', 'tokens_both']];
  layers.forEach((layer, r) => {
    for (let i = 0; i < E; i++) for (let j = 0; j < E; j++) {
      const c = result.coActivation[(r * E + i) * E + j];
      if (c > 0) co.push([layer, i, j, c]);
    }
  });
  const flow: (string | number)[][] = [['from_layer', 'to_layer', 'from_expert', 'to_expert', 'tokens']];
  for (let r = 0; r + 1 < layers.length; r++) {
    for (let i = 0; i < E; i++) for (let j = 0; j < E; j++) {
      const c = result.flow[(r * E + i) * E + j];
      if (c > 0) flow.push([layers[r], layers[r + 1], i, j, c]);
    }
  }
  const files: Record<string, string> = { 'load.csv': csv(load), 'top_tokens.csv': csv(top), 'co_activation.csv': csv(co), 'flow.csv': csv(flow) };
  if (info.pair) {
    const rows: (string | number)[][] = [['rank', 'layer', 'expert', `activation_rate_${info.pair.a}`, `activation_rate_${info.pair.b}`, 'difference']];
    info.pair.ranking.forEach((d, i) => rows.push([i + 1, d.layer, d.expert, num(d.rateA), num(d.rateB), num(d.delta)]));
    files['pair.csv'] = csv(rows);
  }
  return files;
}

/** Writes the CSV files into `dir` (created); returns their paths. */
export function writeStatsCsv(dir: string, files: Record<string, string>): string[] {
  fs.mkdirSync(dir, { recursive: true });
  return Object.entries(files).map(([name, text]) => {
    const file = path.join(dir, name);
    fs.writeFileSync(file, text);
    return file;
  });
}
