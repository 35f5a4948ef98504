// The routing panel (a WebviewPanel): the token × layer grid, cell details, expert load, the patch editor and
// compare / diff mode. The webview app is webview/src (bundled to dist/webview/routing.js); both sides speak
// webview/src/protocol.ts.
//
// API (for extension.ts / commands.ts):
//
//   const panels = registerRoutingPanel(context, deps);   // once, in activate(); registers the serializer
//   panels.show(run, { compare?: Run, preserveFocus?: boolean, viewColumn?: vscode.ViewColumn }): RoutingPanel
//       Reveals the routing panel (creating it if needed) and shows `run`; with `compare`, run A = `run`,
//       run B = `compare` and their difference (changed cells, next-token distribution, generated text).
//       A run still streaming can be shown at once: rows appear as `update` is called.
//   panels.update(run)             The run's arrays grew (layers streamed, tokens generated) or it finished: sends
//                                  only what the webview has not seen. Cheap; call it on every engine progress event.
//   panels.appendLayer(run, layer) The same for one layer (rows the webview has not seen yet).
//   panels.setPatch(patch, error?) The session's patch changed elsewhere (also done through deps.onDidChangePatch).
//   panels.current                 The open panel, if any.
//   panels.onDidEditPatch          { run, edit, patch }: the user edited the patch in the panel; `patch` is the
//                                  result, already validated and stored with deps.setPatch.
//   panels.onDidRequestRerun       { run, patch } — "Re-run with patch": run the same prompt with `patch` and show
//                                  the result with panels.show(result, { compare: unpatched }).
//                                  `run` is undefined when re-running a run that is no longer available; then
//                                  `prompt` and `modelDir` are set.
//   panels.onDidRequestExport      { run, format: 'safetensors' | 'csv' }
//   panels.onDidRequestCompare     { run }: the user pressed "Compare…" (the panel already offers a quick pick of
//                                  deps.listRuns(); the event is for logging / telemetry-free bookkeeping).
//   panels.onDidSelectCell         { run, layer, position, pinned }
//   RoutingPanel.viewType          'routescope.routingPanel' (package.json needs "onWebviewPanel:<viewType>")
//
// After a window reload the serializer restores the panel: the webview kept its view state (zoom, metric, scroll,
// pinned cell) with setState; the host shows the run again when deps.getRun still has it, otherwise the panel
// says "Run no longer available — re-run" and offers a re-run of the kept prompt.
import { randomBytes } from 'node:crypto';
import * as vscode from 'vscode';
import type { RoutingPatch } from '../../../common/src/patch';
import { PatchError, validatePatch } from '../../../common/src/patch';
import type { Run } from '../runs/run';
import { routingPanelHtml } from '../../../webview/src/html';
import {
  CompareClearedNotification,
  decodeWebviewMessage,
  EditPatchCommand,
  encodeLayerChunk,
  encodeRunInfo,
  ExportCommand,
  PatchChangedNotification,
  ReadyCommand,
  RequestCompareCommand,
  RerunCommand,
  RerunUnavailableCommand,
  RunFinishedNotification,
  RunInitNotification,
  RunLayerNotification,
  RunTokensNotification,
  RunUnavailableNotification,
  SelectCellCommand,
  SettingsChangedNotification,
} from '../../../webview/src/protocol';
import type { ExportFormat, IpcMessage, Metric, PanelState } from '../../../webview/src/protocol';
import { applyPatchEdit, type PatchEdit } from '../../../common/src/patchEdit';

export interface RoutingPanelDeps {
  /** The run store: a run by id (undefined once dropped). */
  getRun(id: number): Run | undefined;
  /** Runs offered by "Compare…" (newest last). */
  listRuns(): readonly Run[];
  /** The session's current routing patch, which the panel's editor edits. */
  getPatch(): RoutingPatch;
  /** Stores an edited patch (validating it; throws PatchError) and returns the stored value. */
  setPatch(patch: RoutingPatch): RoutingPatch;
  onDidChangePatch?: vscode.Event<RoutingPatch>;
  /** Where a message goes (the output channel). */
  log?(line: string): void;
}

export interface ShowOptions {
  compare?: Run;
  preserveFocus?: boolean;
  viewColumn?: vscode.ViewColumn;
}

export interface PatchEditEvent { run: Run | undefined; edit: PatchEdit; patch: RoutingPatch }
export interface RerunEvent { run: Run | undefined; patch: RoutingPatch; prompt: string; modelDir?: string }
export interface ExportEvent { run: Run; format: ExportFormat }
export interface CellEvent { run: Run; layer: number; position: number; pinned: boolean }

/** What the webview has already received of one run. */
class SentState {
  tokens = 0;
  readonly filled = new Map<number, number>();
  finished = false;
  constructor(readonly run: Run) {}
}

export class RoutingPanel implements vscode.Disposable {
  static readonly viewType = 'routescope.routingPanel';

  /** Shows `run` in the routing panel of this window (registerRoutingPanel must have run). */
  static show(_context: vscode.ExtensionContext, run: Run, options?: ShowOptions): RoutingPanel {
    if (!registered) throw new Error('routing panel: registerRoutingPanel() was not called');
    return registered.show(run, options);
  }

  private primary: SentState | undefined;
  private compare: SentState | undefined;
  private ready = false;
  private restoredState: PanelState | undefined;
  private unavailableReason = '';
  private readonly disposables: vscode.Disposable[] = [];

  constructor(
    readonly panel: vscode.WebviewPanel,
    context: vscode.ExtensionContext,
    private readonly hub: RoutingPanels,
  ) {
    const webviewRoot = vscode.Uri.joinPath(context.extensionUri, 'dist', 'webview');
    panel.webview.options = { enableScripts: true, localResourceRoots: [webviewRoot] };
    panel.iconPath = vscode.Uri.joinPath(context.extensionUri, 'media', 'routescope.svg');
    const nonce = makeNonce();
    panel.webview.html = routingPanelHtml({
      cspSource: panel.webview.cspSource,
      nonce,
      scriptUri: panel.webview.asWebviewUri(vscode.Uri.joinPath(webviewRoot, 'routing.js')).toString(),
      styleUri: panel.webview.asWebviewUri(vscode.Uri.joinPath(webviewRoot, 'routing-style.css')).toString(),
    });
    this.disposables.push(
      panel.webview.onDidReceiveMessage((raw) => this.onMessage(raw)),
      panel.onDidDispose(() => this.dispose()),
    );
  }

  get run(): Run | undefined {
    return this.primary?.run;
  }

  get comparedRun(): Run | undefined {
    return this.compare?.run;
  }

  /** Shows a run (and optionally the run it is compared with). */
  setRun(run: Run, compare?: Run): void {
    this.primary = new SentState(run);
    this.compare = compare ? new SentState(compare) : undefined;
    this.panel.title = compare ? `Routing: ${run.label} ↔ ${compare.label}` : `Routing: ${run.label}`;
    if (this.ready) this.sendAll();
  }

  setCompare(compare: Run | undefined): void {
    if (!this.primary) return;
    this.compare = compare ? new SentState(compare) : undefined;
    if (!this.ready) return;
    if (compare) this.sendRun('compare', this.compare!);
    else void this.post(CompareClearedNotification.create({}));
  }

  /** Sends what the webview has not seen of `run` (new tokens, new layer rows, the finish). */
  update(run: Run): void {
    if (!this.ready) return;
    for (const sent of [this.primary, this.compare]) if (sent?.run === run) this.flush(sent);
  }

  /** Sends the unseen rows of one layer. */
  appendLayer(run: Run, layer: number): void {
    if (!this.ready) return;
    for (const sent of [this.primary, this.compare]) if (sent?.run === run) this.flushLayer(sent, layer);
  }

  setPatch(patch: RoutingPatch, error?: string): void {
    if (this.ready) void this.post(PatchChangedNotification.create(error ? { patch, error } : { patch }));
  }

  showUnavailable(state: PanelState, reason: string): void {
    this.primary = undefined;
    this.compare = undefined;
    this.restoredState = state;
    this.unavailableReason = reason;
    this.panel.title = `Routing: ${state.label ?? 'run'} (not available)`;
    if (this.ready) this.sendUnavailable();
  }

  private sendUnavailable(): void {
    const s = this.restoredState ?? {};
    void this.post(
      RunUnavailableNotification.create({
        ...(s.label ? { label: s.label } : {}),
        ...(s.prompt ? { prompt: s.prompt } : {}),
        reason: `${this.unavailableReason}: this panel showed a run from before the window reloaded, and runs are kept in memory only.`,
      }),
    );
  }

  private post(message: IpcMessage<unknown>): Thenable<boolean> {
    return this.panel.webview.postMessage(message);
  }

  private sendAll(): void {
    const metric = vscode.workspace.getConfiguration('routescope').get<Metric>('routingPanel.defaultMetric', 'expert');
    void this.post(SettingsChangedNotification.create({ defaultMetric: metric }));
    if (!this.primary) {
      if (this.restoredState) this.sendUnavailable();
      return;
    }
    this.sendRun('primary', this.primary);
    if (this.compare) this.sendRun('compare', this.compare);
    void this.post(PatchChangedNotification.create({ patch: this.hub.deps.getPatch() }));
  }

  private sendRun(role: 'primary' | 'compare', sent: SentState): void {
    sent.filled.clear();
    sent.finished = false;
    sent.tokens = sent.run.tokens.length;
    void this.post(RunInitNotification.create({ role, run: encodeRunInfo(sent.run) }));
    this.flush(sent);
  }

  private flush(sent: SentState): void {
    const run = sent.run;
    if (run.tokens.length > sent.tokens) {
      const from = sent.tokens;
      void this.post(RunTokensNotification.create({ runId: run.id, from, tokens: run.tokens.slice(from), tokenText: run.tokenText.slice(from) }));
      sent.tokens = run.tokens.length;
    }
    for (const layer of [...run.layers.keys()].sort((a, b) => a - b)) this.flushLayer(sent, layer);
    if (!sent.finished && (run.finishedAt !== undefined || run.error !== undefined)) {
      sent.finished = true;
      void this.post(
        RunFinishedNotification.create({
          runId: run.id,
          finishedAt: run.finishedAt ?? Date.now(),
          ...(run.nextTokens ? { nextTokens: run.nextTokens } : {}),
          ...(run.generatedText !== undefined ? { generatedText: run.generatedText } : {}),
          ...(run.error !== undefined ? { error: run.error } : {}),
        }),
      );
    }
  }

  private flushLayer(sent: SentState, layer: number): void {
    const routing = sent.run.layers.get(layer);
    if (!routing) return;
    const from = sent.filled.get(layer) ?? 0;
    if (routing.filled <= from) return;
    const { numExperts, topK } = sent.run.model;
    // Typed arrays cross as-is (structured clone), copies of just the new rows.
    void this.post(RunLayerNotification.create({ chunk: encodeLayerChunk(sent.run.id, routing, numExperts, topK, from, routing.filled) }));
    sent.filled.set(layer, routing.filled);
  }

  private onMessage(raw: unknown): void {
    const message = decodeWebviewMessage(raw);
    if (!message) return;
    const deps = this.hub.deps;
    if (ReadyCommand.is(message)) {
      this.ready = true;
      this.sendAll();
    } else if (EditPatchCommand.is(message)) {
      const edit = message.params.edit;
      let patch = deps.getPatch();
      try {
        const model = this.primary?.run.model;
        const shape = model ? { numLayers: model.numLayers, numExperts: model.numExperts, topK: model.topK, moeLayers: model.moeLayers } : undefined;
        patch = deps.setPatch(validatePatch(applyPatchEdit(patch, edit), 'patch', shape));
        this.hub.fireEdit({ run: this.primary?.run, edit, patch });
        // With deps.onDidChangePatch the session's own event brings the patch back to the panel.
        if (!deps.onDidChangePatch) this.hub.broadcastPatch(patch);
      } catch (error) {
        this.setPatch(patch, error instanceof PatchError ? error.message : String(error));
      }
    } else if (RerunCommand.is(message)) {
      const run = this.primary?.run;
      if (!run) return;
      this.hub.fireRerun({ run, patch: message.params.patch, prompt: run.prompt, modelDir: run.model.dir });
    } else if (RerunUnavailableCommand.is(message)) {
      const { prompt, modelDir, patch } = message.params;
      this.hub.fireRerun({ run: undefined, patch: patch ?? { layers: {} }, prompt, ...(modelDir ? { modelDir } : {}) });
    } else if (SelectCellCommand.is(message)) {
      const run = this.runById(message.params.runId);
      if (run) this.hub.fireSelect({ run, layer: message.params.layer, position: message.params.position, pinned: message.params.pinned });
    } else if (RequestCompareCommand.is(message)) {
      void this.pickCompare(message.params.runId);
    } else if (ExportCommand.is(message)) {
      const run = this.runById(message.params.runId);
      if (run) this.hub.fireExport({ run, format: message.params.format === 'csv' ? 'csv' : 'safetensors' });
    }
  }

  private runById(id: number): Run | undefined {
    if (this.primary?.run.id === id) return this.primary.run;
    if (this.compare?.run.id === id) return this.compare.run;
    return this.hub.deps.getRun(id);
  }

  private async pickCompare(runId: number | undefined): Promise<void> {
    const run = this.primary?.run;
    if (!run) return;
    if (runId === -1) {
      this.setCompare(undefined);
      this.panel.title = `Routing: ${run.label}`;
      return;
    }
    this.hub.fireCompare(run);
    let other = runId !== undefined ? this.hub.deps.getRun(runId) : undefined;
    if (!other) {
      const candidates = [...this.hub.deps.listRuns()]
        .reverse()
        .filter((r) => r !== run && r.model.numExperts === run.model.numExperts && r.model.dir === run.model.dir && !r.error);
      if (!candidates.length) {
        void vscode.window.showInformationMessage('Routescope: no other run of this model to compare with.');
        return;
      }
      const picked = await vscode.window.showQuickPick(
        candidates.map((r) => ({ label: r.label, description: `#${r.id} · ${r.tokens.length} tokens${r.patch ? ' · patched' : ''}`, run: r })),
        { title: `Compare “${run.label}” with…` },
      );
      other = picked?.run;
    }
    if (!other) return;
    this.setCompare(other);
    this.panel.title = `Routing: ${run.label} ↔ ${other.label}`;
  }

  dispose(): void {
    this.hub.forget(this);
    for (const d of this.disposables) d.dispose();
    this.disposables.length = 0;
  }
}

/** The registration: the panel in this window, the serializer and the events 4a's commands listen to. */
export class RoutingPanels implements vscode.Disposable {
  current: RoutingPanel | undefined;
  private readonly editEmitter = new vscode.EventEmitter<PatchEditEvent>();
  private readonly rerunEmitter = new vscode.EventEmitter<RerunEvent>();
  private readonly exportEmitter = new vscode.EventEmitter<ExportEvent>();
  private readonly compareEmitter = new vscode.EventEmitter<{ run: Run }>();
  private readonly selectEmitter = new vscode.EventEmitter<CellEvent>();
  readonly onDidEditPatch = this.editEmitter.event;
  readonly onDidRequestRerun = this.rerunEmitter.event;
  readonly onDidRequestExport = this.exportEmitter.event;
  readonly onDidRequestCompare = this.compareEmitter.event;
  readonly onDidSelectCell = this.selectEmitter.event;
  private readonly disposables: vscode.Disposable[] = [];

  constructor(private readonly context: vscode.ExtensionContext, readonly deps: RoutingPanelDeps) {
    this.disposables.push(
      this.editEmitter, this.rerunEmitter, this.exportEmitter, this.compareEmitter, this.selectEmitter,
      vscode.window.registerWebviewPanelSerializer(RoutingPanel.viewType, {
        deserializeWebviewPanel: async (panel: vscode.WebviewPanel, state: unknown) => this.restore(panel, state as PanelState | undefined),
      }),
    );
    if (deps.onDidChangePatch) this.disposables.push(deps.onDidChangePatch((patch) => this.broadcastPatch(patch)));
  }

  show(run: Run, options: ShowOptions = {}): RoutingPanel {
    if (!this.current) {
      const panel = vscode.window.createWebviewPanel(
        RoutingPanel.viewType,
        `Routing: ${run.label}`,
        { viewColumn: options.viewColumn ?? vscode.ViewColumn.Active, preserveFocus: options.preserveFocus ?? false },
        { enableScripts: true, localResourceRoots: [vscode.Uri.joinPath(this.context.extensionUri, 'dist', 'webview')] },
      );
      this.current = new RoutingPanel(panel, this.context, this);
    } else {
      this.current.panel.reveal(options.viewColumn, options.preserveFocus ?? false);
    }
    this.current.setRun(run, options.compare);
    return this.current;
  }

  update(run: Run): void {
    this.current?.update(run);
  }

  appendLayer(run: Run, layer: number): void {
    this.current?.appendLayer(run, layer);
  }

  setPatch(patch: RoutingPatch, error?: string): void {
    this.current?.setPatch(patch, error);
  }

  private async restore(panel: vscode.WebviewPanel, state: PanelState | undefined): Promise<void> {
    this.current?.panel.dispose();
    const restored = new RoutingPanel(panel, this.context, this);
    this.current = restored;
    const run = state?.runId !== undefined ? this.deps.getRun(state.runId) : undefined;
    if (run) {
      const compare = state?.compareRunId !== undefined ? this.deps.getRun(state.compareRunId) : undefined;
      restored.setRun(run, compare);
    } else {
      restored.showUnavailable(state ?? {}, 'The run is no longer available');
    }
  }

  /** @internal */ broadcastPatch(patch: RoutingPatch): void { this.current?.setPatch(patch); }
  /** @internal */ fireEdit(e: PatchEditEvent): void { this.editEmitter.fire(e); }
  /** @internal */ fireRerun(e: RerunEvent): void { this.rerunEmitter.fire(e); }
  /** @internal */ fireExport(e: ExportEvent): void { this.exportEmitter.fire(e); }
  /** @internal */ fireCompare(run: Run): void { this.compareEmitter.fire({ run }); }
  /** @internal */ fireSelect(e: CellEvent): void { this.selectEmitter.fire(e); }
  /** @internal */ forget(panel: RoutingPanel): void {
    if (this.current === panel) this.current = undefined;
  }

  dispose(): void {
    this.current?.panel.dispose();
    for (const d of this.disposables) d.dispose();
  }
}

/** Registers the routing panel's serializer; returns the object commands use to show runs and hear edits. */
export function registerRoutingPanel(context: vscode.ExtensionContext, deps: RoutingPanelDeps): RoutingPanels {
  const panels = new RoutingPanels(context, deps);
  registered = panels;
  context.subscriptions.push(panels, { dispose: () => { if (registered === panels) registered = undefined; } });
  return panels;
}

let registered: RoutingPanels | undefined;

function makeNonce(): string {
  return randomBytes(18).toString('base64').replace(/[^A-Za-z0-9]/g, 'x');
}
