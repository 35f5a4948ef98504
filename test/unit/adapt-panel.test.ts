// The adaptation panel's HTML (views/adaptHtml.ts): renders the given re-mix / rerouting data, escapes text, and
// keeps the strict CSP (nonce, no inline style attributes, no scripts).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { adaptPanelHtml, escapeHtml } from '../../extension/src/views/adaptHtml';
import type { RemixResult, RerouteResult } from '../../extension/src/adapt/protocol';

const remix: RemixResult = {
  comparison: {
    outcome: {
      method: 'ngd', analysisOnly: false, layers: [3], sigma: 0.5, losses: [1.25, 0.5],
      omegaBefore: { '3': Float32Array.from([0.7, 0.2, 0.1]) },
      omegaAfter: { '3': Float32Array.from([0.1, 0.2, 0.7]) },
      core: { '3': [0, 2] },
      neighbours: [{ id: 'n1', similarity: 0.9, weight: 0.75 }],
    },
    selected: { '3': { before: [0], after: [2] } },
    before: { text: '<b>old</b>', tokens: [1], top: [{ token: 1, text: 'A', prob: 0.5 }] },
    after: { text: 'new & improved', tokens: [2], top: [{ token: 2, text: 'B', prob: 0.6 }] },
  },
  neighbours: [{ id: 'n1', question: 'what is <script>1+1</script>?', similarity: 0.9, weight: 0.75 }],
  referenceDir: '/tmp/ref',
  referenceItems: 7,
  promptTokens: 4,
};

test('re-mix panel: layers, core experts, neighbours, routing change and answers, all escaped', () => {
  const html = adaptPanelHtml({ kind: 'remix', prompt: 'q "x" <y>', method: 'ngd', result: remix }, 'NONCE123');
  assert.match(html, /Content-Security-Policy" content="default-src 'none'; style-src 'nonce-NONCE123'/);
  assert.ok(!/<script/i.test(html), 'no script');
  assert.ok(!/ style="/.test(html), 'no inline style attributes');
  assert.ok(html.includes('what is &lt;script&gt;1+1&lt;/script&gt;?'));
  assert.ok(html.includes('&lt;b&gt;old&lt;/b&gt;') && html.includes('new &amp; improved'));
  assert.ok(html.includes('q &quot;x&quot; &lt;y&gt;'));
  assert.ok(html.includes('0.900') && html.includes('0.750'), 'similarity and kernel weight');
  assert.ok(html.includes('Layer 3'));
  assert.equal((html.match(/class="row core"/g) ?? []).length, 2, 'core experts highlighted');
  assert.ok(html.includes('expert 2 (core): ω 0.100 → 0.700'));
  assert.ok(html.includes('(changed)'));
  assert.ok(html.includes('Reference set /tmp/ref (7 items)'));
  assert.ok(html.includes('tabindex="0"'), 'keyboard reachable');
});

test('rerouting panel: rounds, δ per layer after each round, both texts side by side; progress view', () => {
  const result: RerouteResult = {
    comparison: {
      plain: { tokens: [1], text: 'plain <text>' },
      rerouted: { tokens: [2], text: 'rerouted & text' },
      rounds: [
        { position: 5, windowStart: 0, layers: [3], losses: [2, 1.5], confidence: { '1': 0.2 }, delta: { '3': Float32Array.of(0.25, -0.125) } },
        { position: 9, windowStart: 0, layers: [1, 3], losses: [1.4, 1.2], confidence: { '1': 0.2 }, delta: { '3': Float32Array.of(0.5, -0.25), '1': Float32Array.of(0, 0.125) } },
      ],
      delta: { '3': [0.5, -0.25], '1': [0, 0.125] },
    },
    promptTokens: 5,
  };
  const html = adaptPanelHtml({ kind: 'reroute', prompt: 'p', result }, 'N1');
  assert.ok(html.includes('plain &lt;text&gt;') && html.includes('rerouted &amp; text'));
  assert.ok(html.includes('Without rerouting') && html.includes('With rerouting'));
  assert.ok(html.includes('2.0000 → 1.5000'));
  assert.ok(html.includes('-0.250') && html.includes('0.125'));
  // δ after each round: round 1 has layer 3 only; round 2 layers 1 then 3; the norm closes each row
  assert.ok(html.includes('<th scope="row">1</th><th scope="row">3</th><td>0.250</td><td>-0.125</td><td>0.280</td>'), 'round 1');
  assert.ok(html.indexOf('<th scope="row">2</th><th scope="row">1</th><td>0.000') < html.indexOf('<th scope="row">2</th><th scope="row">3</th><td>0.500'), 'layers in order');
  const progress = adaptPanelHtml({ kind: 'reroute-progress', prompt: 'p', rounds: result.comparison.rounds }, 'N2');
  assert.ok(progress.includes('2 rounds finished') && progress.includes('<td>0.280</td>'));
  assert.equal(escapeHtml(`<&>"'`), '&lt;&amp;&gt;&quot;&#39;');
});
