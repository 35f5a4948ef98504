// Cell details: the hover tooltip and the pinned panel show the same content — the token, its top-k experts and
// weights, its router entropy (nats), and a bar chart of the router logits over ALL experts at that layer, with axes
// (top-k highlighted, masked / forced experts of the patch marked). In the pinned panel a bar picks the expert to edit.
import { expertHex } from './colors';
import { visibleToken } from '../../common/src/format';
import { fixed } from './format';
import { drawBars, type BarGeometry } from './charts/bars';
import { describeEntropy, QUANTITY } from '../../common/src/quantities';
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

/** Fills `container` with a cell's details; returns the logit chart canvas and its bars (for click handling). */
export function renderCellDetails(container: HTMLElement, d: CellDetails, theme: Theme, patch: RoutingPatch | undefined, chartWidth: number): { canvas: HTMLCanvasElement; bars: BarGeometry } | undefined {
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
  container.appendChild(el('div', 'small muted', `${QUANTITY.routerEntropy.name} ${describeEntropy(entropy, run.E, 3)}`));
  const canvas = el('canvas', 'logit-chart');
  canvas.setAttribute('role', 'img');
  const top = run.cell(row, position);
  canvas.setAttribute('aria-label', `Router logits at layer ${layer}, position ${position}: top experts ${top.map((c) => `${c.expert} (${fixed(c.weight, 2)})`).join(', ')}`);
  container.appendChild(canvas);
  const bars = drawLogitChart(canvas, run, row, position, theme, patch, chartWidth);
  container.appendChild(el('div', 'small muted', 'Coloured bars: the selected experts; a mark under a bar: masked (red) or forced (blue) by the patch.'));
  return { canvas, bars };
}

/** One bar per expert: its raw router logit at this token (selected experts in their colour; masked / forced
 *  experts of the session's patch marked under the axis), with a value axis and expert numbers. */
export function drawLogitChart(canvas: HTMLCanvasElement, run: RunRouting, row: number, position: number, theme: Theme, patch: RoutingPatch | undefined, width: number): BarGeometry {
  const E = run.E;
  const logits = run.rows[row].routerLogits.subarray(position * E, (position + 1) * E);
  const selected = new Set(run.cell(row, position).map((c) => c.expert));
  const layerPatch = patch?.layers[String(run.layers[row])];
  const masked = new Set(layerPatch?.mask ?? []);
  const forced = new Set(layerPatch?.force ?? []);
  return drawBars(canvas, {
    values: logits,
    label: (e) => String(e),
    xTitle: 'expert',
    yTitle: QUANTITY.routerLogit.name,
    fill: (e) => (selected.has(e) ? expertHex(e) : theme.muted),
    emphasised: (e) => selected.has(e),
    mark: (e) => (masked.has(e) ? theme.masked : forced.has(e) ? theme.accent : undefined),
  }, theme, width, 120);
}
