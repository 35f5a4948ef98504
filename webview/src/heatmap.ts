// Layer × expert load: for every MoE layer (row) and expert (column), the share of tokens whose top-k includes the
// expert, coloured with viridis relative to the busiest cell; beside it a table of per-layer figures (mean router
// entropy in nats, load imbalance: common/src/routing.ts LayerStats). Click a cell to pick that (layer, expert).
import { fixed, percent } from './format';
import { lutIndex, rampLut, unpackRgba } from './colors';
import type { RunRouting } from './runData';
import type { Theme } from './theme';

export interface HeatmapCallbacks {
  onPick(layer: number, expert: number): void;
  onHover(text: string | undefined, clientX: number, clientY: number): void;
}

export class LoadHeatmap {
  readonly canvas: HTMLCanvasElement;
  private readonly table: HTMLTableElement;
  private run: RunRouting | undefined;
  private share: Float32Array = new Float32Array(0);
  private maxShare = 0;
  private readonly lut = rampLut();
  private cellW = 4;
  private cellH = 8;
  private frame = 0;
  picked: { layer: number; expert: number } | undefined;

  constructor(heatmapHost: HTMLElement, tableHost: HTMLElement, private theme: Theme, private readonly callbacks: HeatmapCallbacks) {
    this.canvas = document.createElement('canvas');
    this.canvas.id = 'load-heatmap';
    this.canvas.tabIndex = 0;
    this.canvas.setAttribute('role', 'img');
    heatmapHost.appendChild(this.canvas);
    this.table = document.createElement('table');
    this.table.className = 'layer-stats';
    tableHost.appendChild(this.table);
    this.canvas.addEventListener('mousemove', (e) => {
      const hit = this.hit(e);
      if (!hit || !this.run) return this.callbacks.onHover(undefined, 0, 0);
      const { row, expert } = hit;
      const n = this.run.filled[row];
      const meanW = this.run.layerStats(row)?.experts[expert].meanWeight ?? 0;
      this.callbacks.onHover(
        `layer ${this.run.layers[row]} · expert ${expert}: ${percent(this.share[row * this.run.E + expert])} of ${n} tokens, mean weight ${fixed(meanW, 3)}`,
        e.clientX,
        e.clientY,
      );
    });
    this.canvas.addEventListener('mouseleave', () => this.callbacks.onHover(undefined, 0, 0));
    this.canvas.addEventListener('click', (e) => {
      const hit = this.hit(e);
      if (!hit || !this.run) return;
      this.picked = { layer: this.run.layers[hit.row], expert: hit.expert };
      this.callbacks.onPick(this.picked.layer, hit.expert);
      this.requestDraw();
    });
  }

  private hit(e: MouseEvent): { row: number; expert: number } | undefined {
    if (!this.run) return undefined;
    const rect = this.canvas.getBoundingClientRect();
    const expert = Math.floor((e.clientX - rect.left) / this.cellW);
    const row = Math.floor((e.clientY - rect.top) / this.cellH);
    if (expert < 0 || expert >= this.run.E || row < 0 || row >= this.run.layers.length) return undefined;
    return { row, expert };
  }

  setTheme(theme: Theme): void {
    this.theme = theme;
    this.requestDraw();
  }

  setRun(run: RunRouting | undefined): void {
    this.run = run;
    this.update();
  }

  /** Recomputes shares and figures (call after chunks arrive; cheap: L × E). */
  update(): void {
    const run = this.run;
    if (!run) {
      this.table.replaceChildren();
      this.requestDraw();
      return;
    }
    this.share = run.loadShare();
    this.maxShare = this.share.reduce((m, v) => Math.max(m, v), 0);
    this.canvas.setAttribute('aria-label', `Expert load: ${run.layers.length} layers × ${run.E} experts, busiest cell ${percent(this.maxShare)} of tokens`);
    this.canvas.dataset.layers = String(run.layers.length);
    this.canvas.dataset.experts = String(run.E);
    this.renderTable(run);
    this.requestDraw();
  }

  private renderTable(run: RunRouting): void {
    const head = document.createElement('thead');
    head.innerHTML = `<tr><th scope="col">layer</th><th scope="col" title="mean router entropy in nats (0 = one expert, ln ${run.E} = ${fixed(Math.log(run.E), 2)} = uniform)">entropy (nats)</th><th scope="col" title="coefficient of variation of tokens per expert (0 = balanced)">load CV</th><th scope="col" title="busiest expert ÷ the uniform share k/E">max/mean</th><th scope="col" title="experts no token selected">unused</th></tr>`;
    const body = document.createElement('tbody');
    run.layers.forEach((layer, row) => {
      const s = run.layerStats(row);
      const tr = document.createElement('tr');
      const cells = s ? [`L${layer}`, fixed(s.meanEntropy, 3), fixed(s.loadCv, 2), fixed(s.maxOverMean, 2), String(s.unusedExperts)] : [`L${layer}`, '…', '', '', ''];
      for (const [i, text] of cells.entries()) {
        const td = document.createElement(i === 0 ? 'th' : 'td');
        if (i === 0) td.setAttribute('scope', 'row');
        td.textContent = text;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    });
    this.table.replaceChildren(head, body);
  }

  requestDraw(): void {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  private draw(): void {
    const run = this.run;
    const ctx = this.canvas.getContext('2d')!;
    if (!run) {
      this.canvas.width = 0;
      return;
    }
    const L = run.layers.length;
    const E = run.E;
    const avail = Math.max(200, (this.canvas.parentElement?.clientWidth ?? 400) - 4);
    this.cellW = Math.max(2, Math.min(18, Math.floor(avail / E)));
    this.cellH = Math.max(4, Math.min(14, Math.floor(320 / L)));
    const w = this.cellW * E;
    const h = this.cellH * L;
    const dpr = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(w * dpr);
    this.canvas.height = Math.round(h * dpr);
    this.canvas.style.width = `${w}px`;
    this.canvas.style.height = `${h}px`;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = this.theme.background;
    ctx.fillRect(0, 0, w, h);
    for (let r = 0; r < L; r++) {
      if (!run.filled[r]) continue;
      for (let e = 0; e < E; e++) {
        const idx = lutIndex(this.maxShare > 0 ? this.share[r * E + e] / this.maxShare : 0)!;
        const [cr, cg, cb] = unpackRgba(this.lut[idx]);
        ctx.fillStyle = `rgb(${cr},${cg},${cb})`;
        ctx.fillRect(e * this.cellW, r * this.cellH, this.cellW, this.cellH);
      }
    }
    if (this.theme.highContrast && this.cellW >= 4) {
      ctx.strokeStyle = this.theme.border!;
      ctx.lineWidth = 1;
      for (let r = 0; r <= L; r++) ctx.strokeRect(0.5, r * this.cellH + 0.5, w - 1, 0);
    }
    if (this.picked) {
      const row = run.rowOfLayer(this.picked.layer);
      if (row !== undefined) {
        ctx.strokeStyle = this.theme.highContrast ? this.theme.activeBorder! : this.theme.focus;
        ctx.lineWidth = 2;
        ctx.strokeRect(this.picked.expert * this.cellW, row * this.cellH, this.cellW, this.cellH);
      }
    }
  }
}
