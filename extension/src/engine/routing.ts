// Routing records: the per-layer spans the engine streams (NativeLayerRouting) assembled into rows per position.
import type { NativeLayerRouting } from './native';

export interface LayerRoutingRows {
  layer: number;
  /** Absolute positions, ascending; row i of the arrays below is positions[i]. */
  positions: number[];
  routerLogits: Float32Array[]; // [E] per position
  experts: Int32Array[];        // [k] per position, highest weight first
  weights: Float32Array[];      // [k] per position
}

/** Collects streamed routing spans; later spans for the same (layer, position) replace earlier ones. */
export class RoutingCollector {
  private readonly byLayer = new Map<number, Map<number, { logits: Float32Array; experts: Int32Array; weights: Float32Array }>>();

  readonly onLayer = (r: NativeLayerRouting): void => {
    let rows = this.byLayer.get(r.layer);
    if (!rows) {
      rows = new Map();
      this.byLayer.set(r.layer, rows);
    }
    const E = r.numExperts;
    const k = r.topK;
    for (let i = 0; i < r.count; i++) {
      rows.set(r.start + i, {
        logits: r.routerLogits.slice(i * E, (i + 1) * E),
        experts: r.experts.slice(i * k, (i + 1) * k),
        weights: r.weights.slice(i * k, (i + 1) * k),
      });
    }
  };

  /** Layers ascending; only positions in [from, to) when given. */
  layers(from = 0, to = Number.POSITIVE_INFINITY): LayerRoutingRows[] {
    const out: LayerRoutingRows[] = [];
    for (const layer of [...this.byLayer.keys()].sort((a, b) => a - b)) {
      const rows = this.byLayer.get(layer)!;
      const positions = [...rows.keys()].filter((p) => p >= from && p < to).sort((a, b) => a - b);
      out.push({
        layer,
        positions,
        routerLogits: positions.map((p) => rows.get(p)!.logits),
        experts: positions.map((p) => rows.get(p)!.experts),
        weights: positions.map((p) => rows.get(p)!.weights),
      });
    }
    return out;
  }
}
