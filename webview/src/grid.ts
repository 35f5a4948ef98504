// The token × layer grid: rows = MoE layers, columns = tokens, one canvas. Only the visible viewport is drawn; a
// frame writes one pixel per visible cell (or per block of tokens when zoomed out, see downsample.ts) into a small
// ImageData and scales it up with drawImage, so the cost follows the viewport, not the sequence length. Scrolling
// is native (a sized spacer in an overflow:auto box; the canvas is sticky), repaints go through
// requestAnimationFrame. In compare mode the grid stacks bands: run A, run B, and their difference.
// Over 400 lines on purpose: layout, drawing, hit-testing and keyboard navigation share one geometry (row height,
// cell width, band tops), and splitting them would pass that state around instead of keeping it in one place.
import type { Metric } from '../../common/src/panelProtocol';
import type { RunDiff } from '../../common/src/runDiff';
import { expertPalette, lutIndex, rampLut } from './colors';
import { blockFor, DownsampleCache } from './downsample';
import { visibleToken } from '../../common/src/format';
import type { RunRouting } from './runData';
import type { Theme } from './theme';

export interface Band {
  title: string;
  run: RunRouting;
  /** 'diff' bands always show the change metric from `diff`. */
  kind: 'run' | 'diff';
}

export interface CellRef {
  band: number;
  row: number;
  position: number;
}

export interface GridCallbacks {
  onHover(cell: CellRef | undefined, clientX: number, clientY: number): void;
  onSelect(cell: CellRef, pin: boolean): void;
  onUnpin(): void;
  onViewChange(): void;
}

const LABEL_W = 52;
const STRIP_H = 70;
const BAND_HEADER_H = 18;
const MIN_ROW_H = 5;
const MAX_ROW_H = 22;
const MIN_CELL_W = 2;     // narrower columns are aggregated into blocks
const MAX_CELL_W = 64;

export class RoutingGrid {
  readonly scroller: HTMLElement;
  readonly canvas: HTMLCanvasElement;
  private readonly spacer: HTMLElement;
  private readonly ctx: CanvasRenderingContext2D;
  private readonly offscreen: HTMLCanvasElement;
  private readonly offCtx: CanvasRenderingContext2D;
  private image: ImageData | undefined;
  private readonly cache = new DownsampleCache();
  private palette = expertPalette(8);
  private readonly lut = rampLut();
  private bands: Band[] = [];
  private diff: RunDiff | undefined;
  /** Bumped whenever the diff is replaced: the Δ band's downsampling cache keys on it. */
  private diffVersion = 0;
  private theme: Theme;
  metric: Metric = 'expert';
  /** CSS pixels per token column; undefined = fit the whole sequence. */
  zoom: number | undefined;
  private rowH = 12;
  hover: CellRef | undefined;
  selected: CellRef | undefined;
  pinned: CellRef | undefined;
  private frame = 0;
  private drag: { x: number; y: number; left: number; top: number; moved: boolean } | undefined;
  /** Milliseconds of the last frames' draw calls (for the stress page). */
  readonly frameTimes: number[] = [];

  constructor(host: HTMLElement, theme: Theme, private readonly callbacks: GridCallbacks) {
    this.theme = theme;
    this.scroller = document.createElement('div');
    this.scroller.className = 'grid-scroll';
    this.scroller.tabIndex = 0;
    this.scroller.setAttribute('role', 'application');
    this.scroller.setAttribute('aria-roledescription', 'routing grid');
    this.scroller.setAttribute('aria-label', 'Routing grid: rows are MoE layers, columns are tokens. Arrow keys move, Enter pins, plus and minus zoom, 0 fits.');
    this.spacer = document.createElement('div');
    this.spacer.className = 'grid-spacer';
    this.canvas = document.createElement('canvas');
    this.canvas.className = 'grid-canvas';
    this.canvas.id = 'routing-grid';
    this.spacer.appendChild(this.canvas);
    this.scroller.appendChild(this.spacer);
    host.appendChild(this.scroller);
    this.ctx = this.canvas.getContext('2d', { alpha: false })!;
    this.offscreen = document.createElement('canvas');
    this.offCtx = this.offscreen.getContext('2d')!;

    this.scroller.addEventListener('scroll', () => {
      this.requestDraw();
      this.callbacks.onViewChange();
    });
    new ResizeObserver(() => this.layout()).observe(this.scroller);
    window.addEventListener('resize', () => this.fitHeight());
    this.scroller.addEventListener('mousemove', (e) => this.onMouseMove(e));
    this.scroller.addEventListener('mouseleave', () => {
      this.hover = undefined;
      this.callbacks.onHover(undefined, 0, 0);
      this.requestDraw();
    });
    this.scroller.addEventListener('mousedown', (e) => {
      if (e.button !== 0) return;
      this.drag = { x: e.clientX, y: e.clientY, left: this.scroller.scrollLeft, top: this.scroller.scrollTop, moved: false };
    });
    window.addEventListener('mouseup', (e) => {
      const drag = this.drag;
      this.drag = undefined;
      if (!drag || drag.moved || e.button !== 0) return;
      const cell = this.cellAt(e.clientX, e.clientY);
      if (cell) {
        this.selected = cell;
        this.scroller.focus();
        this.callbacks.onSelect(cell, true);
        this.requestDraw();
      }
    });
    this.scroller.addEventListener('wheel', (e) => {
      if (!e.ctrlKey && !e.metaKey) return;
      e.preventDefault();
      const rect = this.canvas.getBoundingClientRect();
      this.zoomBy(e.deltaY < 0 ? 1.25 : 0.8, e.clientX - rect.left);
    }, { passive: false });
    this.scroller.addEventListener('keydown', (e) => this.onKey(e));
  }

  // ---- data ------------------------------------------------------------------------------------------------------

  setBands(bands: Band[], diff: RunDiff | undefined): void {
    this.bands = bands;
    this.diff = diff;
    this.diffVersion++;
    const E = Math.max(...bands.map((b) => b.run.E), 1);
    if (this.palette.length < E) this.palette = expertPalette(E);
    this.cache.clear();
    this.fitHeight();
    this.layout();
  }

  /** The grid's box is as tall as its rows need at full row height, up to 62% of the window. */
  fitHeight(): void {
    const host = this.scroller.parentElement;
    if (!host) return;
    const wanted = STRIP_H + this.headerH * this.bands.length + this.totalRows * MAX_ROW_H + 18;
    host.style.height = `${Math.round(Math.min(wanted, Math.max(260, window.innerHeight * 0.62)))}px`;
  }

  setDiff(diff: RunDiff | undefined): void {
    this.diff = diff;
    this.diffVersion++;
    this.requestDraw();
  }

  setTheme(theme: Theme): void {
    this.theme = theme;
    this.requestDraw();
  }

  get tokens(): number {
    return Math.max(0, ...this.bands.map((b) => b.run.T));
  }

  private get totalRows(): number {
    return this.bands.reduce((n, b) => n + b.run.layers.length, 0);
  }

  private get headerH(): number {
    return this.bands.length > 1 ? BAND_HEADER_H : 0;
  }

  get cellW(): number {
    const fit = (this.scroller.clientWidth - LABEL_W) / Math.max(1, this.tokens);
    const w = this.zoom ?? Math.min(MAX_CELL_W, Math.max(fit, 0.01));
    return Math.max(Math.min(fit, MAX_CELL_W), Math.min(MAX_CELL_W, w));
  }

  get block(): number {
    return blockFor(this.cellW, MIN_CELL_W);
  }

  private bandTop(band: number): number {
    let y = STRIP_H;
    for (let b = 0; b < band; b++) y += this.headerH + this.bands[b].run.layers.length * this.rowH;
    return y + this.headerH;
  }

  // ---- layout & view ---------------------------------------------------------------------------------------------

  layout(): void {
    const w = this.scroller.clientWidth;
    const h = this.scroller.clientHeight;
    const rows = Math.max(1, this.totalRows);
    const avail = h - STRIP_H - this.headerH * this.bands.length - 2;
    this.rowH = Math.max(MIN_ROW_H, Math.min(MAX_ROW_H, Math.floor(avail / rows)));
    const contentW = LABEL_W + this.tokens * this.cellW;
    const contentH = STRIP_H + this.bands.reduce((y, b) => y + this.headerH + b.run.layers.length * this.rowH, 0);
    this.spacer.style.width = `${Math.ceil(Math.max(w, contentW))}px`;
    this.spacer.style.height = `${Math.ceil(Math.max(h, contentH))}px`;
    const dpr = window.devicePixelRatio || 1;
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
      this.canvas.style.width = `${w}px`;
      this.canvas.style.height = `${h}px`;
    }
    this.requestDraw();
  }

  zoomBy(factor: number, anchorX = (this.scroller.clientWidth + LABEL_W) / 2): void {
    const before = this.cellW;
    const tokenAtAnchor = (this.scroller.scrollLeft + anchorX - LABEL_W) / before;
    this.zoom = Math.min(MAX_CELL_W, Math.max(0.01, before * factor));
    const after = this.cellW;
    this.zoom = after;
    this.layout();
    this.scroller.scrollLeft = Math.max(0, tokenAtAnchor * after - (anchorX - LABEL_W));
    this.callbacks.onViewChange();
  }

  fit(): void {
    this.zoom = undefined;
    this.layout();
    this.scroller.scrollLeft = 0;
    this.callbacks.onViewChange();
  }

  /** Scrolls so that a cell is visible. */
  reveal(cell: CellRef): void {
    const cw = this.cellW;
    const x = cell.position * cw;
    const viewW = this.scroller.clientWidth - LABEL_W;
    if (x < this.scroller.scrollLeft) this.scroller.scrollLeft = x;
    else if (x + cw > this.scroller.scrollLeft + viewW) this.scroller.scrollLeft = x + cw - viewW;
    const y = this.bandTop(cell.band) + cell.row * this.rowH - STRIP_H;
    const viewH = this.scroller.clientHeight - STRIP_H;
    if (y < this.scroller.scrollTop) this.scroller.scrollTop = y;
    else if (y + this.rowH > this.scroller.scrollTop + viewH) this.scroller.scrollTop = y + this.rowH - viewH;
  }

  requestDraw(): void {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  cellAt(clientX: number, clientY: number): CellRef | undefined {
    const rect = this.canvas.getBoundingClientRect();
    const x = clientX - rect.left;
    const y = clientY - rect.top;
    if (x < LABEL_W || y < STRIP_H) return undefined;
    const position = Math.floor((this.scroller.scrollLeft + x - LABEL_W) / this.cellW);
    if (position < 0 || position >= this.tokens) return undefined;
    const contentY = y + this.scroller.scrollTop;
    for (let band = 0; band < this.bands.length; band++) {
      const top = this.bandTop(band);
      const row = Math.floor((contentY - top) / this.rowH);
      if (row >= 0 && row < this.bands[band].run.layers.length) return { band, row, position };
    }
    return undefined;
  }

  private onMouseMove(e: MouseEvent): void {
    if (this.drag) {
      const dx = e.clientX - this.drag.x;
      const dy = e.clientY - this.drag.y;
      if (!this.drag.moved && Math.abs(dx) + Math.abs(dy) > 4) this.drag.moved = true;
      if (this.drag.moved) {
        this.scroller.scrollLeft = this.drag.left - dx;
        this.scroller.scrollTop = this.drag.top - dy;
        return;
      }
    }
    const cell = this.cellAt(e.clientX, e.clientY);
    const same = cell && this.hover && cell.band === this.hover.band && cell.row === this.hover.row && cell.position === this.hover.position;
    if (!same) {
      this.hover = cell;
      this.requestDraw();
    }
    this.callbacks.onHover(cell, e.clientX, e.clientY);
  }

  private onKey(e: KeyboardEvent): void {
    const T = this.tokens;
    if (!T || !this.bands.length) return;
    const cur = this.selected ?? { band: 0, row: 0, position: Math.floor(this.scroller.scrollLeft / this.cellW) };
    let { band, row, position } = cur;
    const step = e.shiftKey ? 10 : 1;
    let handled = true;
    switch (e.key) {
      case 'ArrowLeft': position = Math.max(0, position - step); break;
      case 'ArrowRight': position = Math.min(T - 1, position + step); break;
      case 'ArrowUp':
        if (row > 0) row--;
        else if (band > 0) { band--; row = this.bands[band].run.layers.length - 1; }
        break;
      case 'ArrowDown':
        if (row < this.bands[band].run.layers.length - 1) row++;
        else if (band < this.bands.length - 1) { band++; row = 0; }
        break;
      case 'Home': position = 0; break;
      case 'End': position = T - 1; break;
      case 'Enter':
      case ' ':
        this.selected = cur;
        this.callbacks.onSelect(cur, true);
        this.requestDraw();
        e.preventDefault();
        return;
      case 'Escape': this.callbacks.onUnpin(); e.preventDefault(); return;
      case '+': case '=': this.zoomBy(1.5); e.preventDefault(); return;
      case '-': case '_': this.zoomBy(1 / 1.5); e.preventDefault(); return;
      case '0': this.fit(); e.preventDefault(); return;
      default: handled = false;
    }
    if (!handled) return;
    e.preventDefault();
    this.select({ band, row, position });
  }

  /** Selects a cell without pinning it: scrolls it into view and tells the host (arrow keys, the text view). */
  select(cell: CellRef): void {
    this.selected = cell;
    this.reveal(cell);
    this.callbacks.onSelect(cell, false);
    this.requestDraw();
  }

  // ---- drawing ---------------------------------------------------------------------------------------------------

  /** Packed colour per (block) cell of one band row, written into `dst` at `offset`. */
  private fillRow(band: Band, bandIndex: number, row: number, b0: number, nb: number, block: number, dst: Uint32Array, offset: number): void {
    const run = band.run;
    const n = run.T;
    const missing = this.theme.packed.missing;
    const metric: Metric = band.kind === 'diff' ? 'change' : this.metric;
    const end = Math.min(nb, Math.ceil(n / block) - b0);
    if (metric === 'expert') {
      const values = this.cache.mode(`e${bandIndex}`, row, run.rowVersion[row], run.top1[row], Math.min(n, run.filled[row]), block, run.E);
      const filledBlocks = Math.ceil(Math.min(n, run.filled[row]) / block);
      for (let i = 0; i < nb; i++) {
        const b = b0 + i;
        const v = b < filledBlocks ? values[b] : -1;
        dst[offset + i] = v >= 0 ? this.palette[v] : i < end ? missing : this.theme.packed.background;
      }
      return;
    }
    let values: Float32Array | undefined;
    let filled = Math.min(n, run.filled[row]);
    if (metric === 'change') {
      const change = this.diff?.layers[row]?.change;
      if (change) {
        values = this.cache.numeric(`c${bandIndex}`, row, this.diffVersion, change, change.length, block, 'max');
        filled = change.length;
      }
    } else {
      const source = metric === 'entropy' ? run.entropy[row] : run.top1Weight[row];
      values = this.cache.numeric(`${metric[0]}${bandIndex}`, row, run.rowVersion[row], source, filled, block, 'mean');
    }
    const filledBlocks = Math.ceil(filled / block);
    const packed = this.theme.packed;
    for (let i = 0; i < nb; i++) {
      const b = b0 + i;
      let color = i < end ? missing : packed.background;
      if (values && b < filledBlocks) {
        const v = values[b];
        if (metric === 'change') {
          if (!Number.isNaN(v)) color = v <= 0 ? packed.unchanged : v >= 0.999 || this.isTop1Block(row, b, block) ? packed.changed : packed.partial;
        } else {
          const idx = lutIndex(v);
          if (idx !== undefined) color = this.lut[idx];
        }
      }
      dst[offset + i] = color;
    }
  }

  private isTop1Block(row: number, b: number, block: number): boolean {
    const flags = this.diff?.layers[row]?.top1Changed;
    if (!flags) return false;
    for (let p = b * block; p < Math.min(flags.length, (b + 1) * block); p++) if (flags[p]) return true;
    return false;
  }

  draw(): void {
    const t0 = performance.now();
    const ctx = this.ctx;
    const dpr = window.devicePixelRatio || 1;
    const W = this.canvas.width / dpr;
    const H = this.canvas.height / dpr;
    const theme = this.theme;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = theme.background;
    ctx.fillRect(0, 0, W, H);
    const T = this.tokens;
    if (!this.bands.length || !T) {
      this.updateAttributes();
      return;
    }
    const cw = this.cellW;
    const block = this.block;
    const bw = cw * block;
    const x0 = this.scroller.scrollLeft / cw; // first visible token (fractional)
    const gridW = W - LABEL_W;
    const b0 = Math.floor(x0 / block);
    const b1 = Math.min(Math.ceil(T / block), Math.ceil((x0 + gridW / cw) / block) + 1);
    const nb = Math.max(1, b1 - b0);
    const scrollTop = this.scroller.scrollTop;
    const rowH = this.rowH;
    const gap = theme.highContrast ? 1 : rowH >= 8 ? 1 : 0;

    ctx.save();
    ctx.beginPath();
    ctx.rect(LABEL_W, STRIP_H, gridW, H - STRIP_H);
    ctx.clip();
    for (let bi = 0; bi < this.bands.length; bi++) {
      const band = this.bands[bi];
      const rows = band.run.layers.length;
      const top = this.bandTop(bi) - scrollTop;
      if (top > H || top + rows * rowH < STRIP_H) continue;
      if (!this.image || this.image.width < nb || this.image.height < rows) {
        this.image = new ImageData(Math.max(nb, this.image?.width ?? 0), Math.max(rows, this.image?.height ?? 0));
      }
      const img = this.image;
      const pixels = new Uint32Array(img.data.buffer);
      for (let r = 0; r < rows; r++) this.fillRow(band, bi, r, b0, nb, block, pixels, r * img.width);
      if (this.offscreen.width < img.width || this.offscreen.height < img.height) {
        this.offscreen.width = img.width;
        this.offscreen.height = img.height;
      }
      this.offCtx.putImageData(img, 0, 0, 0, 0, nb, rows);
      ctx.imageSmoothingEnabled = false;
      const dx = LABEL_W + (b0 * block - x0) * cw;
      ctx.drawImage(this.offscreen, 0, 0, nb, rows, dx, top, nb * bw, rows * rowH);
      // Cell separators: background-coloured gaps, contrast borders in high-contrast themes.
      if (gap) {
        ctx.fillStyle = theme.highContrast ? theme.border! : theme.background;
        for (let r = 1; r < rows; r++) ctx.fillRect(LABEL_W, Math.round(top + r * rowH) - 1, gridW, 1);
        if (bw >= (theme.highContrast ? 4 : 7)) {
          for (let i = 0; i <= nb; i++) ctx.fillRect(Math.round(dx + i * bw) - 1, top, 1, rows * rowH);
        }
      }
    }
    // Prompt / generation boundary.
    const promptEnd = this.bands[0].run.info.promptTokens;
    if (promptEnd > 0 && promptEnd < T) {
      const x = LABEL_W + (promptEnd - x0) * cw;
      ctx.fillStyle = theme.accent;
      ctx.fillRect(x - 1, STRIP_H, 2, H - STRIP_H);
    }
    this.drawOutline(this.hover, theme.highContrast ? theme.activeBorder! : theme.foreground, 1);
    this.drawOutline(this.selected, theme.focus, 2);
    if (this.pinned) this.drawOutline(this.pinned, theme.highContrast ? theme.activeBorder! : theme.accent, 2, [3, 2]);
    ctx.restore();

    this.drawStrip(W, x0, cw);
    this.drawLabels(H, scrollTop);
    this.updateAttributes();
    const ms = performance.now() - t0;
    this.frameTimes.push(ms);
    if (this.frameTimes.length > 600) this.frameTimes.splice(0, this.frameTimes.length - 600);
  }

  private drawOutline(cell: CellRef | undefined, color: string, width: number, dash: number[] = []): void {
    if (!cell || cell.band >= this.bands.length) return;
    const cw = this.cellW;
    const x = LABEL_W + cell.position * cw - this.scroller.scrollLeft;
    const y = this.bandTop(cell.band) + cell.row * this.rowH - this.scroller.scrollTop;
    const ctx = this.ctx;
    ctx.save();
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.setLineDash(dash);
    const w = Math.max(cw, 3);
    ctx.strokeRect(x - width / 2 - (w - cw) / 2, y - width / 2, w + width, this.rowH + width);
    ctx.restore();
  }

  private drawStrip(W: number, x0: number, cw: number): void {
    const ctx = this.ctx;
    const theme = this.theme;
    const run = this.bands[0].run;
    const T = this.tokens;
    ctx.fillStyle = theme.background;
    ctx.fillRect(0, 0, W, STRIP_H);
    ctx.fillStyle = theme.highContrast ? theme.border! : theme.muted;
    ctx.fillRect(LABEL_W, STRIP_H - 1, W - LABEL_W, 1);
    ctx.save();
    ctx.beginPath();
    ctx.rect(LABEL_W, 0, W - LABEL_W, STRIP_H);
    ctx.clip();
    const first = Math.max(0, Math.floor(x0));
    const last = Math.min(T, Math.ceil(x0 + (W - LABEL_W) / cw));
    const hoverPos = this.hover?.position ?? this.selected?.position;
    if (hoverPos !== undefined && hoverPos >= first && hoverPos < last) {
      ctx.fillStyle = theme.widget;
      ctx.fillRect(LABEL_W + (hoverPos - x0) * cw, 0, Math.max(cw, 2), STRIP_H - 1);
    }
    if (cw >= 11) {
      // One rotated label per token: decoded text with visible whitespace.
      ctx.font = `${Math.min(12, Math.floor(cw) - 1)}px ${theme.monoFamily}`;
      ctx.textBaseline = 'middle';
      ctx.textAlign = 'left';
      for (let p = first; p < last; p++) {
        const x = LABEL_W + (p - x0 + 0.5) * cw;
        const generated = p >= run.info.promptTokens;
        ctx.fillStyle = generated ? theme.accent : theme.foreground;
        ctx.save();
        ctx.translate(x, STRIP_H - 4);
        ctx.rotate(-Math.PI / 2);
        const text = this.tokenLabel(p);
        ctx.fillText(text.length > 9 ? `${text.slice(0, 8)}…` : text, 0, 0);
        ctx.restore();
      }
    } else {
      // Position ticks, spaced at least 56 px apart.
      const stepRaw = 56 / cw;
      const pow = 10 ** Math.floor(Math.log10(stepRaw));
      const step = [1, 2, 5, 10].map((m) => m * pow).find((s) => s >= stepRaw) ?? 10 * pow;
      ctx.font = `11px ${theme.fontFamily}`;
      ctx.textBaseline = 'bottom';
      ctx.textAlign = 'left';
      ctx.fillStyle = theme.muted;
      for (let p = Math.ceil(first / step) * step; p < last; p += step) {
        const x = LABEL_W + (p - x0) * cw;
        ctx.fillRect(x, STRIP_H - 8, 1, 7);
        ctx.fillText(String(p), x + 2, STRIP_H - 8);
      }
      if (this.block > 1) {
        ctx.textBaseline = 'top';
        ctx.fillText(`1 cell = ${this.block} tokens (majority / mean) — zoom in (+) for single tokens`, 4, 4);
      }
    }
    ctx.restore();
    ctx.font = `11px ${theme.fontFamily}`;
    ctx.fillStyle = theme.muted;
    ctx.textBaseline = 'bottom';
    ctx.textAlign = 'left';
    ctx.fillText('layer', 4, STRIP_H - 4);
  }

  private tokenLabel(p: number): string {
    const run = this.bands[0].run;
    const text = run.info.tokenText[p];
    return text === undefined || text === '' ? (run.info.tokens[p] >= 0 ? `#${run.info.tokens[p]}` : '…') : visibleToken(text);
  }

  private drawLabels(H: number, scrollTop: number): void {
    const ctx = this.ctx;
    const theme = this.theme;
    ctx.save();
    ctx.beginPath();
    ctx.rect(0, STRIP_H, LABEL_W, H - STRIP_H);
    ctx.clip();
    ctx.fillStyle = theme.background;
    ctx.fillRect(0, STRIP_H, LABEL_W, H - STRIP_H);
    ctx.font = `${Math.min(11, Math.max(8, this.rowH - 1))}px ${theme.fontFamily}`;
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'right';
    const every = Math.ceil(11 / this.rowH);
    for (let bi = 0; bi < this.bands.length; bi++) {
      const band = this.bands[bi];
      const top = this.bandTop(bi) - scrollTop;
      band.run.layers.forEach((layer, r) => {
        const arrived = band.run.filled[r] > 0;
        const active = this.hover?.band === bi && this.hover.row === r;
        if (r % every !== 0 && !active) return;
        ctx.fillStyle = active ? theme.foreground : arrived ? theme.muted : theme.widget;
        ctx.fillText(`L${layer}`, LABEL_W - 6, top + (r + 0.5) * this.rowH);
      });
    }
    ctx.restore();
    if (this.bands.length > 1) {
      // Band titles across the whole width, in the header row above each band.
      ctx.save();
      ctx.beginPath();
      ctx.rect(0, STRIP_H, this.canvas.width, H - STRIP_H);
      ctx.clip();
      ctx.textAlign = 'left';
      ctx.textBaseline = 'middle';
      ctx.font = `bold 11px ${theme.fontFamily}`;
      for (let bi = 0; bi < this.bands.length; bi++) {
        const band = this.bands[bi];
        const y = this.bandTop(bi) - scrollTop - BAND_HEADER_H / 2;
        ctx.fillStyle = theme.background;
        ctx.fillRect(0, y - BAND_HEADER_H / 2, this.canvas.width, BAND_HEADER_H);
        ctx.fillStyle = band.kind === 'diff' ? theme.changed : theme.foreground;
        ctx.fillText(band.title, 4, y);
      }
      ctx.restore();
    }
  }

  /** Data attributes end-to-end tests read (documented in webview/README.md). */
  private updateAttributes(): void {
    const c = this.canvas;
    const primary = this.bands[0]?.run;
    const set = (name: string, value: string | number | undefined) => {
      const v = value === undefined ? '' : String(value);
      if (c.getAttribute(name) !== v) c.setAttribute(name, v);
    };
    set('data-layers', primary?.layers.length ?? 0);
    set('data-layers-arrived', primary?.layersArrived ?? 0);
    set('data-tokens', primary?.T ?? 0);
    set('data-experts', primary?.E ?? 0);
    set('data-metric', this.metric);
    set('data-block', this.block);
    set('data-zoom', this.cellW.toFixed(3));
    set('data-mode', this.bands.length > 1 ? 'compare' : 'single');
    set('data-changed-cells', this.diff ? this.diff.changedCells : undefined);
    set('data-selected', this.selected ? `${this.selected.band},${this.bands[this.selected.band]?.run.layers[this.selected.row]},${this.selected.position}` : undefined);
    set('data-pinned', this.pinned ? `${this.pinned.band},${this.bands[this.pinned.band]?.run.layers[this.pinned.row]},${this.pinned.position}` : undefined);
  }

  bandAt(i: number): Band | undefined {
    return this.bands[i];
  }
}
