// A run: one prompt through the engine with one routing patch, and the routing it produced. Runs are what the
// side panel lists, the routing panel draws and a comparison works on. The routing is one LayerRouting per MoE
// layer (common/src/routing.ts): flat typed arrays that the streamed spans are copied into, once.
import type { LayerRouting } from '../../../common/src/routing';
import type { RoutedRun } from '../../../common/src/runDiff';
import type { RunInfo } from '../../../common/src/run';

export type { RunKind, RunModel } from '../../../common/src/run';

export interface Run extends RunInfo {
  /** MoE layers only, keyed by layer index. */
  layers: Map<number, LayerRouting>;
}

/** The run's MoE layers in ascending order. */
export function sortedLayers(run: Run): LayerRouting[] {
  return [...run.layers.values()].sort((a, b) => a.layer - b.layer);
}

/** The run as a comparison reads it (common/src/runDiff.ts). */
export function routedRun(run: Run): RoutedRun {
  return { routing: sortedLayers(run), tokens: run.tokens, nextTokens: run.nextTokens, nextTokenProbs: run.nextTokenProbs };
}
