// Continuous rerouting during generation (arXiv:2510.14853; /shared/spec/rerouting.md): a thin layer over
// Session.generateRerouted with the settings, plus the δ summaries used by logs and the panel.
import type { NativeRerouteOptions, NativeRerouteResult, NativeRerouteRound, NativeSession } from '../engine/native';
import type { RoutingPatch } from '../../../common/src/patch';
import { serializePatch } from '../../../common/src/patch';
import { norm } from './math';
import { topIndices } from '../../../common/src/math';
import type { RerouteSettings } from './settings';

export function rerouteOptions(s: RerouteSettings): NativeRerouteOptions {
  return {
    ...(s.layers.length ? { layers: [...s.layers] } : {}),
    interval: s.interval,
    steps: s.steps,
    lr: s.lr,
    optimizer: s.optimizer,
    layerFraction: s.layerFraction,
    leastConfidentFirst: s.leastConfidentFirst,
    resetAdamEachRound: s.resetAdamEachRound,
    sinceLastRound: s.window === 'since-last-round',
  };
}

export interface RerouteRequest {
  prompt: number[];
  maxNewTokens: number;
  temperature?: number;
  topP?: number;
  seed?: number;
  stopTokens: number[];
  patch?: RoutingPatch;
  onToken?: (token: number) => void;
  onRound?: (round: NativeRerouteRound) => void;
}

export async function generateRerouted(session: NativeSession, settings: RerouteSettings, r: RerouteRequest): Promise<NativeRerouteResult> {
  return session.generateRerouted(Int32Array.from(r.prompt), {
    ...(r.patch ? { patch: serializePatch(r.patch) } : {}),
    maxNewTokens: r.maxNewTokens,
    temperature: r.temperature ?? 0,
    topP: r.topP ?? 1,
    seed: r.seed ?? 0,
    stopTokens: r.stopTokens,
    ...(r.onToken ? { onToken: r.onToken } : {}),
    ...(r.onRound ? { onRound: r.onRound } : {}),
    reroute: rerouteOptions(settings),
  });
}

/** The final δ as a routing patch (an additive router-logit bias per adapted layer), e.g. to score with it. */
export function deltaPatch(delta: Record<string, Float32Array>, base?: RoutingPatch): RoutingPatch {
  const patch: RoutingPatch = { layers: { ...(base?.layers ?? {}) } };
  for (const [layer, d] of Object.entries(delta)) {
    const existing = patch.layers[layer] ?? {};
    if (existing.bias) throw new Error(`layer ${layer}: the patch already has a bias; rerouting's δ cannot be combined with it`);
    patch.layers[layer] = { ...existing, bias: Array.from(d) };
  }
  return patch;
}

export interface DeltaSummary {
  rounds: number;
  layers: Record<string, { norm: number; top: [number, number][] }>;
  /** Self-supervised loss before the first step and after the last step of the first round. */
  firstRoundLoss?: [number, number];
}

export function deltaSummary(result: NativeRerouteResult, top = 3): DeltaSummary {
  const layers: DeltaSummary['layers'] = {};
  for (const [layer, d] of Object.entries(result.delta)) {
    const round = (x: number): number => Number(x.toFixed(4));
    layers[layer] = {
      norm: round(norm(d)),
      top: topIndices(Float32Array.from(d, Math.abs), top).map((e) => [e, round(d[e])]),
    };
  }
  const first = result.rounds[0];
  return {
    rounds: result.rounds.length,
    layers,
    ...(first && first.losses.length ? { firstRoundLoss: [first.losses[0], first.losses[first.losses.length - 1]] as [number, number] } : {}),
  };
}
