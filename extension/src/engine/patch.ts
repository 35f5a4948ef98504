// The routing patch: ONE value type shared by the CLI, the UI and the adaptation methods. It mirrors the JSON the
// engine parses (routescope::parse_patch); layers and experts are 0-based, keys are decimal strings.
//   {"layers": {"<layer>": {"mask": [e...], "force": [e...], "bias": {"<e>": v} | [v x E], "mix": {"<pos>": [p x E]}}}}
// A mix key "<pos>+" (at most one per layer) applies its row to every position >= pos, generated ones included;
// an exact "<pos>" key wins over it at that position.

export interface LayerPatch {
  /** Experts whose router logit becomes -inf before the softmax (as if pruned). */
  mask?: number[];
  /** Experts always selected; each displaces the lowest-ranked selected expert. */
  force?: number[];
  /** Additive router-logit bias at every position: sparse by expert, or a dense vector of E values. */
  bias?: Record<string, number> | number[];
  /** Replacement softmax rows (E values each) at absolute positions ("7"), or from a position on ("7+"), before top-k. */
  mix?: Record<string, number[]>;
}

export interface RoutingPatch {
  layers: Record<string, LayerPatch>;
}

/** What validation needs to know about the model; a subset of NativeModelInfo. */
export interface PatchModelShape {
  numLayers: number;
  numExperts: number;
  topK: number;
  moeLayers: number[];
}

export class PatchError extends Error {
  readonly code = 'BAD_PATCH';
}

const LAYER_KEYS = new Set(['mask', 'force', 'bias', 'mix']);

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isIndexKey(key: string): boolean {
  return /^(0|[1-9][0-9]*)$/.test(key);
}

function describe(value: unknown): string {
  if (Array.isArray(value)) return 'an array';
  if (value === null) return 'null';
  return typeof value === 'object' ? 'an object' : `${typeof value} ${JSON.stringify(value)}`;
}

/**
 * Checks the structure of a patch (and, when `model` is given, layer and expert ranges against it).
 * `source` names where the patch came from (a file path) and starts every message.
 */
export function validatePatch(value: unknown, source = 'patch', model?: PatchModelShape): RoutingPatch {
  const fail = (where: string, problem: string): never => {
    throw new PatchError(`${source}: ${where ? `${where}: ` : ''}${problem}`);
  };
  if (!isObject(value)) return fail('', `expected an object {"layers": {...}}, got ${describe(value)}`);
  for (const key of Object.keys(value)) {
    if (key !== 'layers') fail('', `unknown key "${key}" (expected only "layers")`);
  }
  const layers = value.layers;
  if (layers === undefined) return { layers: {} };
  if (!isObject(layers)) return fail('layers', `expected an object keyed by layer index, got ${describe(layers)}`);

  const E = model?.numExperts;
  const k = model?.topK;
  const expertList = (where: string, list: unknown): number[] => {
    if (!Array.isArray(list)) return fail(where, `expected an array of expert indices, got ${describe(list)}`);
    const seen = new Set<number>();
    for (const e of list) {
      if (typeof e !== 'number' || !Number.isInteger(e) || e < 0) {
        fail(where, `expert ${JSON.stringify(e)} is not a non-negative integer`);
      }
      if (E !== undefined && e >= E) fail(where, `expert ${e} is out of range (the model has ${E} experts: 0..${E - 1})`);
      if (seen.has(e)) fail(where, `expert ${e} is listed twice`);
      seen.add(e);
    }
    return list as number[];
  };
  const finite = (where: string, v: unknown): number => {
    if (typeof v !== 'number' || !Number.isFinite(v)) fail(where, `expected a finite number, got ${describe(v)}`);
    return v as number;
  };

  const out: RoutingPatch = { layers: {} };
  for (const [layerKey, layerValue] of Object.entries(layers)) {
    const at = `layer ${layerKey}`;
    if (!isIndexKey(layerKey)) fail(`layers`, `"${layerKey}" is not a layer index (0-based decimal)`);
    const layer = Number(layerKey);
    if (model && layer >= model.numLayers) {
      fail(at, `out of range (the model has ${model.numLayers} layers: 0..${model.numLayers - 1})`);
    }
    if (model && !model.moeLayers.includes(layer)) fail(at, 'is a dense layer without a router');
    if (!isObject(layerValue)) fail(at, `expected an object with mask/force/bias/mix, got ${describe(layerValue)}`);
    const entry = layerValue as Record<string, unknown>;
    for (const key of Object.keys(entry)) {
      if (!LAYER_KEYS.has(key)) fail(at, `unknown key "${key}" (expected mask, force, bias or mix)`);
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
      fail(`${at}: mask`, `masks ${patch.mask.length} of ${E} experts, leaving fewer than top_k=${k}`);
    }
    if (entry.bias !== undefined) {
      const bias = entry.bias;
      if (Array.isArray(bias)) {
        if (E !== undefined && bias.length !== E) fail(`${at}: bias`, `has ${bias.length} values, expected ${E} (one per expert)`);
        patch.bias = bias.map((v, i) => finite(`${at}: bias[${i}]`, v));
      } else if (isObject(bias)) {
        const sparse: Record<string, number> = {};
        for (const [expertKey, v] of Object.entries(bias)) {
          if (!isIndexKey(expertKey)) fail(`${at}: bias`, `"${expertKey}" is not an expert index`);
          const e = Number(expertKey);
          if (E !== undefined && e >= E) fail(`${at}: bias`, `expert ${e} is out of range (the model has ${E} experts: 0..${E - 1})`);
          sparse[expertKey] = finite(`${at}: bias["${expertKey}"]`, v);
        }
        patch.bias = sparse;
      } else {
        fail(`${at}: bias`, `expected {"<expert>": value} or an array of ${E ?? 'E'} values, got ${describe(bias)}`);
      }
    }
    if (entry.mix !== undefined) {
      if (!isObject(entry.mix)) fail(`${at}: mix`, `expected {"<position>": [E probabilities]}, got ${describe(entry.mix)}`);
      const mix: Record<string, number[]> = {};
      for (const [positionKey, row] of Object.entries(entry.mix as Record<string, unknown>)) {
        const where = `${at}: mix["${positionKey}"]`;
        const tail = positionKey.endsWith('+');
        if (!isIndexKey(tail ? positionKey.slice(0, -1) : positionKey)) {
          fail(`${at}: mix`, `"${positionKey}" is not a position (0-based decimal, or "N+" for every position >= N)`);
        }
        if (tail && Object.keys(mix).some((k) => k.endsWith('+'))) fail(`${at}: mix`, 'has more than one "N+" key');
        if (!Array.isArray(row)) fail(where, `expected an array of ${E ?? 'E'} probabilities, got ${describe(row)}`);
        const values = (row as unknown[]).map((v, i) => finite(`${where}[${i}]`, v));
        if (E !== undefined && values.length !== E) fail(where, `has ${values.length} values, expected ${E} (one per expert)`);
        if (values.some((v) => v < 0)) fail(where, 'probabilities must be >= 0');
        if (!values.some((v) => v > 0)) fail(where, 'needs at least one positive probability');
        mix[positionKey] = values;
      }
      patch.mix = mix;
    }
    out.layers[String(layer)] = patch;
  }
  return out;
}

/** Parses patch JSON text; every problem is a PatchError whose message starts with `source`. */
export function parsePatch(text: string, source = 'patch', model?: PatchModelShape): RoutingPatch {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new PatchError(`${source}: invalid JSON (${(error as Error).message})`);
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
