// A run's routing trace as files (pure, no vscode): .safetensors with router_logits [L,T,E] F32, experts [L,T,k]
// I32 and weights [L,T,k] F32 (L = MoE layers ascending, as listed in the metadata) plus __metadata__ (tokens,
// model, patch, … as JSON strings); and CSV, one row per (layer, position), with the router entropy in nats.
import { sortedLayers, type Run } from './run';
import { encodeSafetensors } from '../io/safetensors';

function routedTokens(run: Run): number {
  let T = Number.POSITIVE_INFINITY;
  for (const l of run.layers.values()) T = Math.min(T, l.filled);
  return Number.isFinite(T) ? T : 0;
}

export function traceMetadata(run: Run, T = routedTokens(run)): Record<string, string> {
  return {
    format: 'routescope-trace-1',
    tokens: JSON.stringify(run.tokens.slice(0, T)),
    token_text: JSON.stringify(run.tokenText.slice(0, T)),
    prompt: run.prompt,
    prompt_tokens: String(Math.min(run.promptTokens, T)),
    model: JSON.stringify({ name: run.model.name, dir: run.model.dir, model_type: run.model.modelType, num_layers: run.model.numLayers, num_experts: run.model.numExperts, top_k: run.model.topK }),
    layers: JSON.stringify(sortedLayers(run).map((l) => l.layer)),
    patch: JSON.stringify(run.patch ?? null),
    kind: run.kind,
  };
}

/** The safetensors bytes of a run's routing. */
export function traceSafetensors(run: Run): Buffer {
  const T = routedTokens(run);
  const layers = sortedLayers(run);
  const L = layers.length;
  const E = run.model.numExperts;
  const k = run.model.topK;
  const logits = new Float32Array(L * T * E);
  const experts = new Int32Array(L * T * k);
  const weights = new Float32Array(L * T * k);
  layers.forEach((l, i) => {
    logits.set(l.routerLogits.subarray(0, T * E), i * T * E);
    experts.set(l.experts.subarray(0, T * k), i * T * k);
    weights.set(l.weights.subarray(0, T * k), i * T * k);
  });
  return encodeSafetensors([
    { name: 'router_logits', dtype: 'F32', shape: [L, T, E], data: logits },
    { name: 'experts', dtype: 'I32', shape: [L, T, k], data: experts },
    { name: 'weights', dtype: 'F32', shape: [L, T, k], data: weights },
  ], traceMetadata(run, T));
}

function csvField(value: string): string {
  return /[",\n\r]/.test(value) || /^\s|\s$/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}

/** CSV: layer, position, token id and text, the k experts and weights (highest first), router entropy in nats. */
export function traceCsv(run: Run): string {
  const T = routedTokens(run);
  const k = run.model.topK;
  const head = ['layer', 'position', 'token_id', 'token'];
  for (let s = 1; s <= k; s++) head.push(`expert_${s}`);
  for (let s = 1; s <= k; s++) head.push(`weight_${s}`);
  head.push('router_entropy_nats');
  const rows = [head.join(',')];
  for (const l of sortedLayers(run)) {
    const entropy = l.routerEntropy();
    for (let t = 0; t < T; t++) {
      const cells = [String(l.layer), String(t), String(run.tokens[t]), csvField(run.tokenText[t] ?? '')];
      for (let s = 0; s < k; s++) cells.push(String(l.experts[t * k + s]));
      for (let s = 0; s < k; s++) cells.push(String(l.weights[t * k + s]));
      cells.push(entropy[t].toPrecision(6));
      rows.push(cells.join(','));
    }
  }
  return `${rows.join('\n')}\n`;
}
