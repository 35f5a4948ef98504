// The adaptation panel's HTML (views/adaptPanel.ts), as a pure function of the data so a unit test can render it:
// "Re-mix (C3PO)" (ω before/after per critical layer, neighbours, routing change, answer before/after) and
// "Generate with rerouting" (rounds, final δ per layer, text with and without rerouting). Only --vscode-* colours.
import type { RemixResult, RerouteResult } from '../adapt/protocol';
import type { NativeRerouteRound } from '../engine/native';

export type AdaptView =
  | { kind: 'remix'; prompt: string; method: string; result: RemixResult }
  | { kind: 'reroute'; prompt: string; result: RerouteResult }
  /** Rerouting still running: the rounds so far. */
  | { kind: 'reroute-progress'; prompt: string; rounds: NativeRerouteRound[] };

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

const fmt = (x: number, d = 3): string => (Number.isFinite(x) ? x.toFixed(d) : String(x));

const STYLE = `
body { font-family: var(--vscode-font-family); font-size: var(--vscode-font-size); color: var(--vscode-foreground); background: var(--vscode-editor-background); padding: 0 12px 16px; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.4em; } h3 { font-size: 1em; margin: 1em 0 .3em; }
/* A table wider than a half-width panel (δ over 64 experts) scrolls sideways instead of being cut off. */
table { border-collapse: collapse; margin: .4em 0; display: block; max-width: 100%; overflow-x: auto; }
th, td { border: 1px solid var(--vscode-panel-border, var(--vscode-contrastBorder, transparent)); padding: 2px 6px; text-align: left; vertical-align: top; }
th { color: var(--vscode-descriptionForeground); font-weight: 600; }
.bars { display: grid; grid-template-columns: 4em 1fr 1fr; gap: 1px 8px; align-items: center; }
.bar { height: .8em; background: var(--vscode-charts-blue, var(--vscode-foreground)); }
.bar.after { background: var(--vscode-charts-orange, var(--vscode-foreground)); }
.core { font-weight: 700; color: var(--vscode-textLink-foreground); }
.core .bar { outline: 1px solid var(--vscode-focusBorder); }
.side { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
pre { white-space: pre-wrap; word-break: break-word; background: var(--vscode-textCodeBlock-background); padding: 6px; margin: 0; border: 1px solid var(--vscode-panel-border, transparent); }
pre:focus, section:focus, table:focus { outline: 1px solid var(--vscode-focusBorder); }
.muted { color: var(--vscode-descriptionForeground); }
.changed { color: var(--vscode-editorWarning-foreground); }
.row { display: contents; }
.axis > span { color: var(--vscode-descriptionForeground); font-size: .85em; }
.scale { display: flex; justify-content: space-between; border-bottom: 1px solid var(--vscode-descriptionForeground); }
${Array.from({ length: 101 }, (_, i) => `.w${i} { width: ${i}%; }`).join('\n')}
`;

/** Bar width as a class (the CSP allows no inline style attributes). */
const width = (fraction: number): string => `w${Math.max(0, Math.min(100, Math.round(100 * fraction)))}`;

function page(title: string, body: string, nonce: string, cspSource: string): string {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'nonce-${nonce}'; img-src ${escapeHtml(cspSource)};">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title><style nonce="${nonce}">${STYLE}</style></head>
<body><main aria-label="${escapeHtml(title)}">${body}</main></body></html>`;
}

function sideBySide(leftTitle: string, left: string, rightTitle: string, right: string): string {
  return `<div class="side"><section aria-label="${escapeHtml(leftTitle)}"><h3>${escapeHtml(leftTitle)}</h3><pre tabindex="0">${escapeHtml(left)}</pre></section>` +
    `<section aria-label="${escapeHtml(rightTitle)}"><h3>${escapeHtml(rightTitle)}</h3><pre tabindex="0">${escapeHtml(right)}</pre></section></div>`;
}

function remixBody(v: Extract<AdaptView, { kind: 'remix' }>): string {
  const { comparison: c, neighbours } = v.result;
  const o = c.outcome;
  const parts: string[] = [];
  parts.push(`<h1>Re-mix (C3PO): ${escapeHtml(o.method)}</h1>`);
  parts.push(`<p class="muted">Reference set ${escapeHtml(v.result.referenceDir)} (${v.result.referenceItems} items) · critical layers ${escapeHtml(o.layers.join(', '))} · σ ${fmt(o.sigma)}${o.alpha !== undefined ? ` · α ${fmt(o.alpha, 2)}` : ''}</p>`);
  parts.push(`<h2>Prompt</h2><pre tabindex="0">${escapeHtml(v.prompt)}</pre>`);
  if (o.skipped) parts.push(`<p class="changed" role="status">Nothing was changed: ${escapeHtml(o.skipped)}</p>`);
  if (o.losses.length > 0) parts.push(`<p>Neighbour loss: ${o.losses.map((x) => fmt(x, 4)).join(' → ')}</p>`);
  parts.push('<h2>Neighbours</h2>');
  if (neighbours.length === 0) parts.push('<p class="muted">No neighbour was used.</p>');
  else {
    parts.push('<table tabindex="0" aria-label="Neighbours"><thead><tr><th scope="col">Question</th><th scope="col">Similarity</th><th scope="col">Kernel weight</th></tr></thead><tbody>');
    for (const n of neighbours) parts.push(`<tr><td>${escapeHtml(n.question || n.id)}</td><td>${fmt(n.similarity)}</td><td>${fmt(n.weight)}</td></tr>`);
    parts.push('</tbody></table>');
  }
  parts.push('<h2>Routing change (selected experts at the last prompt token)</h2>');
  parts.push('<table tabindex="0" aria-label="Routing change"><thead><tr><th scope="col">Layer</th><th scope="col">Before</th><th scope="col">After</th></tr></thead><tbody>');
  for (const l of o.layers) {
    const s = c.selected[String(l)];
    if (!s) continue;
    const changed = s.before.join() !== s.after.join();
    parts.push(`<tr><th scope="row">${l}</th><td>${s.before.join(', ')}</td><td${changed ? ' class="changed"' : ''}>${s.after.join(', ')}${changed ? ' (changed)' : ''}</td></tr>`);
  }
  parts.push('</tbody></table>');
  parts.push('<h2>ω per critical layer</h2><p class="muted">ω = the router probability of each expert at the last prompt token. Bars: before (first) and after (second), on the scale shown above them; core experts in bold.</p>');
  for (const l of o.layers) {
    const before = o.omegaBefore[String(l)];
    const after = o.omegaAfter[String(l)];
    if (!before || !after) continue;
    const core = new Set(o.core[String(l)] ?? []);
    const max = Math.max(1e-12, ...before, ...after);
    const scale = `<span class="scale" aria-hidden="true"><span>0</span><span>${fmt(max / 2, 2)}</span><span>${fmt(max, 2)}</span></span>`;
    const rows: string[] = [`<div class="row axis" role="presentation"><span>expert</span><span>ω before (probability)</span><span>ω after (probability)</span></div>`,
      `<div class="row axis" role="presentation" aria-hidden="true"><span></span>${scale}${scale}</div>`];
    for (let e = 0; e < before.length; e++) {
      const label = `expert ${e}${core.has(e) ? ' (core)' : ''}: ω ${fmt(before[e])} → ${fmt(after[e])}`;
      rows.push(`<div class="row${core.has(e) ? ' core' : ''}" role="listitem" aria-label="${escapeHtml(label)}" title="${escapeHtml(label)}">` +
        `<span>${e}</span><span class="bar ${width(before[e] / max)}"></span><span class="bar after ${width(after[e] / max)}"></span></div>`);
    }
    parts.push(`<section tabindex="0" aria-label="ω at layer ${l}"><h3>Layer ${l}</h3><div class="bars" role="list">${rows.join('')}</div></section>`);
  }
  parts.push('<h2>Answer</h2>');
  const top = (t: typeof c.before.top): string => t.map((x) => `${JSON.stringify(x.text)} ${fmt(x.prob)}`).join('\n');
  parts.push(sideBySide('Before', `${c.before.text}\n\nnext tokens:\n${top(c.before.top)}`, 'After re-mix', `${c.after.text}\n\nnext tokens:\n${top(c.after.top)}`));
  return parts.join('\n');
}

function roundsTable(rounds: NativeRerouteRound[]): string {
  if (rounds.length === 0) return '<p class="muted">No rerouting round ran.</p>';
  const rows = rounds.map((r, i) =>
    `<tr><th scope="row">${i + 1}</th><td>${r.position}</td><td>${escapeHtml(r.layers.join(', '))}</td><td>${r.losses.map((x) => fmt(x, 4)).join(' → ')}</td></tr>`);
  return `<table tabindex="0" aria-label="Rerouting rounds"><thead><tr><th scope="col">Round</th><th scope="col">Context length</th><th scope="col">Layers adapted</th><th scope="col">Loss per step</th></tr></thead><tbody>${rows.join('')}</tbody></table>`;
}

/** δ of every adapted layer after each round (rows: round · layer; columns: experts, then the L2 norm). */
function deltaTable(rounds: NativeRerouteRound[]): string {
  const E = Math.max(0, ...rounds.flatMap((r) => Object.values(r.delta).map((d) => d.length)));
  if (E === 0) return '<p class="muted">No layer was adapted.</p>';
  const head = Array.from({ length: E }, (_, e) => `<th scope="col">${e}</th>`).join('');
  const body = rounds.flatMap((r, i) =>
    Object.keys(r.delta).sort((a, b) => Number(a) - Number(b)).map((l) => {
      const d = Array.from(r.delta[l]);
      const norm = Math.sqrt(d.reduce((a, x) => a + x * x, 0));
      return `<tr><th scope="row">${i + 1}</th><th scope="row">${escapeHtml(l)}</th>${d.map((x) => `<td>${fmt(x)}</td>`).join('')}<td>${fmt(norm)}</td></tr>`;
    }));
  return `<table tabindex="0" aria-label="Delta per layer after each round"><thead><tr><th scope="col">Round</th><th scope="col">Layer \\ expert</th>${head}<th scope="col">‖δ‖</th></tr></thead><tbody>${body.join('')}</tbody></table>`;
}

function rerouteBody(v: Extract<AdaptView, { kind: 'reroute' | 'reroute-progress' }>): string {
  const parts: string[] = [`<h1>Generate with rerouting</h1>`, `<h2>Prompt</h2><pre tabindex="0">${escapeHtml(v.prompt)}</pre>`];
  if (v.kind === 'reroute-progress') {
    parts.push(`<p role="status">Running… ${v.rounds.length} round${v.rounds.length === 1 ? '' : 's'} finished.</p>`, '<h2>Rounds</h2>', roundsTable(v.rounds),
      '<h2>δ per layer across rounds</h2>', deltaTable(v.rounds));
    return parts.join('\n');
  }
  const c = v.result.comparison;
  parts.push('<h2>Rounds</h2>', roundsTable(c.rounds));
  parts.push('<h2>δ per layer across rounds</h2>', deltaTable(c.rounds));
  parts.push('<h2>Generated text</h2>', sideBySide('Without rerouting', c.plain.text, 'With rerouting', c.rerouted.text));
  return parts.join('\n');
}

/** The whole panel document; `nonce` goes into the CSP and the style tag. */
export function adaptPanelHtml(view: AdaptView, nonce: string, cspSource = ''): string {
  return view.kind === 'remix' ? page('Re-mix (C3PO)', remixBody(view), nonce, cspSource) : page('Generate with rerouting', rerouteBody(view), nonce, cspSource);
}
