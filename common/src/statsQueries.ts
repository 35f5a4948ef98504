// What the views, the CLI and the exports read from a RoutingStatsResult (routingStats.ts), written once: the
// activation rate, an expert's top tokens and contexts, co-activation and flow matrices, the paired-set ranking
// (SteerMoE, arXiv:2509.09660: the risk difference Δ = p_A − p_B of an expert being selected, ranked by |Δ|), and
// the routing patch that masks or forces the top experts of one side.
import type { RoutingPatch } from './patch';
import type { GroupCounts, RoutingStatsResult } from './routingStats';

/** All groups together (the whole set). */
export function totalCounts(result: RoutingStatsResult): GroupCounts {
  const L = result.shape.layers.length;
  const E = result.shape.numExperts;
  const all: GroupCounts = { name: 'all', prompts: 0, tokens: 0, activations: new Float64Array(L * E), top1: new Float64Array(L * E), weight: new Float64Array(L * E), entropy: new Float64Array(L) };
  for (const g of result.groups) {
    all.prompts += g.prompts;
    all.tokens += g.tokens;
    for (let i = 0; i < L * E; i++) {
      all.activations[i] += g.activations[i];
      all.top1[i] += g.top1[i];
      all.weight[i] += g.weight[i];
    }
    for (let r = 0; r < L; r++) all.entropy[r] += g.entropy[r];
  }
  return all;
}

/** A group by name; "all" (or undefined) is the whole set. */
export function groupCounts(result: RoutingStatsResult, name?: string): GroupCounts {
  if (name === undefined || name === 'all') return totalCounts(result);
  const g = result.groups.find((x) => x.name === name);
  if (!g) throw new Error(`no group "${name}" (groups: ${result.groups.map((x) => x.name).join(', ')})`);
  return g;
}

/** [L × E] activation rate: the share of the group's tokens whose top-k includes the expert. */
export function activationRates(g: GroupCounts): Float64Array {
  return g.activations.map((a) => (g.tokens > 0 ? a / g.tokens : 0));
}

/** Mean router entropy of each layer, nats. */
export function meanEntropy(g: GroupCounts): Float64Array {
  return g.entropy.map((h) => (g.tokens > 0 ? h / g.tokens : 0));
}

export interface ExpertToken {
  token: number;
  count: number;
  /** count ÷ the expert's activations: how much of the expert's traffic this token is. */
  shareOfExpert: number;
  /** count ÷ the token's occurrences in the set: how much of this token goes to the expert. */
  shareOfToken: number;
  error: number;
}

/** The expert's most frequent tokens (layer row r, expert e), at most n; `totals` = totalCounts(result).activations,
 *  passed in when listing many experts. */
export function expertTopTokens(result: RoutingStatsResult, r: number, e: number, n = result.topTokens.n, totals = totalCounts(result).activations): ExpertToken[] {
  const E = result.shape.numExperts;
  const x = r * E + e;
  const activations = totals[x];
  const { n: slots, ids, counts, errors } = result.topTokens;
  const out: ExpertToken[] = [];
  for (let i = 0; i < Math.min(n, slots); i++) {
    const token = ids[x * slots + i];
    if (token < 0) break;
    const count = counts[x * slots + i];
    out.push({ token, count, shareOfExpert: activations > 0 ? count / activations : 0, shareOfToken: result.tokenCounts[token] > 0 ? count / result.tokenCounts[token] : 0, error: errors[x * slots + i] });
  }
  return out;
}

/** The expert's contexts with the largest mixing weights, largest first. */
export function expertContexts(result: RoutingStatsResult, r: number, e: number): { prompt: number; position: number; token: number; weight: number }[] {
  const { n, prompts, positions, tokens, weights } = result.topContexts;
  const x = r * result.shape.numExperts + e;
  const out = [];
  for (let i = 0; i < n; i++) {
    const prompt = prompts[x * n + i];
    if (prompt < 0) break;
    out.push({ prompt, position: positions[x * n + i], token: tokens[x * n + i], weight: weights[x * n + i] });
  }
  return out;
}

/** [E × E] co-activation of layer row r as a share of all tokens (the diagonal: the activation rate). */
export function coActivationShare(result: RoutingStatsResult, r: number): Float64Array {
  const E = result.shape.numExperts;
  const tokens = totalCounts(result).tokens;
  return result.coActivation.slice(r * E * E, (r + 1) * E * E).map((c) => (tokens > 0 ? c / tokens : 0));
}

/** [E × E] top-1 flow counts from layer row r to row r + 1. */
export function flowCounts(result: RoutingStatsResult, r: number): Float64Array {
  const E = result.shape.numExperts;
  return result.flow.slice(r * E * E, (r + 1) * E * E);
}

export interface ExpertDifference {
  layer: number;
  expert: number;
  rateA: number;
  rateB: number;
  /** rateA − rateB (SteerMoE's risk difference). */
  delta: number;
}

/** Every (layer, expert) with its activation rates in groups A and B and their difference, ranked by |Δ|. */
export function activationDifference(result: RoutingStatsResult, a: string, b: string): ExpertDifference[] {
  const ga = groupCounts(result, a);
  const gb = groupCounts(result, b);
  if (ga.tokens === 0 || gb.tokens === 0) throw new Error(`group "${ga.tokens === 0 ? a : b}" has no tokens`);
  const ra = activationRates(ga);
  const rb = activationRates(gb);
  const E = result.shape.numExperts;
  const out: ExpertDifference[] = [];
  result.shape.layers.forEach((layer, r) => {
    for (let e = 0; e < E; e++) out.push({ layer, expert: e, rateA: ra[r * E + e], rateB: rb[r * E + e], delta: ra[r * E + e] - rb[r * E + e] });
  });
  return out.sort((x, y) => Math.abs(y.delta) - Math.abs(x.delta) || x.layer - y.layer || x.expert - y.expert);
}

export type SteerMode = 'mask' | 'force';
export type PairSide = 'A' | 'B';

export interface SteeringPlan {
  patch: RoutingPatch;
  /** The experts in the patch, in rank order. */
  experts: ExpertDifference[];
  /** Experts of the top n left out, and why (the patch rules: at least top-k unmasked, at most top-k forced). */
  skipped: { expert: ExpertDifference; reason: string }[];
}

/** The patch that masks or forces the `n` experts most specific to one side (Δ > 0 for A, Δ < 0 for B). */
export function steeringPatch(ranking: ExpertDifference[], side: PairSide, n: number, mode: SteerMode, shape: { numExperts: number; topK: number }): SteeringPlan {
  const candidates = ranking.filter((d) => (side === 'A' ? d.delta > 0 : d.delta < 0)).slice(0, n);
  const patch: RoutingPatch = { layers: {} };
  const plan: SteeringPlan = { patch, experts: [], skipped: [] };
  for (const d of candidates) {
    const key = String(d.layer);
    const entry = (patch.layers[key] ??= {});
    const list = mode === 'mask' ? (entry.mask ??= []) : (entry.force ??= []);
    if (mode === 'mask' && shape.numExperts - list.length - 1 < shape.topK) {
      plan.skipped.push({ expert: d, reason: `masking it would leave fewer than top-${shape.topK} experts at layer ${d.layer}` });
      continue;
    }
    if (mode === 'force' && list.length >= shape.topK) {
      plan.skipped.push({ expert: d, reason: `layer ${d.layer} already forces top-${shape.topK} experts` });
      continue;
    }
    list.push(d.expert);
    plan.experts.push(d);
  }
  for (const entry of Object.values(patch.layers)) {
    entry.mask?.sort((x, y) => x - y);
    entry.force?.sort((x, y) => x - y);
  }
  return plan;
}

/** "L2 e3, L1 e0": experts as the views and the CLI list them. */
export function describeExperts(experts: { layer: number; expert: number }[]): string {
  return experts.map((d) => `L${d.layer} e${d.expert}`).join(', ');
}

/** What a steering patch did to one set (stats/steer.ts measures it; the CLI and the statistics panel show it). */
export interface GroupSteering {
  group: string;
  prompts: number;
  /** Labelled items: accuracy without and with the patch, and the items that flipped. */
  labelled: number;
  accuracy?: { before: number; after: number };
  flips?: { wrongToRight: number; rightToWrong: number };
  /** Unlabelled prompts: how the next-token distribution after the prompt moved. */
  unlabelled: number;
  nextToken?: { meanTotalVariation: number; meanKl: number; top1Changed: number };
}

export interface SteeringOutcome {
  groups: GroupSteering[];
  completed: number;
  total: number;
  cancelled: boolean;
}
