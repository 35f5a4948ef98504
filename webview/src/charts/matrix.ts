// A matrix chart on one canvas: rows × columns of coloured cells with both axes labelled (tick labels and titles), a
// colour bar with its unit, the value under the pointer (or the keyboard cursor) in a tooltip, sized to its host's
// width, and columns in any order (sorted views). Used by the routing panel's expert load. The cells are written one
// pixel each into an ImageData and scaled up, so a 48 × 128 or 128 × 128 matrix redraws in about a millisecond.
import { lutIndex, rampLut, unpackRgba } from '../colors';
import type { Theme } from '../theme';
import { axisText, chartFont, labelStep, niceTicks, sizeCanvas, tickDigits, verticalText } from './axes';

export interface MatrixSpec {
  rows: number;
  cols: number;
  /** Row-major [rows × cols]; NaN = no value (drawn as the empty colour). */
  values: ArrayLike<number>;
  /** Tick text of a row / a column (by data index): "L3", "17". */
  rowLabel(row: number): string;
  colLabel(col: number): string;
  /** Axis titles: "MoE layer", "expert". */
  rowTitle: string;
  colTitle: string;
  /** The colour bar's top: values 0 … max on viridis. */
  max: number;
  /** The colour bar's title: the quantity and its unit. */
  unit: string;
  /** A value as the colour bar and tooltip write it ("12.5 %"). */
  format(value: number): string;
  /** The tooltip of a cell. */
  describe(row: number, col: number, value: number): string;
  /** Display order of the columns (data indices); default 0..cols-1. */
  colOrder?: ArrayLike<number>;
  /** Largest height of the cell area in CSS pixels (default 360). */
  maxHeight?: number;
}

export interface MatrixCallbacks {
  /** A cell picked by click or Enter (data indices). */
  onPick?(row: number, col: number): void;
  /** The tooltip text at client coordinates; undefined hides it. */
  onHover(text: string | undefined, clientX: number, clientY: number): void;
}

const SEQUENTIAL = rampLut();
const BAR_W = 12;

export class MatrixChart {
  readonly canvas: HTMLCanvasElement;
  private spec: MatrixSpec | undefined;
  private order: number[] = [];
  private readonly pixels = document.createElement('canvas');
  /** The painted chart; hover and keyboard only redraw the outlines over it. */
  private readonly base = document.createElement('canvas');
  private dirty = true;
  private paintedWidth = 0;
  private geometry = { left: 0, top: 0, cellW: 1, cellH: 1, width: 0, height: 0 };
  private frame = 0;
  /** The keyboard cursor and the highlighted cell (display column, row). */
  private cursor: { row: number; slot: number } | undefined;
  /** The picked cell (data indices), outlined. */
  picked: { row: number; col: number } | undefined;

  constructor(private readonly host: HTMLElement, private theme: Theme, private readonly callbacks: MatrixCallbacks, id: string) {
    this.canvas = document.createElement('canvas');
    this.canvas.id = id;
    this.canvas.tabIndex = 0;
    this.canvas.setAttribute('role', 'img');
    host.appendChild(this.canvas);
    new ResizeObserver(() => this.requestDraw()).observe(host);
    this.canvas.addEventListener('mousemove', (e) => this.hoverAt(e.clientX, e.clientY));
    this.canvas.addEventListener('mouseleave', () => {
      this.cursor = undefined;
      this.callbacks.onHover(undefined, 0, 0);
      this.requestDraw();
    });
    this.canvas.addEventListener('click', (e) => {
      const hit = this.hit(e.clientX, e.clientY);
      if (hit) this.pick(hit.row, hit.slot);
    });
    this.canvas.addEventListener('keydown', (e) => this.onKey(e));
    this.canvas.addEventListener('blur', () => this.callbacks.onHover(undefined, 0, 0));
  }

  set(spec: MatrixSpec | undefined): void {
    this.spec = spec;
    this.dirty = true;
    this.order = spec ? Array.from(spec.colOrder ?? { length: spec.cols }, (v, i) => (spec.colOrder ? Number(v) : i)) : [];
    if (spec) {
      this.canvas.dataset.rows = String(spec.rows);
      this.canvas.dataset.cols = String(spec.cols);
      this.canvas.dataset.rowTitle = spec.rowTitle;
      this.canvas.dataset.colTitle = spec.colTitle;
      this.canvas.dataset.unit = spec.unit;
      this.canvas.dataset.max = String(spec.max);
      this.canvas.dataset.order = spec.colOrder ? 'sorted' : 'index';
      this.canvas.setAttribute('aria-label', `${spec.unit}: ${spec.rows} ${spec.rowTitle} rows × ${spec.cols} ${spec.colTitle} columns; largest ${spec.format(spec.max)}. Arrow keys move, Enter picks.`);
    }
    this.requestDraw();
  }

  setTheme(theme: Theme): void {
    this.theme = theme;
    this.dirty = true;
    this.requestDraw();
  }

  requestDraw(): void {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  private value(row: number, col: number): number {
    return Number(this.spec!.values[row * this.spec!.cols + col]);
  }

  private hit(clientX: number, clientY: number): { row: number; slot: number } | undefined {
    if (!this.spec) return undefined;
    const rect = this.canvas.getBoundingClientRect();
    const { left, top, cellW, cellH } = this.geometry;
    const slot = Math.floor((clientX - rect.left - left) / cellW);
    const row = Math.floor((clientY - rect.top - top) / cellH);
    if (slot < 0 || slot >= this.spec.cols || row < 0 || row >= this.spec.rows) return undefined;
    return { row, slot };
  }

  private hoverAt(clientX: number, clientY: number): void {
    const hit = this.hit(clientX, clientY);
    this.cursor = hit;
    this.showCursor(clientX, clientY);
    this.requestDraw();
  }

  private showCursor(clientX?: number, clientY?: number): void {
    const spec = this.spec;
    if (!spec || !this.cursor) return this.callbacks.onHover(undefined, 0, 0);
    const { row, slot } = this.cursor;
    const col = this.order[slot];
    if (clientX === undefined || clientY === undefined) {
      const rect = this.canvas.getBoundingClientRect();
      clientX = rect.left + this.geometry.left + (slot + 1) * this.geometry.cellW;
      clientY = rect.top + this.geometry.top + (row + 1) * this.geometry.cellH;
    }
    this.callbacks.onHover(spec.describe(row, col, this.value(row, col)), clientX, clientY);
  }

  private pick(row: number, slot: number): void {
    const col = this.order[slot];
    this.picked = { row, col };
    this.callbacks.onPick?.(row, col);
    this.requestDraw();
  }

  private onKey(e: KeyboardEvent): void {
    const spec = this.spec;
    if (!spec) return;
    const c = this.cursor ?? { row: 0, slot: 0 };
    const moves: Record<string, [number, number]> = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
    if (e.key in moves) {
      const [dr, ds] = moves[e.key];
      const step = e.shiftKey ? 8 : 1;
      this.cursor = { row: Math.max(0, Math.min(spec.rows - 1, c.row + dr * step)), slot: Math.max(0, Math.min(spec.cols - 1, c.slot + ds * step)) };
    } else if (e.key === 'Enter' || e.key === ' ') {
      this.cursor = c;
      this.pick(c.row, c.slot);
    } else if (e.key === 'Escape') {
      this.cursor = undefined;
      this.callbacks.onHover(undefined, 0, 0);
      this.requestDraw();
      return;
    } else {
      return;
    }
    e.preventDefault();
    this.showCursor();
    this.requestDraw();
  }

  private colour(v: number): [number, number, number] | undefined {
    if (!Number.isFinite(v)) return undefined;
    const max = this.spec!.max > 0 ? this.spec!.max : 1;
    const [r, g, b] = unpackRgba(SEQUENTIAL[lutIndex(v / max)!]);
    return [r, g, b];
  }

  /** The chart without the picked cell and cursor, into the offscreen `base` canvas (device pixels). */
  private paintBase(spec: MatrixSpec, width: number): void {
    const theme = this.theme;
    const measure = this.base.getContext('2d')!;
    measure.font = chartFont(theme);
    const rowLabelW = Math.max(...Array.from({ length: spec.rows }, (_, r) => measure.measureText(spec.rowLabel(r)).width));
    const colLabelW = Math.max(...Array.from({ length: spec.cols }, (_, c) => measure.measureText(spec.colLabel(c)).width));
    const fs = theme.fontSize;
    const left = Math.ceil(fs * 1.4 + rowLabelW + 6);
    const top = Math.ceil(fs * 1.5 + 4);
    const barTicks = niceTicks(0, spec.max, 4);
    const digits = tickDigits(barTicks);
    const barLabelW = Math.max(...[...barTicks.map((t) => Number(t.toFixed(digits))), spec.max, -spec.max].map((v) => measure.measureText(spec.format(v)).width), 20);
    const right = BAR_W + 10 + barLabelW + fs * 1.6;
    // Cells fill the width (up to 64 px); rows are tall enough for the colour bar's title to fit beside them.
    const cellW = Math.max(2, Math.min(64, Math.floor((width - left - right) / spec.cols)));
    const unitW = measure.measureText(spec.unit).width + 16;
    const cellH = Math.max(4, Math.min(44, Math.max(Math.ceil(unitW / spec.rows), Math.floor((spec.maxHeight ?? 360) / spec.rows))));
    const gridW = cellW * spec.cols;
    const gridH = cellH * spec.rows;
    const bottom = Math.ceil(fs * 1.6 + 6);
    const barH = Math.max(unitW, gridH);
    const height = top + barH + bottom;
    const chartW = Math.min(width, left + gridW + right);
    this.geometry = { left, top, cellW, cellH, width: chartW, height };
    const ctx = sizeCanvas(this.base, chartW, height);
    ctx.font = chartFont(theme);
    ctx.clearRect(0, 0, chartW, height);

    // Cells: one pixel each, scaled up without smoothing.
    this.pixels.width = spec.cols;
    this.pixels.height = spec.rows;
    const pctx = this.pixels.getContext('2d')!;
    const image = pctx.createImageData(spec.cols, spec.rows);
    const empty = unpackRgba(theme.packed.missing);
    for (let r = 0; r < spec.rows; r++) {
      for (let s = 0; s < spec.cols; s++) {
        const rgb = this.colour(this.value(r, this.order[s])) ?? empty;
        const o = (r * spec.cols + s) * 4;
        image.data[o] = rgb[0];
        image.data[o + 1] = rgb[1];
        image.data[o + 2] = rgb[2];
        image.data[o + 3] = 255;
      }
    }
    pctx.putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.pixels, left, top, gridW, gridH);
    if (theme.highContrast && cellH >= 6) {
      ctx.strokeStyle = theme.border!;
      ctx.lineWidth = 1;
      for (let r = 0; r <= spec.rows; r++) ctx.strokeRect(left + 0.5, top + r * cellH + 0.5, gridW - 1, 0);
    }
    ctx.strokeStyle = theme.muted;
    ctx.lineWidth = 1;
    ctx.strokeRect(left - 0.5, top - 0.5, gridW + 1, gridH + 1);

    // Column ticks on top (every n-th when narrow), the axis title below; row ticks at the left, title rotated.
    const colStep = labelStep(cellW, colLabelW);
    for (let s = 0; s < spec.cols; s += spec.colOrder ? Math.max(1, colStep) : colStep) {
      axisText(ctx, theme, spec.colLabel(this.order[s]), left + (s + 0.5) * cellW, top - 3, 'center', 'bottom', true);
    }
    axisText(ctx, theme, `${spec.colTitle}${spec.colOrder ? ' (sorted)' : ''} →`, left + gridW / 2, top + gridH + 4, 'center', 'top');
    const rowStep = labelStep(cellH, fs * 0.85);
    for (let r = 0; r < spec.rows; r += rowStep) axisText(ctx, theme, spec.rowLabel(r), left - 4, top + (r + 0.5) * cellH, 'right', 'middle', true);
    verticalText(ctx, theme, `${spec.rowTitle} ↓`, fs * 0.6, top + gridH / 2);

    // Colour bar with its unit.
    const bx = left + gridW + 10;
    for (let i = 0; i < barH; i++) {
      const t = 1 - i / (barH - 1);
      const rgb = this.colour(t * spec.max) ?? empty;
      ctx.fillStyle = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
      ctx.fillRect(bx, top + i, BAR_W, 1);
    }
    ctx.strokeStyle = theme.muted;
    ctx.strokeRect(bx - 0.5, top - 0.5, BAR_W + 1, barH + 1);
    const barY = (v: number): number => top + (1 - v / (spec.max || 1)) * (barH - 1);
    const barLabel = (v: number, text: string): void => {
      ctx.fillStyle = theme.muted;
      ctx.fillRect(bx + BAR_W, Math.round(barY(v)), 3, 1);
      axisText(ctx, theme, text, bx + BAR_W + 5, barY(v), 'left', 'middle', true);
    };
    for (const t of barTicks) barLabel(t, spec.format(Number(t.toFixed(digits))));
    // The ends of the bar are always labelled: the top colour is the largest value, which is rarely a round tick.
    const clear = fs * 1.2;
    if (barY(barTicks.at(-1) ?? 0) - barY(spec.max) > clear) barLabel(spec.max, spec.format(spec.max));
    if (barY(0) - barY(barTicks[0] ?? spec.max) > clear) barLabel(0, spec.format(0));
    verticalText(ctx, theme, spec.unit, bx + BAR_W + 10 + barLabelW + fs * 0.7, top + barH / 2);

  }

  /** Redraws: the chart itself only when its data, theme or width changed (into `base`); then the outlines. */
  private draw(): void {
    const spec = this.spec;
    if (!spec || spec.rows === 0 || spec.cols === 0) {
      sizeCanvas(this.canvas, 1, 1);
      return;
    }
    const width = Math.max(240, this.host.clientWidth - 2);
    if (this.dirty || width !== this.paintedWidth) {
      this.paintBase(spec, width);
      this.dirty = false;
      this.paintedWidth = width;
    }
    const { width: chartW, height, left, top, cellW, cellH } = this.geometry;
    const dpr = window.devicePixelRatio || 1;
    const ctx = this.canvas.width === Math.round(chartW * dpr) && this.canvas.height === Math.round(height * dpr)
      ? this.canvas.getContext('2d')!
      : sizeCanvas(this.canvas, chartW, height);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.drawImage(this.base, 0, 0);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const theme = this.theme;
    // The picked cell and the cursor.
    const outline = (row: number, slot: number, colour: string, w: number): void => {
      ctx.strokeStyle = colour;
      ctx.lineWidth = w;
      ctx.strokeRect(left + slot * cellW + w / 2, top + row * cellH + w / 2, Math.max(2, cellW - w), Math.max(2, cellH - w));
    };
    if (this.picked) {
      const slot = this.order.indexOf(this.picked.col);
      if (slot >= 0 && this.picked.row < spec.rows) outline(this.picked.row, slot, theme.highContrast ? theme.activeBorder! : theme.foreground, 2);
    }
    if (this.cursor) outline(this.cursor.row, this.cursor.slot, theme.focus, 1.5);
  }
}
