// Two window-reload races, against a stand-in for the vscode API: the statistics panel restored after a reload keeps
// sending to its live page whatever view-state events VS Code fires around the page's ready, and an action that
// needs a model waits for the Open Demo Model still in flight instead of offering to open another (Run again right
// after Open Demo Model, as the statistics end-to-end suite does after its reload).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { ROOT } from '../helpers/cli';
import { withVscodeStub } from '../helpers/vscode-stub';

const events = () => ({ dispose: () => undefined });
const warnings: string[] = [];
const serializers = new Map<string, { deserializeWebviewPanel: (panel: unknown, state: unknown) => Promise<void> }>();
let configuration: Record<string, unknown> = {};

class CancellationTokenSource {
  token = { isCancellationRequested: false, onCancellationRequested: events };
  cancel(): void {
    this.token.isCancellationRequested = true;
  }
  dispose(): void {}
}

const vscodeStub = {
  Uri: { joinPath: (base: { fsPath?: string } | string, ...parts: string[]) => ({ fsPath: [typeof base === 'string' ? base : base.fsPath, ...parts].join('/') }) },
  ViewColumn: { Beside: -2 },
  ProgressLocation: { Window: 10, Notification: 15 },
  CancellationTokenSource,
  window: {
    registerWebviewPanelSerializer: (viewType: string, serializer: { deserializeWebviewPanel: (panel: unknown, state: unknown) => Promise<void> }) => {
      serializers.set(viewType, serializer);
      return { dispose: () => undefined };
    },
    withProgress: (_options: unknown, task: (progress: { report: () => void }, token: CancellationTokenSource['token']) => Promise<unknown>) =>
      task({ report: () => undefined }, new CancellationTokenSource().token),
    showWarningMessage: async (message: string) => {
      warnings.push(message);
      return undefined;
    },
    showErrorMessage: async (message: string) => {
      warnings.push(message);
      return undefined;
    },
  },
  commands: { executeCommand: async () => undefined },
  workspace: { getConfiguration: () => ({ get: (key: string) => configuration[key] }) },
};

test('a restored statistics panel keeps its live page up to date whatever view-state events come after its ready', async () => {
  const { StatsPanel } = await withVscodeStub(vscodeStub, () => import('../../extension/src/views/statsPanel'));
  const rerun: string[][] = [];
  const stats = new StatsPanel({ extensionUri: { fsPath: ROOT } } as never, {
    openContext: async () => undefined, steer: async () => undefined, applyPatch: () => undefined,
    exportStats: async () => undefined, inspectPrompt: () => undefined, rerun: (sources) => void rerun.push(sources),
  });
  const posted: string[] = [];
  let onMessage: ((m: unknown) => void) | undefined;
  let onViewState: ((e: { webviewPanel: { visible: boolean } }) => void) | undefined;
  const restored = {
    title: '', viewColumn: 2, visible: true,
    webview: {
      options: {}, html: '', cspSource: 'vscode-resource:',
      asWebviewUri: (u: unknown) => u,
      onDidReceiveMessage: (f: (m: unknown) => void) => ((onMessage = f), events()),
      postMessage: (m: { method: string }) => (posted.push(m.method), Promise.resolve(true)),
    },
    onDidDispose: events,
    onDidChangeViewState: (f: typeof onViewState) => ((onViewState = f), events()),
    reveal: () => undefined, dispose: () => undefined,
  };
  await serializers.get('routescope.statsPanel')!.deserializeWebviewPanel(restored, { sources: ['/data/eval.jsonl'] });
  onMessage!({ method: 'stats/ready', params: {} });
  assert.deepEqual(posted, ['stats/unavailable']);
  // The editor group settling after the reload: hidden then shown again, the page never reloaded (no new ready).
  onViewState?.({ webviewPanel: { visible: false } });
  onViewState?.({ webviewPanel: { visible: true } });
  onMessage!({ method: 'stats/rerun', params: {} });
  assert.deepEqual(rerun, [['/data/eval.jsonl']]);
  stats.begin({ source: 'eval.jsonl', sources: ['/data/eval.jsonl'], model: 'demo', total: 3, groups: ['all'], layers: [0], numExperts: 4 }, { sources: ['/data/eval.jsonl'], prompts: [], groups: ['all'], labelled: false } as never);
  stats.report({ done: 1, total: 3, tokens: 10, skipped: 0 });
  assert.deepEqual(posted, ['stats/unavailable', 'stats/started', 'stats/progress'], 'the run reaches the page');
  stats.dispose();
});

test('an action needing a model waits for the open in flight instead of offering to open one', async () => {
  const { modelCommands } = await withVscodeStub(vscodeStub, () => import('../../extension/src/commands/models'));
  configuration = {};
  warnings.length = 0;
  let finishLoad!: () => void;
  const info = { modelType: 'olmoe', numLayers: 4, numExperts: 8, topK: 2 };
  const session = {
    model: undefined as undefined | { info: typeof info },
    patch: { layers: {} },
    setPatch: () => undefined,
    output: { appendLine: () => undefined, show: () => undefined },
    host: {
      load: () => new Promise((resolve) => {
        finishLoad = () => {
          session.model = { info };
          resolve({ info, tokenizer: true });
        };
      }),
      restart: async () => undefined,
    },
  };
  const models = modelCommands({ context: { extensionPath: ROOT, globalState: { get: (_k: string, d: unknown) => d, update: async () => undefined } }, session, display: () => undefined } as never);
  const opening = models.openDemoModel();
  const ensured = models.ensureModel();
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(warnings, [], 'no offer to open a model while one is opening');
  finishLoad();
  assert.equal(await opening, true);
  assert.equal(await ensured, true);
  // With nothing opening and nothing open, the offer comes as before.
  session.model = undefined;
  assert.equal(await models.ensureModel(), false);
  assert.deepEqual(warnings, ['Routescope: no model is open.']);
});
