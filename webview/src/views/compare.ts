// The "Difference" panel in compare mode: the routing change in the same words as the host's notification
// (common/src/runDiff.ts describeRunDiff) and per layer (which top-1 experts were replaced by which), the next tokens
// whose probability moved (or that nothing moved) and the generated texts side by side.
import { visibleToken } from '../../../common/src/format';
import { changedNextTokens, describeNextTokenChange, describeRunDiff, NEXT_TOKEN_CHANGE_FLOOR, type RunDiff } from '../../../common/src/runDiff';
import { QUANTITY } from '../../../common/src/quantities';
import type { RunRouting } from '../runData';

/** A probability change in percentage points with the digits it needs: "+12.5", "−0.40", "+0.0031". */
function signedPoints(delta: number): string {
  const points = Math.abs(delta * 100);
  const text = points >= 10 ? points.toFixed(1) : points >= 0.1 ? points.toFixed(2) : points.toPrecision(2);
  return `${delta > 0 ? '+' : delta < 0 ? '−' : ''}${text}`;
}

/** A probability in %, with the digits a small one needs ("99.98 %", "0.013 %"); "–" when unknown. */
function probability(p: number | undefined): string {
  if (p === undefined) return '–';
  const v = p * 100;
  if (v === 0) return '0 %';
  return `${v >= 99.95 && v < 100 ? v.toFixed(3) : v >= 1 ? v.toFixed(1) : v.toPrecision(2)} %`;
}

/** Per MoE layer: changed cells, top-1 changes and the most frequent top-1 replacements. */
function layerTable(diff: RunDiff): HTMLTableElement {
  const table = document.createElement('table');
  table.className = 'diff-layers';
  table.id = 'diff-layers';
  table.innerHTML = '<thead><tr><th scope="col">layer</th><th scope="col">changed cells</th><th scope="col" title="positions whose highest-weighted expert differs (the selected set may be the same, reordered)">top-1 changed</th><th scope="col" class="left">most frequent top-1 changes (A → B)</th></tr></thead>';
  const body = document.createElement('tbody');
  for (const l of diff.layers) {
    const tr = document.createElement('tr');
    const top1 = l.top1Swaps.reduce((n, s) => n + s.count, 0);
    const swaps = l.top1Swaps.slice(0, 3).map((s) => `e${s.from} → e${s.to} ×${s.count}`).join(', ') || '–';
    tr.innerHTML = `<th scope="row">L${l.layer}</th><td>${l.changedCells} of ${l.comparedCells}</td><td>${top1}</td><td class="left"></td>`;
    tr.lastElementChild!.textContent = swaps;
    if (l.changedCells > 0) tr.classList.add('changed');
    body.appendChild(tr);
  }
  table.appendChild(body);
  return table;
}

export function renderCompare(host: HTMLElement, primary: RunRouting, compare: RunRouting, diff: RunDiff | string): void {
  host.replaceChildren();
  const p = document.createElement('p');
  p.id = 'changed-cells';
  if (typeof diff === 'string') {
    p.textContent = `These runs cannot be compared: ${diff}.`;
    host.appendChild(p);
    return;
  }
  p.dataset.changedCells = String(diff.changedCells);
  p.textContent = `${describeRunDiff(diff)}.`;
  host.appendChild(p);
  host.appendChild(layerTable(diff));
  const next = diff.nextToken;
  if (next) {
    const h = document.createElement('h3');
    h.textContent = describeNextTokenChange(next).replace(/^next-token distribution/, 'Next-token distribution');
    host.appendChild(h);
    const moved = changedNextTokens(next).slice(0, 8);
    if (moved.length === 0) {
      const top = next.rows.reduce((best, r) => ((r.probA ?? 0) > (best.probA ?? 0) ? r : best), next.rows[0]);
      const note = document.createElement('p');
      note.id = 'next-token-unchanged';
      note.textContent = top
        ? `No next token moved by ${NEXT_TOKEN_CHANGE_FLOOR * 100} percentage points or more; the most likely is “${top.text ? visibleToken(top.text) : `#${top.token}`}” at ${probability(top.probA)} in A and ${probability(top.probB)} in B.`
        : 'No next token moved.';
      host.appendChild(note);
    } else {
      const table = document.createElement('table');
      table.className = 'next-tokens';
      table.id = 'next-token-changes';
      table.innerHTML = `<caption class="muted small">tokens whose ${QUANTITY.probability.name} moved by ≥ ${NEXT_TOKEN_CHANGE_FLOOR * 100} percentage points, largest move first</caption><thead><tr><th scope="col">token</th><th scope="col">A</th><th scope="col">B</th><th scope="col">Δ (percentage points)</th></tr></thead>`;
      const body = document.createElement('tbody');
      for (const row of moved) {
        const tr = document.createElement('tr');
        const cells = [row.text ? visibleToken(row.text) : `#${row.token}`, probability(row.probA), probability(row.probB), signedPoints(row.delta)];
        for (const text of cells) {
          const td = document.createElement('td');
          td.textContent = text;
          tr.appendChild(td);
        }
        if (Math.abs(row.delta) >= 0.05) tr.className = row.delta > 0 ? 'up' : 'down';
        body.appendChild(tr);
      }
      table.appendChild(body);
      host.appendChild(table);
    }
  }
  if (primary.info.generatedText !== undefined || compare.info.generatedText !== undefined) {
    const h = document.createElement('h3');
    h.textContent = 'Generated text';
    host.appendChild(h);
    const pair = document.createElement('div');
    pair.className = 'pair';
    for (const [name, run] of [['A', primary], ['B', compare]] as const) {
      const col = document.createElement('div');
      const title = document.createElement('div');
      title.className = 'small muted';
      title.textContent = `${name}: ${run.info.label}`;
      const pre = document.createElement('pre');
      pre.textContent = run.info.generatedText ?? '(no generated text)';
      col.append(title, pre);
      pair.appendChild(col);
    }
    host.appendChild(pair);
  }
}
