// JSON output for scripts: float32 values in their shortest round-tripping form, large arrays written in pieces.
// NaN and ±Infinity are never printed as figures: they are refused with a one-line error (NonFiniteError).
import type { NativeModelInfo } from '../engine/native';
import { formatCount, plural } from '../../../common/src/format';

/** A result that holds NaN or ±Infinity where a figure belongs; the CLI reports it instead of printing it. */
export class NonFiniteError extends Error {
  readonly code = 'NOT_FINITE';
}

/** Throws NonFiniteError when `values` holds NaN or ±Infinity; `what` names the result ("the logits"). */
export function requireFinite(what: string, values: ArrayLike<number>, rowLength = 0): void {
  for (let i = 0; i < values.length; i++) {
    if (Number.isFinite(values[i])) continue;
    const at = rowLength > 0 ? ` (row ${Math.floor(i / rowLength)}, column ${i % rowLength})` : values.length > 1 ? ` (index ${i})` : '';
    throw new NonFiniteError(`${what} ${values.length === 1 ? 'is' : 'include'} ${values[i]}${at}; not printed (the weights or inputs may hold NaN, Inf or values beyond float32 range)`);
  }
}

/** A figure for JSON or text output; refuses NaN and ±Infinity. */
export function formatNumber(x: number): string {
  if (!Number.isFinite(x)) throw new NonFiniteError(`a result holds ${x}; not printed`);
  return String(x);
}

/** JSON.stringify that refuses NaN and ±Infinity (JSON.stringify would silently write null). */
export function jsonText(value: unknown): string {
  return JSON.stringify(value, (key, v: unknown) => {
    if (typeof v === 'number' && !Number.isFinite(v)) {
      throw new NonFiniteError(`${key ? `"${key}"` : 'a result'} is ${v}; not printed (JSON has no such number)`);
    }
    return v;
  });
}

/** The shortest decimal that reads back as the same float32; NaN/±Inf are refused (NonFiniteError). */
export function formatF32(x: number): string {
  if (!Number.isFinite(x)) throw new NonFiniteError(`a result holds ${x}; not printed (JSON has no such number)`);
  if (x === 0) return '0';
  for (let digits = 6; digits < 9; digits++) {
    const text = x.toPrecision(digits);
    if (Math.fround(Number(text)) === x) return String(Number(text));
  }
  return String(Number(x.toPrecision(9)));
}

export function f32Row(values: ArrayLike<number>): string {
  let out = '[';
  for (let i = 0; i < values.length; i++) out += (i ? ',' : '') + formatF32(values[i]);
  return out + ']';
}

export function intRow(values: ArrayLike<number>): string {
  let out = '[';
  for (let i = 0; i < values.length; i++) out += (i ? ',' : '') + String(values[i]);
  return out + ']';
}

/** Rows of a row-major [rows, cols] array. */
export function f32Rows(values: Float32Array, cols: number): string[] {
  const rows: string[] = [];
  if (cols <= 0) return rows;
  for (let offset = 0; offset + cols <= values.length; offset += cols) rows.push(f32Row(values.subarray(offset, offset + cols)));
  return rows;
}

/** Writes a JSON object whose values are already-serialised pieces (strings) or arrays of such pieces, so that a
 *  large logits array never has to exist as one string. */
export function writeJsonObject(write: (chunk: string) => void, entries: [string, string | string[]][]): void {
  write('{');
  entries.forEach(([key, value], i) => {
    write(`${i ? ',' : ''}${JSON.stringify(key)}:`);
    if (Array.isArray(value)) {
      write('[');
      value.forEach((piece, j) => write((j ? ',' : '') + piece));
      write(']');
    } else {
      write(value);
    }
  });
  write('}\n');
}

/** Model facts for JSON output, with snake_case keys like the rest of the CLI's JSON. */
export function modelInfoJson(info: NativeModelInfo): Record<string, unknown> {
  return {
    model_type: info.modelType,
    dir: info.dir,
    num_layers: info.numLayers,
    hidden_size: info.hiddenSize,
    num_heads: info.numHeads,
    num_kv_heads: info.numKvHeads,
    head_dim: info.headDim,
    vocab_size: info.vocabSize,
    num_experts: info.numExperts,
    top_k: info.topK,
    expert_width: info.expertWidth,
    shared_expert_width: info.sharedExpertWidth,
    norm_topk_prob: info.normTopkProb,
    routing_rule: info.routingRule,
    router_scoring: info.routerScoring,
    max_position_embeddings: info.maxPositionEmbeddings,
    moe_layers: info.moeLayers,
    dtype: info.dtype,
    expert_layout: info.expertLayout,
    shards: info.shards,
    parameters: info.parameters,
    active_parameters: info.activeParameters,
    weight_bytes: info.weightBytes,
    eos_token_ids: info.eosTokenIds,
    warnings: info.warnings,
    backend: info.backend,
    threads: info.threads,
    activations: info.activations,
    weights: info.weights,
    kv_cache: info.kvCache,
  };
}

export function describeModel(info: NativeModelInfo): string {
  const moe = info.moeLayers.length === info.numLayers ? '' : ` (${info.moeLayers.length} with experts)`;
  return (
    `${info.modelType} · ${info.numLayers} layers${moe} · ${info.numExperts} experts, top-${info.topK} · ` +
    `${formatCount(info.parameters)} params (${formatCount(info.activeParameters)} active) · ${info.dtype} ${info.expertLayout} · ` +
    `${info.backend}, ${plural(info.threads, 'thread')}${info.activations === 'bf16' ? ', bf16 activations' : ''}${info.kvCache === 'bf16' ? ', bf16 KV cache' : ''}`
  );
}
