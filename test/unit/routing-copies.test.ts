// Copies of routing data on the way to the canvas, counted for a 4,096-token run through the real engine process:
// the host copies each streamed span once (into the run) and posts the arrays it received, and the webview copies
// once (into its grid store). The figures are printed (README "Routing panel"); the test fails on a second copy.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { decodeLayerMessage, RunInitNotification, RunLayerNotification, type IpcMessage } from '../../common/src/panelProtocol';
import { spanBytes, type RoutingSpan } from '../../common/src/routing';
import { EngineHost } from '../../extension/src/engine/host';
import { inspectRun } from '../../extension/src/runs/runner';
import { RunSender } from '../../extension/src/views/runStream';
import { RunRouting } from '../../webview/src/runData';
import { ROOT, tempDir } from '../helpers/cli';
import { writeRandomOlmoe } from '../helpers/random-model';

const T = 4096;
const SHAPE = { hidden: 64, layers: 4, experts: 64, topK: 8, vocab: 512 };

const MiB = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(2)} MiB`;

test('a 4,096-token run: one copy of the routing in the host, one in the webview, none on the way between', async () => {
  const dir = path.join(tempDir(), 'model');
  writeRandomOlmoe(dir, SHAPE);
  const host = new EngineHost({ workerPath: path.join(ROOT, 'dist', 'engine-worker.js') });
  try {
    await host.load({ dir, threads: 2 });
    const received = new WeakSet<ArrayBufferLike>();
    let receivedBytes = 0;
    const posted: IpcMessage<unknown>[] = [];
    let sender: RunSender | undefined;
    const tokens = Array.from({ length: T }, (_, i) => (i * 7919) % SHAPE.vocab);
    const run = await inspectRun(
      host,
      {
        id: 1,
        input: { tokens },
        onUpdate: (_run, span?: RoutingSpan) => {
          if (!span) return;
          for (const a of [span.routerLogits, span.experts, span.weights]) received.add(a.buffer);
          receivedBytes += spanBytes(span);
          sender!.flush(span);
        },
      },
      // The panel is open before the routing arrives, as when Inspect Routing shows a run.
      (r) => {
        sender = new RunSender(r, 'primary', (m) => posted.push(m));
        sender.start();
      },
    );
    const hostCopied = [...run.layers.values()].reduce((n, l) => n + l.bytesCopied, 0);
    assert.equal(receivedBytes, SHAPE.layers * T * (SHAPE.experts + 2 * SHAPE.topK) * 4, 'every position of every layer arrived');
    assert.equal(hostCopied, receivedBytes, 'the host copies each span once, into the run');

    // What the panel posts is what the engine process sent: webview.postMessage transfers those buffers.
    const spans = posted.filter((m) => RunLayerNotification.is(m)).map((m) => (m.params as { span: RoutingSpan }).span);
    assert.ok(spans.length >= SHAPE.layers);
    for (const s of spans) for (const a of [s.routerLogits, s.experts, s.weights]) assert.ok(received.has(a.buffer), 'posted as received, not copied');
    const postedBytes = spans.reduce((n, s) => n + spanBytes(s), 0);
    assert.equal(postedBytes, receivedBytes);

    // The webview: the messages as postMessage delivers them (structured clones), into its store.
    let view: RunRouting | undefined;
    for (const m of posted.map((x) => structuredClone(x))) {
      if (RunInitNotification.is(m)) view = new RunRouting(m.params.run);
      else if (RunLayerNotification.is(m)) view!.addSpan(decodeLayerMessage(m.params).span);
    }
    const webviewCopied = view!.rows.reduce((n, l) => n + l.bytesCopied, 0);
    assert.equal(webviewCopied, receivedBytes, 'the webview copies each span once, into its grid store');
    console.log(
      `# routing of a ${T}-token run, ${SHAPE.layers} MoE layers × ${SHAPE.experts} experts, top-${SHAPE.topK}: ${MiB(receivedBytes)} ` +
        `(${MiB(receivedBytes / SHAPE.layers)} per layer) streamed in ${spans.length} spans; copied in the host ${MiB(hostCopied)} (once), ` +
        `between host and webview ${MiB(0)} by Routescope (the received arrays are posted), in the webview ${MiB(webviewCopied)} (once)`,
    );
  } finally {
    host.dispose();
  }
});
