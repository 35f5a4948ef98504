// The routing-headroom panel's HTML (views/headroomPanel.ts), a pure function of the data so a unit test can render
// it: the ANALYSIS ONLY notice, per-layer bars (share of the wrong items one layer's routing fixes, share of the
// right items it breaks; any single layer; every layer together) drawn as SVG with axes, units and a legend, the
// same figures as a table, and the wrong items routing fixes. No scripts; only --vscode-* colours, so light, dark
// and high-contrast themes all apply; every bar group and table takes keyboard focus and says its figures.
import type { HeadroomItemRecord, HeadroomSummary } from '../adapt/headroom';
import { escapeHtml } from './adaptHtml';

export type HeadroomView =
  | { kind: 'running'; source: string; done: number; total: number; records: HeadroomItemRecord[]; summary: HeadroomSummary }
  | { kind: 'done'; source: string; records: HeadroomItemRecord[]; summary: HeadroomSummary };

const pct = (x: number): string => `${(100 * x).toFixed(1)}%`;

const STYLE = `
body { font-family: var(--vscode-font-family); font-size: var(--vscode-font-size); color: var(--vscode-foreground); background: var(--vscode-editor-background); padding: 0 12px 16px; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.4em; }
.notice { border: 1px solid var(--vscode-editorWarning-foreground, var(--vscode-contrastBorder)); color: var(--vscode-editorWarning-foreground, var(--vscode-foreground)); padding: 6px 8px; font-weight: 600; }
table { border-collapse: collapse; margin: .4em 0; }
th, td { border: 1px solid var(--vscode-panel-border, var(--vscode-contrastBorder, transparent)); padding: 2px 6px; text-align: left; vertical-align: top; }
th { color: var(--vscode-descriptionForeground); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: var(--vscode-descriptionForeground); }
svg { display: block; max-width: 100%; height: auto; }
svg text { fill: var(--vscode-foreground); font-family: var(--vscode-font-family); font-size: 11px; }
svg .axis { stroke: var(--vscode-foreground); stroke-width: 1; }
svg .grid { stroke: var(--vscode-panel-border, var(--vscode-descriptionForeground)); stroke-width: 1; stroke-dasharray: 2 3; opacity: .6; }
svg .fix { fill: var(--vscode-charts-green, var(--vscode-foreground)); stroke: var(--vscode-contrastBorder, transparent); }
svg .break { fill: var(--vscode-charts-red, var(--vscode-editorError-foreground)); stroke: var(--vscode-contrastBorder, transparent); }
svg g.bars:focus { outline: none; }
svg g.bars:focus .frame { stroke: var(--vscode-focusBorder); stroke-width: 2; fill: none; }
svg .frame { fill: none; stroke: none; }
table:focus, section:focus { outline: 1px solid var(--vscode-focusBorder); }
.legend { display: flex; gap: 16px; align-items: center; margin: .3em 0; }
.swatch { display: inline-block; width: .9em; height: .9em; vertical-align: middle; margin-right: 4px; border: 1px solid var(--vscode-contrastBorder, transparent); }
.swatch.fix { background: var(--vscode-charts-green, var(--vscode-foreground)); }
.swatch.break { background: var(--vscode-charts-red, var(--vscode-editorError-foreground)); }
`;

interface Group {
  label: string;     // x-axis label
  name: string;      // spoken name
  fixed: number;
  fixShare: number;
  broken: number;
  breakShare: number;
}

/** Per-layer grouped bars: y = share of items in %, 0–100, with gridlines every 25 %. */
function chart(s: HeadroomSummary): string {
  const groups: Group[] = s.perLayer.map((f) => ({ label: String(f.layer), name: `Layer ${f.layer}`, ...f }));
  groups.push({ label: 'any', name: 'Any single layer', ...s.anyLayer });
  if (s.joint) groups.push({ label: 'all', name: 'Every layer together', ...s.joint });
  const left = 56, top = 16, plotH = 200, groupW = 64, barW = 22, bottom = 48;
  const width = left + groups.length * groupW + 16, height = top + plotH + bottom;
  const y = (share: number): number => top + plotH * (1 - Math.max(0, Math.min(1, share)));
  const parts: string[] = [];
  parts.push(`<svg role="group" aria-label="Routing headroom per layer: share of wrong items fixed and of right items broken, in percent" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}">`);
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(`<line class="grid" x1="${left}" x2="${width - 8}" y1="${y(tick)}" y2="${y(tick)}"/>`);
    parts.push(`<text x="${left - 6}" y="${y(tick) + 4}" text-anchor="end">${Math.round(tick * 100)}</text>`);
  }
  parts.push(`<line class="axis" x1="${left}" x2="${left}" y1="${top}" y2="${top + plotH}"/>`);
  parts.push(`<line class="axis" x1="${left}" x2="${width - 8}" y1="${top + plotH}" y2="${top + plotH}"/>`);
  parts.push(`<text x="14" y="${top + plotH / 2}" text-anchor="middle" transform="rotate(-90 14 ${top + plotH / 2})">share of items (%)</text>`);
  parts.push(`<text x="${left + (groups.length * groupW) / 2}" y="${height - 6}" text-anchor="middle">MoE layer whose routing at the last prompt token changes</text>`);
  groups.forEach((g, i) => {
    const x0 = left + i * groupW + (groupW - 2 * barW - 4) / 2;
    const said = `${g.name}: fixes ${g.fixed} of ${s.wrong} wrong items (${pct(g.fixShare)}), breaks ${g.broken} of ${s.right} right items (${pct(g.breakShare)})`;
    parts.push(`<g class="bars" tabindex="0" role="img" aria-label="${escapeHtml(said)}"><title>${escapeHtml(said)}</title>`);
    parts.push(`<rect class="frame" x="${x0 - 3}" y="${top}" width="${2 * barW + 10}" height="${plotH}"/>`);
    parts.push(`<rect class="fix" x="${x0}" y="${y(g.fixShare)}" width="${barW}" height="${top + plotH - y(g.fixShare)}"/>`);
    parts.push(`<rect class="break" x="${x0 + barW + 4}" y="${y(g.breakShare)}" width="${barW}" height="${top + plotH - y(g.breakShare)}"/>`);
    parts.push(`<text x="${x0 + barW / 2}" y="${y(g.fixShare) - 3}" text-anchor="middle">${Math.round(100 * g.fixShare)}</text>`);
    parts.push(`<text x="${x0 + barW * 1.5 + 4}" y="${y(g.breakShare) - 3}" text-anchor="middle">${Math.round(100 * g.breakShare)}</text>`);
    parts.push(`<text x="${x0 + barW + 2}" y="${top + plotH + 16}" text-anchor="middle">${escapeHtml(g.label)}</text>`);
    parts.push('</g>');
  });
  parts.push('</svg>');
  return parts.join('');
}

function figuresTable(s: HeadroomSummary): string {
  const row = (name: string, f: { fixed: number; fixShare: number; broken: number; breakShare: number }): string =>
    `<tr><th scope="row">${escapeHtml(name)}</th><td class="num">${f.fixed} / ${s.wrong}</td><td class="num">${pct(f.fixShare)}</td><td class="num">${f.broken} / ${s.right}</td><td class="num">${pct(f.breakShare)}</td></tr>`;
  const rows = s.perLayer.map((f) => row(`Layer ${f.layer}`, f));
  rows.push(row('Any single layer', s.anyLayer));
  if (s.joint) rows.push(row('Every layer together', s.joint));
  return `<table tabindex="0" aria-label="Routing headroom figures"><thead><tr><th scope="col">Routing changed in</th><th scope="col">Wrong items fixed</th><th scope="col">Share</th><th scope="col">Right items broken</th><th scope="col">Share</th></tr></thead><tbody>${rows.join('')}</tbody></table>`;
}

function fixedTable(s: HeadroomSummary): string {
  if (s.fixedItems.length === 0) return '<p class="muted">No wrong item was fixed by a routing change.</p>';
  const rows = s.fixedItems.map((f) =>
    `<tr><td>${escapeHtml(f.id)}</td><td>${escapeHtml(f.skill)}</td><td>${escapeHtml(f.answer)}</td><td>${escapeHtml(f.expected)}</td>` +
      `<td>${f.layers.length ? escapeHtml(f.layers.join(', ')) : '<span class="muted">none alone</span>'}</td><td>${f.joint ? 'yes' : 'no'}</td></tr>`);
  return `<table tabindex="0" aria-label="Wrong items fixed by a routing change"><thead><tr><th scope="col">Item</th><th scope="col">Skill</th><th scope="col">Model's answer</th><th scope="col">Label</th><th scope="col">Fixed by one layer alone</th><th scope="col">Fixed by every layer together</th></tr></thead><tbody>${rows.join('')}</tbody></table>`;
}

function body(v: HeadroomView): string {
  const s = v.summary;
  const parts: string[] = ['<h1>Routing headroom — ANALYSIS ONLY</h1>'];
  parts.push(`<p class="notice" role="note">${escapeHtml(s.notice)}</p>`);
  parts.push(`<p class="muted">${escapeHtml(v.source)} · ${s.completed} of ${s.items} items${s.cancelled ? ' (cancelled: the items finished so far)' : ''} · ` +
    'an answer is the best option letter, or the first answer token, at the last prompt position</p>');
  if (v.kind === 'running') parts.push(`<p role="status">Running… ${v.done} of ${v.total} items searched.</p>`);
  if (s.completed === 0) return parts.join('\n');
  parts.push(`<p>${s.right} right, ${s.wrong} wrong: accuracy ${pct(s.accuracy)}; with the best routing change found for each item ${pct(s.bestRoutingAccuracy)}.</p>`);
  parts.push('<h2>Per layer</h2>');
  parts.push('<div class="legend" aria-hidden="true"><span><span class="swatch fix"></span>wrong items fixed (% of the wrong items)</span><span><span class="swatch break"></span>right items broken (% of the right items)</span></div>');
  parts.push(`<section tabindex="-1" aria-label="Chart">${chart(s)}</section>`);
  parts.push(figuresTable(s));
  parts.push(`<h2>Wrong items a routing change fixes (${s.fixedItems.length})</h2>`, fixedTable(s));
  const st = s.settings;
  parts.push(`<p class="muted">Search: greedy over the top-k sets (${st.candidates || 'every'} swap${st.candidates === 1 ? '' : 's'} run per move, ${st.moves || 'top-k'} moves per layer), then ${st.steps} Adam steps on log ω (lr ${st.lrStart} → ${st.lrEnd}); ${s.meanMs.toFixed(0)} ms per item.</p>`);
  return parts.join('\n');
}

/** The whole panel document; `nonce` goes into the CSP and the style tag. */
export function headroomPanelHtml(view: HeadroomView, nonce: string, cspSource = ''): string {
  const title = 'Routing headroom (analysis only)';
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'nonce-${nonce}'; img-src ${escapeHtml(cspSource)};">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title}</title><style nonce="${nonce}">${STYLE}</style></head>
<body><main aria-label="${title}">${body(view)}</main></body></html>`;
}
