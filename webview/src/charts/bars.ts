// A vertical bar chart with both axes: a value axis with ticks from zero (negative values hang below it), a labelled
// category axis (every n-th label when narrow) and axis titles with units. Used for the router logits of a cell
// (one bar per expert); written for any per-expert chart.
import type { Theme } from '../theme';
import { axisLines, axisText, chartFont, labelStep, niceTicks, sizeCanvas, tickDigits, verticalText } from './axes';

export interface BarSpec {
  values: ArrayLike<number>;
  /** Category tick text ("3" for expert 3). */
  label(index: number): string;
  /** Axis titles with units: "expert", "router logit". */
  xTitle: string;
  yTitle: string;
  /** Fill of a bar (CSS colour) and whether it is emphasised (full opacity) or not. */
  fill(index: number): string;
  emphasised(index: number): boolean;
  /** A marker colour drawn under a bar's tick (e.g. masked / forced experts), or undefined. */
  mark?(index: number): string | undefined;
}

export interface BarGeometry {
  left: number;
  barW: number;
  count: number;
}

export function drawBars(canvas: HTMLCanvasElement, spec: BarSpec, theme: Theme, width: number, height: number): BarGeometry {
  const ctx = sizeCanvas(canvas, width, height);
  ctx.font = chartFont(theme, 0.8);
  ctx.clearRect(0, 0, width, height);
  const n = spec.values.length;
  let min = 0;
  let max = 0;
  for (let i = 0; i < n; i++) {
    const v = spec.values[i];
    if (!Number.isFinite(v)) continue;
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  if (min === max) max = min + 1;
  const ticks = niceTicks(min, max, Math.max(2, Math.floor(height / 28)));
  const lo = Math.min(min, ticks[0] ?? min);
  const hi = Math.max(max, ticks.at(-1) ?? max);
  const digits = tickDigits(ticks);
  const fs = theme.fontSize * 0.8;
  const tickW = Math.max(...ticks.map((t) => ctx.measureText(t.toFixed(digits)).width), 10);
  const left = Math.ceil(fs * 1.3 + tickW + 6);
  const top = 4;
  const bottom = Math.ceil(fs * 2.6 + 6);
  const plotW = Math.max(10, width - left - 4);
  const plotH = Math.max(10, height - top - bottom);
  const y = (v: number): number => top + (1 - (v - lo) / (hi - lo)) * plotH;
  // Value axis: ticks and faint grid lines.
  for (const t of ticks) {
    const ty = Math.round(y(t)) + 0.5;
    ctx.fillStyle = theme.muted;
    ctx.globalAlpha = t === 0 ? 0.9 : 0.25;
    ctx.fillRect(left, ty, plotW, 1);
    ctx.globalAlpha = 1;
    axisText(ctx, theme, t.toFixed(digits), left - 4, ty, 'right', 'middle', true);
  }
  verticalText(ctx, theme, spec.yTitle, fs * 0.6, top + plotH / 2);
  const barW = plotW / Math.max(1, n);
  const gap = barW > 4 ? 1 : 0;
  const zero = y(0);
  for (let i = 0; i < n; i++) {
    const v = spec.values[i];
    if (!Number.isFinite(v)) continue;
    const yv = y(v);
    ctx.fillStyle = spec.fill(i);
    ctx.globalAlpha = spec.emphasised(i) ? 1 : 0.45;
    ctx.fillRect(left + i * barW + gap / 2, Math.min(yv, zero), Math.max(1, barW - gap), Math.max(1, Math.abs(zero - yv)));
    ctx.globalAlpha = 1;
    const mark = spec.mark?.(i);
    if (mark) {
      ctx.fillStyle = mark;
      ctx.fillRect(left + i * barW, top + plotH + 1, Math.max(2, barW), 3);
    }
  }
  axisLines(ctx, theme.muted, left, top, plotW, plotH);
  const labelW = Math.max(...Array.from({ length: n }, (_, i) => ctx.measureText(spec.label(i)).width), 6);
  const step = labelStep(barW, labelW);
  for (let i = 0; i < n; i += step) axisText(ctx, theme, spec.label(i), left + (i + 0.5) * barW, top + plotH + 5, 'center', 'top', true);
  axisText(ctx, theme, spec.xTitle, left + plotW / 2, height - 2, 'center', 'bottom');
  if (theme.highContrast) {
    ctx.strokeStyle = theme.border!;
    ctx.strokeRect(0.5, 0.5, width - 1, height - 1);
  }
  return { left, barW, count: n };
}

/** The bar under x (CSS pixels from the canvas's left edge). */
export function barAt(x: number, g: BarGeometry): number | undefined {
  const i = Math.floor((x - g.left) / g.barW);
  return i >= 0 && i < g.count ? i : undefined;
}
