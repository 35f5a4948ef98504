// The routing panel on the host side: one WebviewPanel showing a run (and the run it is compared with) in the
// webview app (webview/src, bundled to dist/webview/routing.js). It streams each run with a RunSender
// (views/runStream.ts), applies the panel's patch edits to the session's patch, and hands re-run and export requests
// to the commands. Both sides speak common/src/panelProtocol.ts. After a window reload the serializer restores the
// panel: the webview kept its view state (zoom, metric, scroll, pinned cell); the run is shown again when the run
// store still has it, otherwise the panel says so and offers a re-run of the kept prompt.
import { randomBytes } from 'node:crypto';
import * as vscode from 'vscode';
import type { RoutingPatch } from '../../../common/src/patch';
import type { PatchEdit } from '../../../common/src/patchEdit';
import type { RoutingSpan } from '../../../common/src/routing';
import {
  CancelRunCommand,
  CompareClearedNotification,
  decodeWebviewMessage,
  EditPatchCommand,
  ExportCommand,
  PatchChangedNotification,
  ReadyCommand,
  RequestCompareCommand,
  RerunCommand,
  RerunUnavailableCommand,
  RunUnavailableNotification,
  SettingsChangedNotification,
  type ExportFormat,
  type IpcMessage,
  type PanelState,
} from '../../../common/src/panelProtocol';
import type { Run } from '../runs/run';
import { editorSettings } from '../editorConfig';
import { routingPanelHtml } from './routingHtml';
import { RunSender } from './runStream';
import { resultColumn, trackResultPanel } from './columns';

export interface RoutingPanelDeps {
  /** The run store: a run by id (undefined once dropped). */
  getRun(id: number): Run | undefined;
  /** Runs offered by "Compare…" (newest last). */
  listRuns(): readonly Run[];
  /** The session's current routing patch, which the panel's editor edits. */
  getPatch(): RoutingPatch;
  /** Applies one edit to the session's patch; returns the validator's message when the result is refused. */
  editPatch(edit: PatchEdit): string | undefined;
  onDidChangePatch: vscode.Event<RoutingPatch>;
}

export interface ShowOptions {
  compare?: Run;
  preserveFocus?: boolean;
  viewColumn?: vscode.ViewColumn;
}

/** "Re-run with patch" (with the session's patch): the shown run, or a prompt kept by a restored panel. */
export interface RerunEvent { run: Run | undefined; prompt: string; modelDir?: string }
export interface ExportEvent { run: Run; format: ExportFormat }

export class RoutingPanel implements vscode.Disposable {
  static readonly viewType = 'routescope.routingPanel';

  private primary: RunSender | undefined;
  private compare: RunSender | undefined;
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
    panel.webview.html = routingPanelHtml({
      cspSource: panel.webview.cspSource,
      nonce: randomBytes(18).toString('base64').replace(/[^A-Za-z0-9]/g, 'x'),
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

  private post = (message: IpcMessage<unknown>): void => {
    void this.panel.webview.postMessage(message);
  };

  /** Shows a run (and optionally the run it is compared with). */
  setRun(run: Run, compare?: Run): void {
    this.primary = new RunSender(run, 'primary', this.post);
    this.compare = compare ? new RunSender(compare, 'compare', this.post) : undefined;
    this.panel.title = compare ? `Routing: ${run.label} ↔ ${compare.label}` : `Routing: ${run.label}`;
    if (this.ready) this.sendAll();
  }

  setCompare(compare: Run | undefined): void {
    const run = this.primary?.run;
    if (!run) return;
    this.compare = compare ? new RunSender(compare, 'compare', this.post) : undefined;
    this.panel.title = compare ? `Routing: ${run.label} ↔ ${compare.label}` : `Routing: ${run.label}`;
    if (!this.ready) return;
    if (this.compare) this.compare.start();
    else this.post(CompareClearedNotification.create({}));
  }

  /** The run changed (a span arrived, tokens were generated, it finished): sends what the webview has not seen. */
  update(run: Run, span?: RoutingSpan): void {
    if (!this.ready) return;
    for (const sender of [this.primary, this.compare]) if (sender?.run === run) sender.flush(span);
  }

  setPatch(patch: RoutingPatch, error?: string): void {
    if (this.ready) this.post(PatchChangedNotification.create(error ? { patch, error } : { patch }));
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
    this.post(
      RunUnavailableNotification.create({
        ...(s.label ? { label: s.label } : {}),
        ...(s.prompt ? { prompt: s.prompt } : {}),
        reason: `${this.unavailableReason}: this panel showed a run from before the window reloaded, and runs are kept in memory only.`,
      }),
    );
  }

  private sendAll(): void {
    this.post(SettingsChangedNotification.create({ defaultMetric: editorSettings().defaultMetric }));
    if (!this.primary) {
      if (this.restoredState) this.sendUnavailable();
      return;
    }
    this.primary.start();
    this.compare?.start();
    this.post(PatchChangedNotification.create({ patch: this.hub.deps.getPatch() }));
  }

  private onMessage(raw: unknown): void {
    const message = decodeWebviewMessage(raw);
    if (!message) return;
    const deps = this.hub.deps;
    if (ReadyCommand.is(message)) {
      this.ready = true;
      this.sendAll();
    } else if (EditPatchCommand.is(message)) {
      // A taken edit comes back through deps.onDidChangePatch; a refused one is shown in the panel.
      const error = deps.editPatch(message.params.edit);
      if (error) this.setPatch(deps.getPatch(), error);
    } else if (RerunCommand.is(message)) {
      const run = this.primary?.run;
      if (run) this.hub.fireRerun({ run, prompt: run.prompt, modelDir: run.model.dir });
    } else if (RerunUnavailableCommand.is(message)) {
      const { prompt, modelDir } = message.params;
      if (typeof prompt === 'string') this.hub.fireRerun({ run: undefined, prompt, ...(modelDir ? { modelDir } : {}) });
    } else if (RequestCompareCommand.is(message)) {
      void this.pickCompare(message.params.runId);
    } else if (CancelRunCommand.is(message)) {
      if (typeof message.params.runId === 'number') this.hub.fireCancel(message.params.runId);
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
      return;
    }
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
    if (other) this.setCompare(other);
  }

  dispose(): void {
    this.hub.forget(this);
    for (const d of this.disposables) d.dispose();
    this.disposables.length = 0;
  }
}

/** The routing panel of this window, its serializer, and the requests the commands answer (re-run, export). */
export class RoutingPanels implements vscode.Disposable {
  current: RoutingPanel | undefined;
  private readonly rerunEmitter = new vscode.EventEmitter<RerunEvent>();
  private readonly exportEmitter = new vscode.EventEmitter<ExportEvent>();
  private readonly cancelEmitter = new vscode.EventEmitter<number>();
  readonly onDidRequestRerun = this.rerunEmitter.event;
  readonly onDidRequestExport = this.exportEmitter.event;
  /** The panel's Cancel: the id of the run to cancel. */
  readonly onDidRequestCancel = this.cancelEmitter.event;
  private readonly disposables: vscode.Disposable[] = [];

  constructor(private readonly context: vscode.ExtensionContext, readonly deps: RoutingPanelDeps) {
    this.disposables.push(
      this.rerunEmitter,
      this.exportEmitter,
      this.cancelEmitter,
      vscode.window.registerWebviewPanelSerializer(RoutingPanel.viewType, {
        deserializeWebviewPanel: async (panel: vscode.WebviewPanel, state: unknown) => this.restore(panel, state as PanelState | undefined),
      }),
      deps.onDidChangePatch((patch) => this.current?.setPatch(patch)),
    );
  }

  show(run: Run, options: ShowOptions = {}): RoutingPanel {
    if (!this.current) {
      // Beside the prompt (its code lenses stay in view), keeping the keyboard in the editor.
      const panel = vscode.window.createWebviewPanel(
        RoutingPanel.viewType,
        `Routing: ${run.label}`,
        { viewColumn: options.viewColumn ?? resultColumn(), preserveFocus: options.preserveFocus ?? true },
        { enableScripts: true, localResourceRoots: [vscode.Uri.joinPath(this.context.extensionUri, 'dist', 'webview')] },
      );
      trackResultPanel(panel);
      this.current = new RoutingPanel(panel, this.context, this);
    } else {
      this.current.panel.reveal(options.viewColumn, options.preserveFocus ?? true);
    }
    this.current.setRun(run, options.compare);
    return this.current;
  }

  update(run: Run, span?: RoutingSpan): void {
    this.current?.update(run, span);
  }

  private async restore(panel: vscode.WebviewPanel, state: PanelState | undefined): Promise<void> {
    this.current?.panel.dispose();
    trackResultPanel(panel);
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

  /** @internal */ fireRerun(e: RerunEvent): void { this.rerunEmitter.fire(e); }
  /** @internal */ fireExport(e: ExportEvent): void { this.exportEmitter.fire(e); }
  /** @internal */ fireCancel(runId: number): void { this.cancelEmitter.fire(runId); }
  /** @internal */ forget(panel: RoutingPanel): void {
    if (this.current === panel) this.current = undefined;
  }

  dispose(): void {
    this.current?.panel.dispose();
    for (const d of this.disposables) d.dispose();
  }
}

/** Registers the routing panel's serializer; returns what the commands use to show runs and hear requests. */
export function registerRoutingPanel(context: vscode.ExtensionContext, deps: RoutingPanelDeps): RoutingPanels {
  const panels = new RoutingPanels(context, deps);
  context.subscriptions.push(panels);
  return panels;
}
