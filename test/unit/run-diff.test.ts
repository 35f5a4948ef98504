// The one run diff (common/src/runDiff.ts) over a pair of runs of different lengths: the host's notification
// (runs/compare.ts) and the routing panel (the webview's RunRouting fed the messages the host posts, cloned as
// postMessage clones them) report the same counts in the same words. Compare Two Prompts compared only the common
// token prefix here once ("0 of 8 cells") while the panel counted every position ("55 of 88").
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { decodeLayerMessage, RunInitNotification, RunLayerNotification, RunFinishedNotification, type IpcMessage } from '../../common/src/panelProtocol';
import { LayerRouting } from '../../common/src/routing';
import { describeRunDiff, diffRuns } from '../../common/src/runDiff';
import { compareRuns } from '../../extension/src/runs/compare';
import type { Run } from '../../extension/src/runs/run';
import { RunSender } from '../../extension/src/views/runStream';
import { RunRouting } from '../../webview/src/runData';

const E = 8;
const K = 2;
const LAYERS = [1, 2, 3];

/** A run of `tokens` whose routing at (layer, position) is a deterministic function of `seed`. */
function makeRun(id: number, tokens: number[], seed: number): Run {
  const T = tokens.length;
  const layers = new Map<number, LayerRouting>();
  for (const layer of LAYERS) {
    const routerLogits = new Float32Array(T * E);
    const experts = new Int32Array(T * K);
    const weights = new Float32Array(T * K);
    for (let p = 0; p < T; p++) {
      const first = (tokens[p] * 3 + layer * seed) % E;
      const second = (first + 1 + ((p + seed) % 3)) % E;
      experts.set([first, second], p * K);
      weights.set([0.6, 0.4], p * K);
      for (let e = 0; e < E; e++) routerLogits[p * E + e] = e === first ? 2 : e === second ? 1 : -((e + p) % 4);
    }
    layers.set(layer, LayerRouting.of(layer, E, K, { routerLogits, experts, weights }));
  }
  const probs = Float32Array.from({ length: 16 }, (_, v) => (v === seed % 16 ? 0.5 : 0.5 / 15));
  return {
    id, kind: 'inspect', label: `Inspect: run ${id}`, prompt: tokens.join(' '),
    model: { dir: '/m', name: 'm', modelType: 'olmoe', numLayers: 4, numExperts: E, topK: K, moeLayers: LAYERS, vocabSize: 16 },
    patch: undefined, tokens, tokenText: tokens.map((t) => `t${t}`), promptTokens: T, startedAt: 0, finishedAt: 1,
    nextTokens: [{ token: seed % 16, text: `t${seed % 16}`, prob: 0.5 }], nextTokenProbs: probs, layers,
  };
}

/** What the routing panel holds of a run after the host streamed it: RunSender's messages, structured-cloned. */
function inWebview(run: Run): RunRouting {
  const messages: IpcMessage<unknown>[] = [];
  new RunSender(run, 'primary', (m) => messages.push(structuredClone(m))).start();
  let routing: RunRouting | undefined;
  for (const m of messages) {
    if (RunInitNotification.is(m)) routing = new RunRouting(m.params.run);
    else if (RunLayerNotification.is(m)) routing!.addSpan(decodeLayerMessage(m.params).span);
    else if (RunFinishedNotification.is(m)) Object.assign(routing!.info, m.params);
  }
  return routing!;
}

test('Compare Two Prompts of different lengths: the notification and the panel report the same counts', () => {
  // Two prompts that differ from the first token, 9 and 12 tokens long.
  const a = makeRun(1, [4, 7, 1, 1, 9, 2, 5, 3, 6], 1);
  const b = makeRun(2, [5, 7, 1, 2, 9, 2, 8, 3, 6, 0, 4, 4], 2);
  const host = compareRuns(b, a); // the notification: run B (shown) against run A
  const panel = diffRuns(inWebview(b), inWebview(a)); // the panel shows B with A compared
  for (const key of ['changedCells', 'changedTop1', 'comparedCells', 'positionsA', 'positionsB', 'tokenMismatch'] as const) {
    assert.equal(panel[key], host.diff[key], key);
  }
  assert.equal(describeRunDiff(panel), describeRunDiff(host.diff));
  assert.ok(host.summary.includes(describeRunDiff(panel)), 'the notification carries the panel\'s sentence');
  // The rule: every position both runs routed is compared (3 layers × 9), the 3 extra positions of the longer run are not.
  assert.equal(host.diff.comparedCells, 3 * 9);
  assert.ok(host.diff.changedCells > 0);
  assert.match(describeRunDiff(host.diff), /positions 9–11 exist only in A \(B is shorter\) and are not compared/);
  assert.equal(host.diff.layers[0].change.length, 12);
  assert.ok(Number.isNaN(host.diff.layers[0].change[10]));
  // Same next-token figures on both sides: the full distributions cross to the webview.
  assert.equal(panel.nextToken!.totalVariation, host.diff.nextToken!.totalVariation);
  assert.ok(panel.nextToken!.exact);
});

test('Re-run with Patch (same prompt, same length): identical runs compare to zero changed cells', () => {
  const a = makeRun(1, [3, 1, 4, 1, 5], 1);
  const same = compareRuns(a, makeRun(2, [3, 1, 4, 1, 5], 1)).diff;
  assert.equal(same.changedCells, 0);
  assert.equal(same.comparedCells, 15);
  assert.equal(describeRunDiff(same), '0 of 15 cells route to a different expert set (0.0%); top-1 changed in 0');
});
