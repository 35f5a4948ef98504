// Edits of the routing patch, as the editor and the routing panel make them (mask / force / bias one expert), and
// the patch as a flat list for display. Range checks are validatePatch's (patch.ts): an edit never validates.
import type { LayerPatch, RoutingPatch } from './patch';

/** One edit of the current patch; the host applies it with `applyPatchEdit` and validates the result. */
export type PatchEdit =
  | { op: 'mask' | 'force' | 'unmask' | 'unforce' | 'unbias'; layer: number; expert: number }
  | { op: 'bias'; layer: number; expert: number; value: number }
  | { op: 'removeLayer'; layer: number }
  | { op: 'clear' };

function without(list: number[] | undefined, expert: number): number[] | undefined {
  const out = (list ?? []).filter((e) => e !== expert);
  return out.length ? out : undefined;
}

function tidy(layer: LayerPatch): LayerPatch | undefined {
  const out: LayerPatch = {};
  if (layer.mask?.length) out.mask = layer.mask;
  if (layer.force?.length) out.force = layer.force;
  if (layer.bias && Object.keys(layer.bias).length) out.bias = layer.bias;
  if (layer.mix && Object.keys(layer.mix).length) out.mix = layer.mix;
  return Object.keys(out).length ? out : undefined;
}

/**
 * The patch after one edit (a new object; the input is not changed). Masking an expert un-forces it and vice
 * versa, so one edit never produces the "both masked and forced" error; a bias of 0 removes the entry.
 */
export function applyPatchEdit(patch: RoutingPatch | undefined, edit: PatchEdit): RoutingPatch {
  const layers: Record<string, LayerPatch> = {};
  for (const [key, value] of Object.entries(patch?.layers ?? {})) {
    layers[key] = {
      ...value,
      ...(value.mask ? { mask: [...value.mask] } : {}),
      ...(value.force ? { force: [...value.force] } : {}),
      ...(value.bias ? { bias: Array.isArray(value.bias) ? [...value.bias] : { ...value.bias } } : {}),
    };
  }
  if (edit.op === 'clear') return { layers: {} };
  const key = String(edit.layer);
  if (edit.op === 'removeLayer') {
    delete layers[key];
    return { layers };
  }
  const layer: LayerPatch = layers[key] ?? {};
  const e = edit.expert;
  switch (edit.op) {
    case 'mask':
      layer.force = without(layer.force, e);
      if (!layer.mask?.includes(e)) layer.mask = [...(layer.mask ?? []), e].sort((a, b) => a - b);
      break;
    case 'force':
      layer.mask = without(layer.mask, e);
      if (!layer.force?.includes(e)) layer.force = [...(layer.force ?? []), e];
      break;
    case 'unmask':
      layer.mask = without(layer.mask, e);
      break;
    case 'unforce':
      layer.force = without(layer.force, e);
      break;
    case 'bias':
    case 'unbias': {
      const value = edit.op === 'bias' ? edit.value : 0;
      if (Array.isArray(layer.bias)) {
        layer.bias[e] = value;
        if (layer.bias.every((v) => v === 0)) layer.bias = undefined;
      } else {
        const bias = { ...(layer.bias ?? {}) };
        if (value === 0) delete bias[String(e)];
        else bias[String(e)] = value;
        layer.bias = bias;
      }
      break;
    }
  }
  const tidied = tidy(layer);
  if (tidied) layers[key] = tidied;
  else delete layers[key];
  return { layers };
}

/** The edits "Clear Expert Edits" makes: every mask, force and bias of one expert at one layer. */
export function clearExpertEdits(patch: RoutingPatch, layer: number, expert: number): RoutingPatch {
  let out = applyPatchEdit(patch, { op: 'unmask', layer, expert });
  out = applyPatchEdit(out, { op: 'unforce', layer, expert });
  return applyPatchEdit(out, { op: 'unbias', layer, expert });
}

/** The bias a patch gives one expert at one layer (0 when none). */
export function biasOf(patch: RoutingPatch, layer: number, expert: number): number {
  const bias = patch.layers[String(layer)]?.bias;
  return (Array.isArray(bias) ? bias[expert] : bias?.[String(expert)]) ?? 0;
}

/** One entry of a patch as a list (layers ascending, then mask, force, bias, mix). */
export interface PatchEntry {
  layer: number;
  kind: 'mask' | 'force' | 'bias' | 'mix';
  expert: number;   // -1 for mix
  value?: number;   // bias value; mix: number of positions
}

export function patchEntries(patch: RoutingPatch | undefined): PatchEntry[] {
  const out: PatchEntry[] = [];
  const keys = Object.keys(patch?.layers ?? {}).sort((a, b) => Number(a) - Number(b));
  for (const key of keys) {
    const layer = Number(key);
    const p = patch!.layers[key];
    for (const e of p.mask ?? []) out.push({ layer, kind: 'mask', expert: e });
    for (const e of p.force ?? []) out.push({ layer, kind: 'force', expert: e });
    if (Array.isArray(p.bias)) p.bias.forEach((v, e) => v !== 0 && out.push({ layer, kind: 'bias', expert: e, value: v }));
    else for (const [e, v] of Object.entries(p.bias ?? {})) out.push({ layer, kind: 'bias', expert: Number(e), value: v });
    if (p.mix && Object.keys(p.mix).length) out.push({ layer, kind: 'mix', expert: -1, value: Object.keys(p.mix).length });
  }
  return out;
}

/** One line per entry, e.g. "mask L1 E3, bias L2 E0 -1.5" (tooltips, logs). */
export function describePatch(patch: RoutingPatch | undefined): string {
  const entries = patchEntries(patch);
  if (entries.length === 0) return 'none';
  return entries.map((e) => `${e.kind} L${e.layer}${e.expert >= 0 ? ` E${e.expert}` : ''}${e.value !== undefined ? ` ${e.value}` : ''}`).join(', ');
}
