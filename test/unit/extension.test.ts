// The bundled extension entry (dist/extension.js) activates against a stub of the vscode API and registers every
// command package.json contributes; the engine is not started by activation (it starts on first use, in its own
// process). The real VS Code end-to-end tests are in test/e2e.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import Module from 'node:module';
import { ROOT } from '../helpers/cli';

interface Manifest {
  main: string;
  activationEvents: string[];
  contributes: {
    commands: { command: string; title: string; category: string }[];
    menus: Record<string, { command: string; when?: string }[]>;
    views: Record<string, { id: string }[]>;
    configuration: { properties: Record<string, unknown> } | { properties: Record<string, unknown> }[];
  };
}

/** Any member is a function returning a disposable stub; the parts activation relies on are real. */
function stub(overrides: Record<string, unknown> = {}): unknown {
  const fn = (): unknown => stub();
  return new Proxy(fn, {
    get: (_t, key) => {
      if (key in overrides) return overrides[key as string];
      if (key === 'dispose') return () => undefined;
      if (key === 'then') return undefined;
      if (key === Symbol.toPrimitive) return () => '';
      return stub();
    },
    apply: () => stub(),
  });
}

class EventEmitter<T> {
  private listeners: ((v: T) => void)[] = [];
  event = (l: (v: T) => void) => {
    this.listeners.push(l);
    return { dispose: () => undefined };
  };
  fire(v: T): void {
    for (const l of this.listeners) l(v);
  }
  dispose(): void {}
}

test('dist/extension.js activates and registers every contributed command; palette when-clauses name real commands; panels restore after a reload', async () => {
  const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as Manifest;
  const main = path.join(ROOT, manifest.main);
  assert.ok(fs.existsSync(main), `${manifest.main} is not built`);

  const registered = new Map<string, (...args: unknown[]) => unknown>();
  const serializers = new Map<string, { deserializeWebviewPanel: (panel: unknown, state: unknown) => Promise<void> }>();
  let shown = false;
  const contexts = new Map<string, unknown>();
  // A plain object: the bundle copies the module's own keys (esbuild's __toESM), so every namespace is listed.
  const vscodeStub = {
    Uri: stub(),
    languages: stub(),
    ThemeIcon: class {},
    TreeItem: class {
      constructor(readonly label: string) {}
    },
    TreeItemCollapsibleState: { None: 0, Collapsed: 1, Expanded: 2 },
    MarkdownString: class {},
    ProgressLocation: { Notification: 15 },
    QuickPickItemKind: { Separator: -1 },
    FileSystemError: stub(),
    FileType: { File: 1, Directory: 2 },
    FileChangeType: { Changed: 1 },
    CodeLens: class {},
    Range: class {},
    EventEmitter,
    Disposable: class {
      constructor(private readonly f: () => void) {}
      dispose(): void {
        this.f();
      }
    },
    window: stub({
      registerWebviewPanelSerializer: (viewType: string, serializer: { deserializeWebviewPanel: (panel: unknown, state: unknown) => Promise<void> }) => {
        serializers.set(viewType, serializer);
        return { dispose: () => undefined };
      },
      createOutputChannel: (name: string) => {
        assert.equal(name, 'Routescope');
        return { appendLine: () => undefined, show: () => (shown = true), dispose: () => undefined };
      },
    }),
    commands: stub({
      registerCommand: (id: string, run: (...args: unknown[]) => unknown) => {
        registered.set(id, run);
        return { dispose: () => undefined };
      },
      executeCommand: (id: string, key: string, value: unknown) => {
        if (id === 'setContext') contexts.set(key, value);
        return Promise.resolve();
      },
    }),
    workspace: stub({
      getConfiguration: () => ({ get: (_k: string, d: unknown) => d }),
      isTrusted: true,
    }),
  };
  const loader = Module as unknown as { _load: (request: string, parent: unknown, isMain: boolean) => unknown };
  const originalLoad = loader._load;
  loader._load = (request, parent, isMain) => (request === 'vscode' ? vscodeStub : originalLoad(request, parent, isMain));
  try {
    const extension = require(main) as { activate: (context: unknown) => { session: { host: { running: boolean } } }; deactivate: () => void };
    const subscriptions: unknown[] = [];
    const globalState = new Map<string, unknown>();
    const api = extension.activate({
      subscriptions,
      extensionPath: ROOT,
      globalState: { get: (k: string, d: unknown) => globalState.get(k) ?? d, update: (k: string, v: unknown) => globalState.set(k, v) },
    });
    for (const { command, category } of manifest.contributes.commands) {
      if (!command.startsWith('routescope.')) continue;
      assert.equal(category, 'Routescope');
      assert.ok(registered.has(command), `${command} contributed but not registered`);
    }
    const contributed = new Set(manifest.contributes.commands.map((c) => c.command));
    for (const id of registered.keys()) assert.ok(contributed.has(id), `${id} registered but not contributed in package.json`);
    for (const [menu, items] of Object.entries(manifest.contributes.menus)) {
      for (const item of items) assert.ok(contributed.has(item.command), `${menu}: ${item.command} is not a contributed command`);
    }
    assert.deepEqual(manifest.contributes.views.routescope.map((v) => v.id), ['routescope.model', 'routescope.runs', 'routescope.layers']);
    registered.get('routescope.showEngineLog')!();
    assert.ok(shown);
    assert.equal(api.session.host.running, false, 'activation does not start the engine process');
    assert.equal(contexts.get('routescope.modelLoaded'), undefined);
    assert.ok(subscriptions.length >= 10);
    // The routing and statistics panels come back after a window reload: a serializer each, and the event that
    // activates the extension for it.
    assert.deepEqual([...serializers.keys()].sort(), ['routescope.routingPanel', 'routescope.statsPanel']);
    for (const viewType of serializers.keys()) assert.ok(manifest.activationEvents.includes(`onWebviewPanel:${viewType}`), `no activation event for ${viewType}`);
    // A statistics panel restored with the inputs its page remembered says the statistics were not kept.
    const posted: { method?: string; params?: { reason?: string } }[] = [];
    let onMessage: ((m: unknown) => void) | undefined;
    const events = () => ({ dispose: () => undefined });
    const restored = {
      title: '',
      webview: {
        options: {}, html: '', cspSource: 'vscode-resource:',
        asWebviewUri: (u: unknown) => u,
        onDidReceiveMessage: (f: (m: unknown) => void) => ((onMessage = f), events()),
        postMessage: (m: { method?: string; params?: { reason?: string } }) => (posted.push(m), Promise.resolve(true)),
      },
      onDidDispose: events, onDidChangeViewState: events, dispose: () => undefined,
    };
    await serializers.get('routescope.statsPanel')!.deserializeWebviewPanel(restored, { sources: ['/data/eval.jsonl'], group: 'all' });
    assert.match(restored.webview.html, /<title>Routing statistics<\/title>/);
    onMessage!({ method: 'stats/ready', params: {} });
    assert.deepEqual(posted.map((m) => m.method), ['stats/unavailable']);
    assert.match(posted[0].params!.reason!, /not kept across the window reload: Run again/);
    extension.deactivate();
  } finally {
    loader._load = originalLoad;
  }
});
