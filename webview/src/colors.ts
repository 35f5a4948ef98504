// Colour scales for the canvas (pure; no DOM). Colours are packed as 32-bit RGBA in ImageData byte order
// (little-endian: 0xAABBGGRR) so the grid fills pixels with one store per cell.
//   - Experts: a deterministic categorical palette for any number of experts (128+): hues step by the golden angle
//     in OKLCH (neighbouring indices are far apart in hue), lightness cycles through three levels so experts 360°/φ²
//     apart in hue still differ, chroma is clamped into sRGB by culori. Expert e has the same colour in every run.
//   - Continuous values (entropy, weight, load): viridis, interpolated in OKLab through its published anchor colours;
//     perceptually ordered and legible on light and dark backgrounds alike.
import { clampChroma, formatHex, interpolate, modeLrgb, modeOklab, modeOklch, modeRgb, parse, useMode } from 'culori/fn';
import type { Oklch } from 'culori/fn';

const toRgb = useMode(modeRgb);
useMode(modeLrgb);
useMode(modeOklab);
useMode(modeOklch);

export type Rgba = [number, number, number, number];

const GOLDEN_ANGLE = 137.50776405003785;
const LIGHTNESS = [0.72, 0.56, 0.84];
const CHROMA = [0.15, 0.13, 0.11];

/** Colour of expert e as #rrggbb. */
export function expertHex(e: number): string {
  const level = Math.floor(e / 3) % 3 === 0 ? e % 3 : (e + Math.floor(e / 3)) % 3;
  const color: Oklch = { mode: 'oklch', l: LIGHTNESS[level], c: CHROMA[level], h: (e * GOLDEN_ANGLE + 25) % 360 };
  return formatHex(clampChroma(color, 'oklch'));
}

/** Parses any CSS colour culori knows (hex, rgb(), named); undefined when it cannot. */
export function parseCssColor(text: string | undefined): Rgba | undefined {
  if (!text) return undefined;
  const parsed = parse(text.trim());
  if (!parsed) return undefined;
  const c = toRgb(parsed);
  const byte = (v: number) => Math.max(0, Math.min(255, Math.round(v * 255)));
  return [byte(c.r), byte(c.g), byte(c.b), byte(c.alpha ?? 1)];
}

export function packRgba([r, g, b, a]: Rgba): number {
  return ((a << 24) | (b << 16) | (g << 8) | r) >>> 0;
}

export function unpackRgba(v: number): Rgba {
  return [v & 255, (v >>> 8) & 255, (v >>> 16) & 255, (v >>> 24) & 255];
}

export function rgbaCss([r, g, b, a]: Rgba): string {
  return `rgba(${r}, ${g}, ${b}, ${(a / 255).toFixed(3)})`;
}

/** Packed colours of experts 0..n-1. */
export function expertPalette(n: number): Uint32Array {
  const out = new Uint32Array(n);
  for (let e = 0; e < n; e++) out[e] = packRgba(parseCssColor(expertHex(e))!);
  return out;
}

/** Viridis anchor colours (matplotlib's viridis at 0, .25, .5, .75, 1). */
export const VIRIDIS_ANCHORS = ['#440154', '#3b528b', '#21918c', '#5ec962', '#fde725'];

/** A 256-entry packed lookup table of a colour ramp; value v in [0, 1] maps to entry round(v * 255). */
export function rampLut(anchors: string[] = VIRIDIS_ANCHORS): Uint32Array {
  const ramp = interpolate(anchors, 'oklab');
  const out = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    const c = toRgb(ramp(i / 255));
    const byte = (v: number) => Math.max(0, Math.min(255, Math.round(v * 255)));
    out[i] = packRgba([byte(c.r), byte(c.g), byte(c.b), 255]);
  }
  return out;
}

/** The LUT entry of v in [0, 1] (clamped); NaN → undefined. */
export function lutIndex(v: number): number | undefined {
  if (Number.isNaN(v)) return undefined;
  return Math.max(0, Math.min(255, Math.round(v * 255)));
}

/** Relative luminance (WCAG) of an sRGB colour, to pick black or white text on a swatch. */
export function luminance([r, g, b]: Rgba): number {
  const lin = (c: number) => {
    const s = c / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
}
