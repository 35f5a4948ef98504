// A matrix heatmap on one canvas, sized to its container: row and column axes with numbers and titles, a colour
// bar with its unit and ticks, values on hover, a selected cell (click, or arrow keys when focused; Enter/Space
// activates) announced through a live region. Colours: viridis (perceptually ordered, legible on light, dark and
// high-contrast backgrounds); text, axes and outlines from the --vscode-* theme variables.
import { axisLines, chartFont, labelStep, sizeCanvas, verticalText } from '../charts/axes';
import { rampLut, unpackRgba } from '../colors';
import type { Theme } from '../theme';

export interface MatrixSpec {
  rows: number;
  cols: number;
  /** Value of (row, column) — column in data order (colOrder maps display → data). */
  value(row: number, col: number): number;
  /** The colour bar's top; 0 is its bottom. */
  max: number;
  rowLabel(row: number): string;
  colLabel(col: number): string;
  rowTitle: string;
  colTitle: string;
  /** The colour bar's title: the quantity and its unit. */
  unit: string;
  tick(value: number): string;
  /** One sentence for the tooltip and the live region. */
  describe(row: number, col: number): string;
  /** Display order of the columns (data indices); default 0..cols-1. */
  colOrder?: Int32Array;
  /** Cells drawn as "not on the scale" (e.g. the co-activation diagonal). */
  offScale?(row: number, col: number): boolean;
  /** Largest cell side in CSS pixels. */
  maxCell?: number;
  minCellHeight?: number;
}

const LEFT = 64, TOP = 10, BOTTOM = 46, RIGHT = 96;

export class MatrixHeatmap {
  readonly canvas: HTMLCanvasElement;
  private spec: MatrixSpec | undefined;
  private readonly lut = rampLut();
  private cellW = 8;
  private cellH = 8;
  private frame = 0;
  /** The selected cell (display column). */
  selected: { row: number; col: number } | undefined;

  constructor(
    host: HTMLElement,
    id: string,
    label: string,
    private theme: Theme,
    private readonly live: HTMLElement,
    private readonly tooltip: HTMLElement,
    private readonly onSelect?: (row: number, col: number) => void,
  ) {
    this.canvas = document.createElement('canvas');
    this.canvas.id = id;
    this.canvas.tabIndex = 0;
    this.canvas.setAttribute('role', 'img');
    this.canvas.setAttribute('aria-label', label);
    host.appendChild(this.canvas);
    this.canvas.addEventListener('mousemove', (e) => {
      const hit = this.hit(e);
      if (!hit || !this.spec) return this.hideTip();
      this.showTip(this.spec.describe(hit.row, this.dataCol(hit.col)), e.clientX, e.clientY);
    });
    this.canvas.addEventListener('mouseleave', () => this.hideTip());
    this.canvas.addEventListener('click', (e) => {
      const hit = this.hit(e);
      if (hit) this.select(hit.row, hit.col, true);
    });
    this.canvas.addEventListener('keydown', (e) => this.onKey(e));
    new ResizeObserver(() => this.requestDraw()).observe(host);
  }

  setTheme(theme: Theme): void {
    this.theme = theme;
    this.requestDraw();
  }

  set(spec: MatrixSpec): void {
    this.spec = spec;
    this.canvas.dataset.rows = String(spec.rows);
    this.canvas.dataset.cols = String(spec.cols);
    this.canvas.dataset.max = String(spec.max);
    if (this.selected && (this.selected.row >= spec.rows || this.selected.col >= spec.cols)) this.selected = undefined;
    this.requestDraw();
  }

  /** The data column shown at display column c. */
  dataCol(c: number): number {
    return this.spec?.colOrder ? this.spec.colOrder[c] : c;
  }

  /** Selects the cell showing data column `col` of `row` (no callback). */
  selectData(row: number, col: number): void {
    const order = this.spec?.colOrder;
    const c = order ? order.indexOf(col) : col;
    this.selected = { row, col: Math.max(0, c) };
    this.requestDraw();
  }

  private select(row: number, col: number, announce: boolean): void {
    if (!this.spec) return;
    this.selected = { row, col };
    this.canvas.dataset.selected = `${row},${this.dataCol(col)}`;
    if (announce) this.live.textContent = this.spec.describe(row, this.dataCol(col));
    this.onSelect?.(row, this.dataCol(col));
    this.requestDraw();
  }

  private onKey(e: KeyboardEvent): void {
    if (!this.spec) return;
    const s = this.selected ?? { row: 0, col: 0 };
    const moves: Record<string, [number, number]> = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    const m = moves[e.key];
    if (m) {
      e.preventDefault();
      const k = e.shiftKey ? 8 : 1;
      const row = Math.max(0, Math.min(this.spec.rows - 1, s.row + m[0] * k));
      const col = Math.max(0, Math.min(this.spec.cols - 1, s.col + m[1] * k));
      this.select(row, col, true);
    } else if (e.key === 'Home' || e.key === 'End') {
      e.preventDefault();
      this.select(s.row, e.key === 'Home' ? 0 : this.spec.cols - 1, true);
    }
  }

  private showTip(text: string, x: number, y: number): void {
    this.tooltip.textContent = text;
    this.tooltip.hidden = false;
    const w = this.tooltip.offsetWidth;
    this.tooltip.style.left = `${Math.min(x + 14, window.innerWidth - w - 8)}px`;
    this.tooltip.style.top = `${y + 16}px`;
  }

  private hideTip(): void {
    this.tooltip.hidden = true;
  }

  private hit(e: MouseEvent): { row: number; col: number } | undefined {
    if (!this.spec) return undefined;
    const rect = this.canvas.getBoundingClientRect();
    const col = Math.floor((e.clientX - rect.left - LEFT) / this.cellW);
    const row = Math.floor((e.clientY - rect.top - TOP) / this.cellH);
    if (col < 0 || row < 0 || col >= this.spec.cols || row >= this.spec.rows) return undefined;
    return { row, col };
  }

  requestDraw(): void {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  private draw(): void {
    const spec = this.spec;
    if (!spec) return;
    const host = this.canvas.parentElement!;
    const width = Math.max(LEFT + RIGHT + spec.cols * 3, host.clientWidth);
    const maxCell = spec.maxCell ?? 40;
    this.cellW = Math.max(2, Math.min(maxCell, Math.floor((width - LEFT - RIGHT) / spec.cols)));
    this.cellH = Math.max(spec.minCellHeight ?? 6, Math.min(maxCell, this.cellW));
    const plotW = this.cellW * spec.cols;
    const plotH = this.cellH * spec.rows;
    const cssW = LEFT + plotW + RIGHT;
    const cssH = TOP + Math.max(plotH, 90) + BOTTOM;
    const g = sizeCanvas(this.canvas, cssW, cssH);
    const t = this.theme;
    g.font = chartFont(t);
    // Cells.
    const max = spec.max > 0 ? spec.max : 1;
    for (let r = 0; r < spec.rows; r++) {
      for (let c = 0; c < spec.cols; c++) {
        const d = this.dataCol(c);
        const x = LEFT + c * this.cellW;
        const y = TOP + r * this.cellH;
        if (spec.offScale?.(r, d)) {
          g.fillStyle = t.widget;
          g.fillRect(x, y, this.cellW, this.cellH);
          g.strokeStyle = t.muted;
          g.beginPath();
          g.moveTo(x + 1, y + this.cellH - 1);
          g.lineTo(x + this.cellW - 1, y + 1);
          g.stroke();
          continue;
        }
        const v = spec.value(r, d) / max;
        const [R, G, B] = unpackRgba(this.lut[Math.max(0, Math.min(255, Math.round(v * 255)))]);
        g.fillStyle = `rgb(${R},${G},${B})`;
        g.fillRect(x, y, this.cellW, this.cellH);
      }
    }
    if (t.highContrast && this.cellW >= 6) {
      g.strokeStyle = t.border ?? t.foreground;
      g.lineWidth = 1;
      g.strokeRect(LEFT + 0.5, TOP + 0.5, plotW - 1, plotH - 1);
    }
    // Axes: ticks every few cells so labels never overlap.
    g.fillStyle = t.foreground;
    axisLines(g, t.foreground, LEFT, TOP, plotW, plotH);
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    const rs = labelStep(this.cellH, 10);
    for (let r = 0; r < spec.rows; r += rs) {
      const y = TOP + (r + 0.5) * this.cellH;
      g.fillText(spec.rowLabel(r), LEFT - 6, y);
      g.beginPath();
      g.moveTo(LEFT - 4, y);
      g.lineTo(LEFT - 1, y);
      g.stroke();
    }
    g.textAlign = 'center';
    g.textBaseline = 'top';
    const cs = labelStep(this.cellW, spec.colOrder ? 26 : 20);
    for (let c = 0; c < spec.cols; c += cs) {
      const x = LEFT + (c + 0.5) * this.cellW;
      g.fillText(spec.colLabel(this.dataCol(c)), x, TOP + plotH + 5);
      g.beginPath();
      g.moveTo(x, TOP + plotH + 1);
      g.lineTo(x, TOP + plotH + 4);
      g.stroke();
    }
    g.fillText(spec.colTitle, LEFT + plotW / 2, TOP + plotH + 24);
    verticalText(g, t, spec.rowTitle, 14, TOP + plotH / 2);
    // Colour bar with its unit.
    const barX = LEFT + plotW + 14;
    const barH = Math.max(plotH, 90);
    for (let i = 0; i < barH; i++) {
      const [R, G, B] = unpackRgba(this.lut[Math.round((1 - i / (barH - 1)) * 255)]);
      g.fillStyle = `rgb(${R},${G},${B})`;
      g.fillRect(barX, TOP + i, 12, 1);
    }
    g.strokeStyle = t.border ?? t.muted;
    g.strokeRect(barX - 0.5, TOP - 0.5, 13, barH + 1);
    g.fillStyle = t.foreground;
    g.textAlign = 'left';
    g.textBaseline = 'middle';
    for (const f of [0, 0.5, 1]) g.fillText(spec.tick(f * spec.max), barX + 17, TOP + (1 - f) * barH);
    verticalText(g, t, spec.unit, LEFT + plotW + RIGHT - 8, TOP + barH / 2);
    // Selection.
    if (this.selected) {
      g.strokeStyle = t.activeBorder ?? t.focus;
      g.lineWidth = 2;
      g.strokeRect(LEFT + this.selected.col * this.cellW + 1, TOP + this.selected.row * this.cellH + 1, this.cellW - 2, this.cellH - 2);
    }
  }
}
