// What every chart shares: tick values (ticks.ts), sizing a canvas for the device pixel ratio, and drawing axis
// labels in the theme's colours and font. Every chart of the panels has labelled axes and units (charts/*.ts).
import type { Theme } from '../theme';

export { labelStep, niceTicks, tickDigits } from './ticks';

/** Sizes a canvas to CSS width × height at the device pixel ratio; returns its context, scaled to CSS pixels. */
export function sizeCanvas(canvas: HTMLCanvasElement, width: number, height: number): CanvasRenderingContext2D {
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(width * dpr));
  canvas.height = Math.max(1, Math.round(height * dpr));
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext('2d')!;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return ctx;
}

/** The chart font: the UI font at `scale` × the UI size. */
export function chartFont(theme: Theme, scale = 0.85): string {
  return `${Math.round(theme.fontSize * scale)}px ${theme.fontFamily}`;
}

/** Axis text in the foreground colour (muted where `muted`). */
export function axisText(ctx: CanvasRenderingContext2D, theme: Theme, text: string, x: number, y: number, align: CanvasTextAlign, baseline: CanvasTextBaseline, muted = false): void {
  ctx.fillStyle = muted ? theme.muted : theme.foreground;
  ctx.textAlign = align;
  ctx.textBaseline = baseline;
  ctx.fillText(text, x, y);
}

/** The y and x axis lines of a plot area at (left, top), plotW × plotH, in `color`, on the half pixel. */
export function axisLines(ctx: CanvasRenderingContext2D, color: string, left: number, top: number, plotW: number, plotH: number): void {
  ctx.strokeStyle = color;
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(left - 0.5, top);
  ctx.lineTo(left - 0.5, top + plotH + 0.5);
  ctx.lineTo(left + plotW, top + plotH + 0.5);
  ctx.stroke();
}

/** An axis title written bottom-to-top, centred on (x, y). */
export function verticalText(ctx: CanvasRenderingContext2D, theme: Theme, text: string, x: number, y: number): void {
  ctx.save();
  ctx.translate(x, y);
  ctx.rotate(-Math.PI / 2);
  axisText(ctx, theme, text, 0, 0, 'center', 'middle');
  ctx.restore();
}
