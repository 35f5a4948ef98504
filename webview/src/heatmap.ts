// The routing panel's expert load: a layer × expert matrix (charts/matrix.ts) of the activation rate — the share of
// the run's tokens whose top-k includes the expert — with labelled axes, a colour bar in % of tokens, the value on
// hover, experts in number order or sorted by load; beside it a table of per-layer figures (router entropy in nats,
// load imbalance: common/src/routing.ts LayerStats). Click a cell (or Enter) to pick that (layer, expert) to edit.
import { QUANTITY, quantityLabel } from '../../common/src/quantities';
import { plural } from '../../common/src/format';
import { MatrixChart } from './charts/matrix';
import { fixed, percent } from './format';
import type { RunRouting } from './runData';
import type { Theme } from './theme';

export interface HeatmapCallbacks {
  onPick(layer: number, expert: number): void;
  onHover(text: string | undefined, clientX: number, clientY: number): void;
}

/** How the expert columns are ordered: by number, by load in the picked layer, or by load over all layers. */
export type ExpertOrder = 'index' | 'picked-layer' | 'total';

export class LoadHeatmap {
  private readonly chart: MatrixChart;
  private readonly table: HTMLTableElement;
  private run: RunRouting | undefined;
  order: ExpertOrder = 'index';

  constructor(heatmapHost: HTMLElement, tableHost: HTMLElement, theme: Theme, private readonly callbacks: HeatmapCallbacks) {
    this.chart = new MatrixChart(heatmapHost, theme, {
      onPick: (row, expert) => {
        if (!this.run) return;
        // The host sets `picked` back (PatchEditor.pick), which re-sorts the columns when they follow the picked layer.
        this.callbacks.onPick(this.run.layers[row], expert);
      },
      onHover: (text, x, y) => this.callbacks.onHover(text, x, y),
    }, 'load-heatmap');
    this.table = document.createElement('table');
    this.table.className = 'layer-stats';
    tableHost.appendChild(this.table);
  }

  get canvas(): HTMLCanvasElement {
    return this.chart.canvas;
  }

  set picked(cell: { layer: number; expert: number } | undefined) {
    const row = cell && this.run?.rowOfLayer(cell.layer);
    this.chart.picked = cell && row !== undefined ? { row, col: cell.expert } : undefined;
    if (this.order === 'picked-layer') this.update();
  }

  requestDraw(): void {
    this.chart.requestDraw();
  }

  setTheme(theme: Theme): void {
    this.chart.setTheme(theme);
  }

  setRun(run: RunRouting | undefined): void {
    this.run = run;
    this.update();
  }

  setOrder(order: ExpertOrder): void {
    this.order = order;
    this.update();
  }

  /** Recomputes the shares and the figures (after spans arrive; cheap: L × E). */
  update(): void {
    const run = this.run;
    if (!run) {
      this.table.replaceChildren();
      this.chart.set(undefined);
      return;
    }
    const E = run.E;
    const share = run.loadShare();
    let max = 0;
    for (const v of share) max = Math.max(max, v);
    const filled = run.filled;
    const values = Float32Array.from(share, (v, i) => (filled[Math.floor(i / E)] ? v : NaN));
    this.chart.set({
      rows: run.layers.length,
      cols: E,
      values,
      rowLabel: (r) => `L${run.layers[r]}`,
      colLabel: (e) => String(e),
      rowTitle: 'MoE layer',
      colTitle: 'expert',
      max: max || 1,
      unit: quantityLabel(QUANTITY.activationRate),
      format: (v) => percent(v, max < 0.1 ? 1 : 0),
      describe: (r, e, v) => {
        const n = filled[r];
        if (!n) return `layer ${run.layers[r]} · expert ${e}: not routed yet`;
        const meanW = run.layerStats(r)?.experts[e].meanWeight ?? 0;
        return `layer ${run.layers[r]} · expert ${e}: ${QUANTITY.activationRate.name} ${percent(v)} (${Math.round(v * n)} of ${plural(n, 'token')}), mean weight ${fixed(meanW, 3)}`;
      },
      ...(this.order === 'index' ? {} : { colOrder: this.columnOrder(run, share) }),
    });
    this.renderTable(run);
  }

  private columnOrder(run: RunRouting, share: Float32Array): number[] {
    const E = run.E;
    const key = new Float64Array(E);
    const pickedRow = this.chart.picked?.row ?? 0;
    for (let r = 0; r < run.layers.length; r++) {
      if (this.order === 'picked-layer' && r !== pickedRow) continue;
      for (let e = 0; e < E; e++) key[e] += share[r * E + e];
    }
    return Array.from({ length: E }, (_, e) => e).sort((a, b) => key[b] - key[a] || a - b);
  }

  private renderTable(run: RunRouting): void {
    const head = document.createElement('thead');
    const uniform = Math.log(run.E);
    head.innerHTML = `<tr><th scope="col">layer</th><th scope="col" title="${QUANTITY.routerEntropy.meaning}; ln ${run.E} = ${fixed(uniform, 2)} nats is uniform">mean ${QUANTITY.routerEntropy.name} (nats)</th><th scope="col" title="coefficient of variation of tokens per expert (0 = balanced)">load CV</th><th scope="col" title="busiest expert ÷ the uniform share k/E">max/mean</th><th scope="col" title="experts no token selected">unused</th></tr>`;
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
}
