// The routing patch: ONE value type shared by the CLI, the editor, the webview and the adaptation methods, and its
// one validator. native/src/patch.cpp applies the same rules with the same messages; test/fixtures/patch-cases.json
// runs both (test/unit/patch-cases.test.ts and native/tests/patch_test.cpp), so they cannot drift apart.
//   {"layers": {"<layer>": {"mask": [e...], "force": [e...], "bias": {"<e>": v} | [v x E], "mix": {"<pos>": [p x E]}}}}
// Layers, experts and positions are 0-based decimal keys. A mix key "<pos>+" (at most one per layer) applies its row
// to every position >= pos, generated ones included; an exact "<pos>" key wins over it at that position.
import { jsonErrorText } from './jsonError';

export interface LayerPatch {
  /** Experts whose router logit becomes -inf before the softmax (as if pruned). */
  mask?: number[];
  /** Experts always selected; each displaces the lowest-ranked selected expert. */
  force?: number[];
  /** Additive router-logit bias at every position: sparse by expert, or a dense vector of E values. */
  bias?: Record<string, number> | number[];
  /** Replacement softmax rows (E probabilities each) at absolute positions ("7"), or from a position on ("7+"). */
  mix?: Record<string, number[]>;
}

export interface RoutingPatch {
  layers: Record<string, LayerPatch>;
}

/** What validation needs to know about the model (a model's info or a run's model satisfy it). */
export interface PatchModelShape {
  numLayers: number;
  numExperts: number;
  topK: number;
  moeLayers: readonly number[];
}

export class PatchError extends Error {
  readonly code = 'BAD_PATCH';
}

/** Mix positions are stored as 32-bit integers by the engine; longer keys are refused. */
const MAX_POSITION_DIGITS = 9;

const LAYER_KEYS = new Set(['mask', 'force', 'bias', 'mix']);

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A canonical 0-based decimal: "0", "17"; not "01", "+1", "1.0". */
function isIndexKey(key: string): boolean {
  return /^(0|[1-9][0-9]*)$/.test(key);
}

/** What a JSON value is, without its value (the engine words it the same way). */
function kind(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  switch (typeof value) {
    case 'object': return 'an object';
    case 'string': return 'a string';
    case 'number': return 'a number';
    case 'boolean': return 'a boolean';
    default: return typeof value;
  }
}

const quote = (key: string): string => JSON.stringify(key);

/**
 * Checks a patch value (and, when `model` is given, its layers and experts against that model); returns a clean
 * copy. `source` names where the patch came from (a file path) and starts every message. JSON `null` is the empty
 * patch.
 */
export function validatePatch(value: unknown, source = 'patch', model?: PatchModelShape): RoutingPatch {
  const fail = (where: string, problem: string): never => {
    throw new PatchError(`${source}: ${where ? `${where}: ` : ''}${problem}`);
  };
  if (value === null) return { layers: {} };
  if (!isObject(value)) return fail('', `expected an object {"layers": {...}}, got ${kind(value)}`);
  for (const key of Object.keys(value)) {
    if (key !== 'layers') fail('', `unknown key ${quote(key)} (expected only "layers")`);
  }
  const layers = value.layers;
  if (layers === undefined) return { layers: {} };
  if (!isObject(layers)) return fail('layers', `expected an object keyed by layer index, got ${kind(layers)}`);

  const E = model?.numExperts;
  const k = model?.topK;
  const outOfRange = `(the model has ${E} experts: 0..${(E ?? 0) - 1})`;
  const expertList = (where: string, list: unknown): number[] => {
    if (!Array.isArray(list)) return fail(where, `expected an array of expert indices, got ${kind(list)}`);
    const seen = new Set<number>();
    list.forEach((e: unknown, i) => {
      if (typeof e !== 'number' || !Number.isSafeInteger(e) || e < 0) fail(`${where}[${i}]`, 'expected an expert index (a non-negative integer)');
      const expert = e as number;
      if (E !== undefined && expert >= E) fail(where, `expert ${expert} is out of range ${outOfRange}`);
      if (seen.has(expert)) fail(where, `expert ${expert} is listed twice`);
      seen.add(expert);
    });
    return (list as number[]).map((e) => e + 0); // -0 → 0
  };
  const float32 = (where: string, v: unknown): number => {
    if (typeof v !== 'number') return fail(where, `expected a number, got ${kind(v)}`);
    // Finite once rounded to float32 (what the engine stores), as the engine checks it.
    if (!Number.isFinite(Math.fround(v))) fail(where, 'not a finite float32 value (|value| < 3.4e38)');
    return v;
  };

  const out: RoutingPatch = { layers: {} };
  for (const [layerKey, layerValue] of Object.entries(layers)) {
    if (!isIndexKey(layerKey)) fail('layers', `${quote(layerKey)} is not a layer index (0-based decimal)`);
    const at = `layer ${layerKey}`;
    const layer = Number(layerKey);
    if (model && layer >= model.numLayers) {
      fail(at, `out of range (the model has ${model.numLayers} layers: 0..${model.numLayers - 1})`);
    }
    if (model && !model.moeLayers.includes(layer)) fail(at, 'is a dense layer without a router');
    if (!isObject(layerValue)) fail(at, `expected an object with mask, force, bias or mix, got ${kind(layerValue)}`);
    const entry = layerValue as Record<string, unknown>;
    for (const key of Object.keys(entry)) {
      if (!LAYER_KEYS.has(key)) fail(at, `unknown key ${quote(key)} (expected mask, force, bias or mix)`);
    }
    const patch: LayerPatch = {};
    if (entry.mask !== undefined) patch.mask = expertList(`${at}: mask`, entry.mask);
    if (entry.force !== undefined) patch.force = expertList(`${at}: force`, entry.force);
    if (patch.mask && patch.force) {
      const both = patch.force.find((e) => patch.mask!.includes(e));
      if (both !== undefined) fail(at, `expert ${both} is both masked and forced`);
    }
    if (k !== undefined && patch.force && patch.force.length > k) {
      fail(`${at}: force`, `${patch.force.length} experts forced but only top_k=${k} are selected per token`);
    }
    if (E !== undefined && k !== undefined && patch.mask && E - patch.mask.length < k) {
      fail(`${at}: mask`, `${patch.mask.length} of ${E} experts masked, leaving fewer than top_k=${k}`);
    }
    if (entry.bias !== undefined) {
      const bias = entry.bias;
      if (Array.isArray(bias)) {
        if (E !== undefined && bias.length !== E) fail(`${at}: bias`, `has ${bias.length} values, expected ${E} (one per expert)`);
        patch.bias = bias.map((v: unknown, e) => float32(`${at}: bias: expert ${e}`, v));
      } else if (isObject(bias)) {
        const sparse: Record<string, number> = {};
        for (const [expertKey, v] of Object.entries(bias)) {
          if (!isIndexKey(expertKey)) fail(`${at}: bias`, `${quote(expertKey)} is not an expert index`);
          if (E !== undefined && Number(expertKey) >= E) fail(`${at}: bias`, `expert ${expertKey} is out of range ${outOfRange}`);
          sparse[expertKey] = float32(`${at}: bias: expert ${expertKey}`, v);
        }
        patch.bias = sparse;
      } else {
        fail(`${at}: bias`, `expected {"<expert>": value} or an array of ${E ?? 'E'} values, got ${kind(bias)}`);
      }
    }
    if (entry.mix !== undefined) {
      if (!isObject(entry.mix)) fail(`${at}: mix`, `expected {"<position>": [${E ?? 'E'} probabilities]}, got ${kind(entry.mix)}`);
      const mix: Record<string, number[]> = {};
      let tailKey: string | undefined;
      for (const [positionKey, row] of Object.entries(entry.mix as Record<string, unknown>)) {
        const tail = positionKey.endsWith('+');
        const position = tail ? positionKey.slice(0, -1) : positionKey;
        if (!isIndexKey(position)) {
          fail(`${at}: mix`, `${quote(positionKey)} is not a position (0-based decimal, or "N+" for every position >= N)`);
        }
        if (position.length > MAX_POSITION_DIGITS) fail(`${at}: mix`, `position ${quote(positionKey)} is out of range (at most 999999999)`);
        if (tail) {
          if (tailKey !== undefined) fail(`${at}: mix`, `has two "N+" keys (${quote(tailKey)} and ${quote(positionKey)}); at most one per layer`);
          tailKey = positionKey;
        }
        const where = `${at}: mix[${quote(positionKey)}]`;
        if (!Array.isArray(row)) fail(where, `expected an array of ${E ?? 'E'} probabilities, got ${kind(row)}`);
        const values = row as unknown[];
        if (E !== undefined && values.length !== E) fail(where, `has ${values.length} values, expected ${E} (one per expert)`);
        values.forEach((v, e) => {
          if (typeof v !== 'number') fail(`${where}: expert ${e}`, `expected a number, got ${kind(v)}`);
          if (!((v as number) >= 0 && (v as number) <= 1)) fail(`${where}: expert ${e}`, 'expected a probability in [0, 1]');
        });
        if (!values.some((v) => (v as number) > 0)) fail(where, 'needs at least one positive probability');
        mix[positionKey] = values as number[];
      }
      patch.mix = mix;
    }
    out.layers[layerKey] = patch;
  }
  return out;
}

/** Parses patch JSON text; every problem is a PatchError whose message starts with `source`. */
export function parsePatch(text: string, source = 'patch', model?: PatchModelShape): RoutingPatch {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new PatchError(`${source}: invalid JSON (${jsonErrorText(error)})`);
  }
  return validatePatch(value, source, model);
}

export function isEmptyPatch(patch: RoutingPatch | undefined): boolean {
  if (!patch) return true;
  return Object.values(patch.layers).every(
    (p) => !p.mask?.length && !p.force?.length && !(p.bias && Object.keys(p.bias).length) && !(p.mix && Object.keys(p.mix).length),
  );
}

/** The JSON the engine reads; layers in ascending order, empty parts left out. */
export function serializePatch(patch: RoutingPatch): string {
  const layers: Record<string, LayerPatch> = {};
  const keys = Object.keys(patch.layers).sort((a, b) => Number(a) - Number(b));
  for (const key of keys) {
    const p = patch.layers[key];
    const entry: LayerPatch = {};
    if (p.mask?.length) entry.mask = [...p.mask];
    if (p.force?.length) entry.force = [...p.force];
    if (p.bias && Object.keys(p.bias).length) entry.bias = Array.isArray(p.bias) ? [...p.bias] : { ...p.bias };
    if (p.mix && Object.keys(p.mix).length) entry.mix = { ...p.mix };
    if (Object.keys(entry).length) layers[key] = entry;
  }
  return JSON.stringify({ layers });
}
