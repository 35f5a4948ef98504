// The human-readable routing table: rows = layers, columns = token positions, cells = top-1 expert and its weight
// ("3 .62"). Columns that do not fit the terminal wrap into further blocks.
import { visibleToken } from '../../../common/src/format';

export interface TableLayer {
  layer: number;
  /** Per column: the selected experts (highest weight first) and their weights; undefined = not captured. */
  experts: (ArrayLike<number> | undefined)[];
  weights: (ArrayLike<number> | undefined)[];
}

export interface TableOptions {
  /** Total width in characters (the terminal's columns). */
  width?: number;
  /** Absolute position of the first column. */
  firstPosition?: number;
}

/** Weight in three characters: ".62", "1.0". */
export function formatWeight(w: number): string {
  if (!Number.isFinite(w)) return '?';
  if (w >= 0.995) return '1.0';
  if (w <= 0) return '.00';
  return w.toFixed(2).slice(1);
}

function chars(text: string): string[] {
  return Array.from(text);
}

/** Cuts to `width` characters with an ellipsis. */
export function truncate(text: string, width: number): string {
  const cs = chars(text);
  if (cs.length <= width) return text;
  if (width <= 1) return cs.slice(0, width).join('');
  return cs.slice(0, width - 1).join('') + '…';
}

function padStart(text: string, width: number): string {
  return ' '.repeat(Math.max(0, width - chars(text).length)) + text;
}

function padEnd(text: string, width: number): string {
  return text + ' '.repeat(Math.max(0, width - chars(text).length));
}

export function formatRoutingTable(layers: TableLayer[], tokenLabels: string[], options: TableOptions = {}): string {
  const width = Math.max(20, options.width ?? 100);
  const first = options.firstPosition ?? 0;
  const columns = tokenLabels.length;
  if (columns === 0) return '(no tokens)\n';

  const maxExpert = Math.max(
    0,
    ...layers.flatMap((l) => l.experts.map((e) => (e && e.length > 0 ? e[0] : 0))),
  );
  const lastPosition = first + columns - 1;
  const cellWidth = Math.max(String(maxExpert).length + 4, String(lastPosition).length, 5);
  const labels = ['pos', 'token', ...layers.map((l) => `L${l.layer}`)];
  const labelWidth = Math.max(...labels.map((l) => l.length));
  const perBlock = Math.max(1, Math.floor((width - labelWidth) / (cellWidth + 1)));

  const cell = (layer: TableLayer, column: number): string => {
    const experts = layer.experts[column];
    const weights = layer.weights[column];
    if (!experts || experts.length === 0) return '-';
    return `${experts[0]} ${formatWeight(weights && weights.length > 0 ? weights[0] : NaN)}`;
  };

  const blocks: string[] = [];
  for (let start = 0; start < columns; start += perBlock) {
    const end = Math.min(columns, start + perBlock);
    const span = [...Array(end - start).keys()].map((i) => start + i);
    const lines: string[] = [];
    lines.push(padEnd('pos', labelWidth) + span.map((c) => ' ' + padStart(String(first + c), cellWidth)).join(''));
    lines.push(
      padEnd('token', labelWidth) +
        span.map((c) => ' ' + padStart(truncate(visibleToken(tokenLabels[c]), cellWidth), cellWidth)).join(''),
    );
    for (const layer of layers) {
      lines.push(padEnd(`L${layer.layer}`, labelWidth) + span.map((c) => ' ' + padStart(cell(layer, c), cellWidth)).join(''));
    }
    blocks.push(lines.map((l) => l.trimEnd()).join('\n'));
  }
  return blocks.join('\n\n') + '\n';
}
