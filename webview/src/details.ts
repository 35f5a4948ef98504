// Cell details: the hover tooltip and the pinned panel show the same content — the token, its top-k experts and
// weights, and a bar chart of the router logits over ALL experts at that layer (top-k highlighted, masked / forced /
// biased experts of the draft patch marked). In the pinned panel a bar is clickable: it picks the expert to edit.
import { expertHex } from './colors';
import { visibleToken } from '../../common/src/format';
import { fixed } from './format';
import type { RoutingPatch } from '../../common/src/patch';
import type { RunRouting } from './runData';
import type { Theme } from './theme';

export interface CellDetails {
  run: RunRouting;
  row: number;
  position: number;
  /** The same cell in the compared run, when comparing. */
  other?: { run: RunRouting; row: number | undefined };
  /** Tokens per drawn cell when zoomed out. */
  block: number;
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, className?: string, text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function expertList(run: RunRouting, row: number, position: number): HTMLElement {
  const list = el('ol', 'topk');
  const cells = run.cell(row, position);
  if (!cells.length) list.appendChild(el('li', 'muted', 'not computed yet'));
  for (const { expert, weight } of cells) {
    const item = el('li');
    const swatch = el('span', 'swatch');
    swatch.style.background = expertHex(expert);
    item.append(swatch, el('span', 'expert', `expert ${expert}`), el('span', 'weight', fixed(weight, 3)));
    const bar = el('span', 'weight-bar');
    bar.style.width = `${Math.round(weight * 60)}px`;
    item.appendChild(bar);
    list.appendChild(item);
  }
  return list;
}

/** Fills `container` with a cell's details; returns the logit chart canvas (for click handling). */
export function renderCellDetails(container: HTMLElement, d: CellDetails, theme: Theme, patch: RoutingPatch | undefined, chartWidth: number): HTMLCanvasElement | undefined {
  container.replaceChildren();
  const { run, row, position } = d;
  const layer = run.layers[row];
  const text = run.info.tokenText[position] ?? '';
  const head = el('div', 'cell-head');
  const id = run.info.tokens[position];
  const token = el('code', 'token', text ? visibleToken(text) : id !== undefined && id >= 0 ? `#${id}` : '…');
  head.append(token, el('span', 'muted', ` position ${position} · layer ${layer}${position >= run.info.promptTokens ? ' · generated' : ''}`));
  container.appendChild(head);
  if (d.block > 1) container.appendChild(el('div', 'muted small', `zoomed out: the cell drawn covers ${d.block} tokens; details are for this token`));
  if (d.other) {
    const pair = el('div', 'pair');
    const a = el('div');
    a.append(el('div', 'small muted', `A: ${run.info.label}`), expertList(run, row, position));
    const b = el('div');
    b.appendChild(el('div', 'small muted', `B: ${d.other.run.info.label}`));
    if (d.other.row === undefined || position >= d.other.run.T) b.appendChild(el('div', 'muted', 'no routing here'));
    else b.appendChild(expertList(d.other.run, d.other.row, position));
    pair.append(a, b);
    container.appendChild(pair);
  } else {
    container.appendChild(expertList(run, row, position));
  }
  if (position >= run.filled[row]) return undefined;
  const entropy = run.routerEntropy(row, position) ?? 0;
  const normalised = run.E > 1 ? entropy / Math.log(run.E) : 0;
  container.appendChild(el('div', 'small muted', `router entropy ${fixed(entropy, 3)} nats (${fixed(normalised, 3)} of ln ${run.E}) · logits over all ${run.E} experts:`));
  const canvas = el('canvas', 'logit-chart');
  canvas.setAttribute('role', 'img');
  const top = run.cell(row, position);
  canvas.setAttribute('aria-label', `Router logits at layer ${layer}, position ${position}: top experts ${top.map((c) => `${c.expert} (${fixed(c.weight, 2)})`).join(', ')}`);
  container.appendChild(canvas);
  drawLogitChart(canvas, run, row, position, theme, patch, chartWidth);
  return canvas;
}

/** Bar per expert: height = router logit relative to the layer's minimum at this token. */
export function drawLogitChart(canvas: HTMLCanvasElement, run: RunRouting, row: number, position: number, theme: Theme, patch: RoutingPatch | undefined, width: number): void {
  const E = run.E;
  const height = 64;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext('2d')!;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const logits = run.rows[row].routerLogits.subarray(position * E, (position + 1) * E);
  let min = Infinity;
  let max = -Infinity;
  for (const v of logits) {
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  const span = max - min || 1;
  const selected = new Set(run.cell(row, position).map((c) => c.expert));
  const layerPatch = patch?.layers[String(run.layers[row])];
  const masked = new Set(layerPatch?.mask ?? []);
  const forced = new Set(layerPatch?.force ?? []);
  const bw = width / E;
  const chartH = height - 8;
  for (let e = 0; e < E; e++) {
    const h = Math.max(1, ((logits[e] - min) / span) * chartH);
    ctx.fillStyle = selected.has(e) ? expertHex(e) : theme.muted;
    ctx.globalAlpha = selected.has(e) ? 1 : 0.45;
    ctx.fillRect(e * bw + (bw > 3 ? 0.5 : 0), chartH - h, Math.max(1, bw - (bw > 3 ? 1 : 0)), h);
    ctx.globalAlpha = 1;
    if (masked.has(e) || forced.has(e)) {
      ctx.fillStyle = masked.has(e) ? theme.masked : theme.accent;
      ctx.fillRect(e * bw, chartH + 2, Math.max(2, bw), 4);
    }
  }
  if (theme.highContrast) {
    ctx.strokeStyle = theme.border!;
    ctx.strokeRect(0.5, 0.5, width - 1, chartH);
  }
}

/** The expert under x in a logit chart of width `width`. */
export function expertAtChartX(x: number, width: number, E: number): number {
  return Math.max(0, Math.min(E - 1, Math.floor((x / width) * E)));
}
