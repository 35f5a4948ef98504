// Layer-to-layer routing flow as a picture (one canvas): a column of nodes per MoE layer — expert e's node is as
// tall as the share of tokens whose top-1 expert it is — and ribbons between consecutive layers as wide as the
// tokens whose top-1 goes from expert i to expert j (layout: model.ts flow()). Ribbons take their source expert's
// colour; hovering a node or ribbon gives its figures. Axes: MoE layer along x; along y the experts stacked in order,
// with a scale bar of 10 % of the tokens. Many layers (48 and more) stay readable: columns keep a minimum gap (the
// chart scrolls sideways when the panel is narrower), every k-th layer is numbered with a tick at each, and experts are
// named beside the first and last columns only, unless the gaps leave room for names at every column (model.ts flowAxes).
import { expertHex } from '../colors';
import { chartFont, sizeCanvas } from '../charts/axes';
import type { Theme } from '../theme';
import { flowAxes, FLOW_PICTURE, type FlowLayout } from './model';

const { left: LEFT, top: TOP, bottom: BOTTOM, right: RIGHT, nodeWidth: NODE_W } = FLOW_PICTURE;

export interface FlowDescribe {
  node(row: number, expert: number): string;
  ribbon(row: number, from: number, to: number, count: number): string;
}

export class FlowPicture {
  readonly canvas: HTMLCanvasElement;
  private layout: FlowLayout | undefined;
  private layers: number[] = [];
  private frame = 0;
  private hits: { path: Path2D; text: string }[] = [];
  private nodeHits: { x: number; y0: number; y1: number; text: string }[] = [];

  constructor(host: HTMLElement, private theme: Theme, private readonly tooltip: HTMLElement, private describe: FlowDescribe | undefined = undefined) {
    this.canvas = document.createElement('canvas');
    this.canvas.id = 'flow-picture';
    this.canvas.tabIndex = 0;
    this.canvas.setAttribute('role', 'img');
    host.appendChild(this.canvas);
    this.canvas.addEventListener('mousemove', (e) => this.onMove(e));
    this.canvas.addEventListener('mouseleave', () => (this.tooltip.hidden = true));
    new ResizeObserver(() => this.requestDraw()).observe(host);
  }

  setTheme(theme: Theme): void {
    this.theme = theme;
    this.requestDraw();
  }

  set(layout: FlowLayout, layers: number[], describe: FlowDescribe, label: string): void {
    this.layout = layout;
    this.layers = layers;
    this.describe = describe;
    this.canvas.setAttribute('aria-label', label);
    this.canvas.dataset.layers = String(layers.length);
    this.canvas.dataset.ribbons = String(layout.ribbons.reduce((s, r) => s + r.length, 0));
    this.requestDraw();
  }

  private onMove(e: MouseEvent): void {
    const rect = this.canvas.getBoundingClientRect();
    const x = e.clientX - rect.left;
    const y = e.clientY - rect.top;
    const node = this.nodeHits.find((n) => x >= n.x - 2 && x <= n.x + NODE_W + 2 && y >= n.y0 - 1 && y <= n.y1 + 1);
    const g = this.canvas.getContext('2d')!;
    const dpr = window.devicePixelRatio || 1;
    let text = node?.text;
    if (!text) {
      g.setTransform(1, 0, 0, 1, 0, 0);
      for (let i = this.hits.length - 1; i >= 0; i--) {
        if (g.isPointInPath(this.hits[i].path, x * dpr, y * dpr)) {
          text = this.hits[i].text;
          break;
        }
      }
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
    }
    if (!text) {
      this.tooltip.hidden = true;
      return;
    }
    this.tooltip.textContent = text;
    this.tooltip.hidden = false;
    this.tooltip.style.left = `${Math.min(e.clientX + 14, window.innerWidth - this.tooltip.offsetWidth - 8)}px`;
    this.tooltip.style.top = `${e.clientY + 16}px`;
  }

  requestDraw(): void {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  private draw(): void {
    const layout = this.layout;
    const d = this.describe;
    if (!layout || !d) return;
    const L = this.layers.length;
    const t = this.theme;
    const host = this.canvas.parentElement!;
    const E = layout.nodes[0]?.length ?? 8;
    const g = this.canvas.getContext('2d')!;
    g.font = chartFont(t, 0.85);
    const layerLabelW = g.measureText(String(Math.max(...this.layers, 0))).width;
    g.font = chartFont(t, 0.8);
    const expertLabelW = g.measureText(`e${E - 1}`).width;
    const axes = flowAxes(L, host.clientWidth, layerLabelW, expertLabelW);
    const plotH = Math.max(220, Math.min(520, 14 * E));
    const cssW = axes.width;
    const cssH = TOP + plotH + BOTTOM;
    sizeCanvas(this.canvas, cssW, cssH);
    g.clearRect(0, 0, cssW, cssH);
    this.canvas.dataset.layerStep = String(axes.layerStep);
    this.canvas.dataset.expertLabels = axes.expertLabels;
    this.canvas.dataset.columnGap = axes.gap.toFixed(1);
    const plotW = cssW - LEFT - RIGHT - NODE_W;
    const colX = (r: number): number => LEFT + (L > 1 ? (r * plotW) / (L - 1) : plotW / 2);
    const Y = (v: number): number => TOP + v * plotH;
    this.hits = [];
    this.nodeHits = [];
    // Ribbons, smallest last drawn first so the large ones stay visible.
    g.globalAlpha = t.highContrast ? 0.7 : 0.45;
    layout.ribbons.forEach((ribbons, r) => {
      const x0 = colX(r) + NODE_W;
      const x1 = colX(r + 1);
      const mid = (x0 + x1) / 2;
      for (let i = ribbons.length - 1; i >= 0; i--) {
        const rb = ribbons[i];
        const p = new Path2D();
        p.moveTo(x0, Y(rb.sy0));
        p.bezierCurveTo(mid, Y(rb.sy0), mid, Y(rb.ty0), x1, Y(rb.ty0));
        p.lineTo(x1, Y(rb.ty1));
        p.bezierCurveTo(mid, Y(rb.ty1), mid, Y(rb.sy1), x0, Y(rb.sy1));
        p.closePath();
        g.fillStyle = expertHex(rb.from);
        g.fill(p);
        this.hits.push({ path: p, text: d.ribbon(r, rb.from, rb.to, rb.count) });
      }
    });
    g.globalAlpha = 1;
    // Nodes.
    layout.nodes.forEach((nodes, r) => {
      const x = colX(r);
      nodes.forEach((n, e) => {
        if (n.y1 <= n.y0) return;
        g.fillStyle = expertHex(e);
        g.fillRect(x, Y(n.y0), NODE_W, Math.max(1, Y(n.y1) - Y(n.y0)));
        if (t.highContrast) {
          g.strokeStyle = t.border ?? t.foreground;
          g.strokeRect(x + 0.5, Y(n.y0) + 0.5, NODE_W - 1, Math.max(1, Y(n.y1) - Y(n.y0)) - 1);
        }
        this.nodeHits.push({ x, y0: Y(n.y0), y1: Y(n.y1), text: d.node(r, e) });
        const named = axes.expertLabels === 'every' || r === 0 || r === L - 1;
        if (named && Y(n.y1) - Y(n.y0) >= 12 && nodes.length <= 32) {
          g.fillStyle = t.foreground;
          g.textAlign = r === L - 1 ? 'right' : 'left';
          g.textBaseline = 'middle';
          g.font = chartFont(t, 0.8);
          g.fillText(`e${e}`, r === L - 1 ? x - 3 : x + NODE_W + 3, (Y(n.y0) + Y(n.y1)) / 2);
        }
      });
    });
    // Axes.
    g.strokeStyle = t.foreground;
    g.fillStyle = t.foreground;
    g.lineWidth = 1;
    g.font = chartFont(t, 0.85);
    g.beginPath();
    g.moveTo(LEFT - 8.5, TOP);
    g.lineTo(LEFT - 8.5, TOP + plotH);
    g.stroke();
    // Scale bar: the height of 10 % of the tokens (nodes are separated by small gaps, so y is not a plain axis).
    const ten = 0.1 * layout.scale * plotH;
    g.lineWidth = 3;
    g.beginPath();
    g.moveTo(LEFT - 20, TOP + plotH);
    g.lineTo(LEFT - 20, TOP + plotH - ten);
    g.stroke();
    g.lineWidth = 1;
    g.save();
    g.translate(LEFT - 28, TOP + plotH - ten / 2);
    g.rotate(-Math.PI / 2);
    g.textAlign = 'center';
    g.textBaseline = 'middle';
    g.fillText('10 %', 0, 0);
    g.restore();
    g.save();
    g.translate(12, TOP + plotH / 2);
    g.rotate(-Math.PI / 2);
    g.textAlign = 'center';
    g.fillText('top-1 expert (height = share of tokens)', 0, 0);
    g.restore();
    g.textAlign = 'center';
    g.textBaseline = 'top';
    // A tick at every layer column, its number at every layerStep-th.
    g.beginPath();
    for (let r = 0; r < L; r++) {
      const x = Math.round(colX(r) + NODE_W / 2) + 0.5;
      g.moveTo(x, TOP + plotH + 1);
      g.lineTo(x, TOP + plotH + (r % axes.layerStep === 0 ? 5 : 3));
    }
    g.stroke();
    for (let r = 0; r < L; r += axes.layerStep) g.fillText(String(this.layers[r]), colX(r) + NODE_W / 2, TOP + plotH + 6);
    g.fillText('MoE layer', LEFT + plotW / 2, TOP + plotH + 24);
  }
}
