// The routing-headroom panel's HTML (views/headroomHtml.ts) and the summary behind it (adapt/headroom.ts): the
// ANALYSIS ONLY notice, per-layer bars with axes, units and spoken figures, the table of the same figures, the fixed
// items, everything escaped, under the strict CSP (nonce, no scripts, no inline styles).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { headroomPanelHtml } from '../../extension/src/views/headroomHtml';
import { summariseHeadroom, type HeadroomItemRecord } from '../../extension/src/adapt/headroom';
import { DEFAULT_HEADROOM } from '../../extension/src/adapt/settings';

function record(id: string, correct: boolean, flippedLayers: number[], joint: boolean): HeadroomItemRecord {
  const change = (layer: number, flipped: boolean) => ({ layer, flipped, margin: flipped === correct ? -1 : 1, answer: 'B', swaps: [], gradient: false, evaluations: 3 });
  return {
    analysis_only: true, id, skill: '<sub>', kind: 'mc', expected: 'A', answer: correct ? 'A' : 'C', correct, margin: correct ? 1 : -1,
    layers: [0, 1, 2].map((l) => change(l, flippedLayers.includes(l))),
    joint: change(-1, joint),
    ms: 10,
  };
}

const records = [
  record('w1', false, [0, 2], true),
  record('w2', false, [], true),
  record('w3', false, [], false),
  record('r1', true, [1], true),
  record('r2', true, [], false),
];

test('headroom summary: per-layer shares of the wrong items fixed and the right items broken, any layer, every layer together', () => {
  const s = summariseHeadroom(records, 7, true, { ...DEFAULT_HEADROOM, layers: [] });
  assert.equal(s.analysis_only, true);
  assert.deepEqual([s.items, s.completed, s.cancelled, s.right, s.wrong], [7, 5, true, 2, 3]);
  assert.deepEqual(s.perLayer.map((f) => [f.layer, f.fixed, f.broken]), [[0, 1, 0], [1, 0, 1], [2, 1, 0]]);
  assert.equal(s.perLayer[0].fixShare, 1 / 3);
  assert.equal(s.perLayer[1].breakShare, 1 / 2);
  assert.deepEqual([s.anyLayer.fixed, s.anyLayer.broken], [1, 1]);
  assert.deepEqual([s.joint!.fixed, s.joint!.broken], [2, 1]);
  assert.deepEqual(s.fixedItems.map((f) => [f.id, f.layers, f.joint]), [['w1', [0, 2], true], ['w2', [], true]]);
  assert.equal(s.bestRoutingAccuracy, 4 / 5);
});

test('headroom panel: notice, chart with axes and spoken figures per layer, tables, escaped, strict CSP', () => {
  const summary = summariseHeadroom(records, 5, false, { ...DEFAULT_HEADROOM, layers: [] });
  const html = headroomPanelHtml({ kind: 'done', source: 'tasks <1>.jsonl', records, summary }, 'NONCE9');
  assert.match(html, /Content-Security-Policy" content="default-src 'none'; style-src 'nonce-NONCE9'/);
  assert.ok(!/<script/i.test(html) && !/ style="/.test(html));
  assert.match(html, /<h1>Routing headroom — ANALYSIS ONLY<\/h1>/);
  assert.match(html, /role="note">ANALYSIS ONLY: every routing change here is searched with the item&#39;s own label/);
  assert.ok(html.includes('tasks &lt;1&gt;.jsonl') && html.includes('&lt;sub&gt;'));
  assert.ok(html.includes('>share of items (%)<') && html.includes('MoE layer whose routing at the last prompt token changes'));
  for (const tick of ['0', '25', '50', '75', '100']) assert.ok(html.includes(`text-anchor="end">${tick}<`), `y tick ${tick}`);
  assert.ok(html.includes('aria-label="Layer 0: fixes 1 of 3 wrong items (33.3%), breaks 0 of 2 right items (0.0%)"'));
  assert.ok(html.includes('aria-label="Every layer together: fixes 2 of 3 wrong items (66.7%), breaks 1 of 2 right items (50.0%)"'));
  assert.equal((html.match(/class="bars" tabindex="0"/g) ?? []).length, 5, 'three layers, any layer, all together: each focusable');
  assert.ok(html.includes('aria-label="Routing headroom figures"') && html.includes('aria-label="Wrong items fixed by a routing change"'));
  assert.match(html, /<td>w1<\/td><td>&lt;sub&gt;<\/td><td>C<\/td><td>A<\/td><td>0, 2<\/td><td>yes<\/td>/);
  assert.ok(html.includes('accuracy 40.0%; with the best routing change found for each item 80.0%'));
  const running = headroomPanelHtml({ kind: 'running', source: 'x.jsonl', done: 0, total: 9, records: [], summary: summariseHeadroom([], 9, false, { ...DEFAULT_HEADROOM, layers: [] }) }, 'N');
  assert.match(running, /Running… 0 of 9 items searched/);
});
