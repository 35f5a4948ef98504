// The statistics panel on the host side: one WebviewPanel showing the routing statistics of a prompt set (the
// webview app webview/src/stats, bundled to dist/webview/stats.js). The engine process runs and aggregates the set
// (commands/stats.ts); this class holds the aggregate and the set, sends the aggregate once (again when the webview
// reloads), and answers the panel's requests: a top context opened as its prompt, the steering re-run, exports,
// inspecting one prompt. Both sides speak common/src/statsProtocol.ts.
import { randomBytes } from 'node:crypto';
import * as vscode from 'vscode';
import type { IpcMessage } from '../../../common/src/panelProtocol';
import {
  ApplySteeringPatchCommand,
  decodeStatsMessage,
  InspectPromptCommand,
  OpenContextCommand,
  StatsExportCommand,
  StatsFailedNotification,
  StatsProgressNotification,
  StatsReadyCommand,
  StatsRerunCommand,
  StatsResultNotification,
  StatsStartedNotification,
  SteerCommand,
  SteeringNotification,
  StatsContextNotification,
  type StatsPanelData,
  type StatsRunStart,
  type SteeringState,
} from '../../../common/src/statsProtocol';
import type { PairSide, SteerMode } from '../../../common/src/statsQueries';
import type { PromptSet } from '../stats/promptSet';
import { routingPanelHtml } from './routingHtml';

/** What the panel's buttons ask of the commands (commands/stats.ts). */
export interface StatsPanelActions {
  openContext(set: PromptSet, request: { prompt: number; position: number; layer: number; expert: number; weight: number }): Promise<void>;
  steer(data: StatsPanelData, set: PromptSet, request: { a: string; b: string; side: PairSide; n: number; mode: SteerMode }): Promise<void>;
  applyPatch(state: SteeringState): void;
  exportStats(data: StatsPanelData, set: PromptSet, format: 'safetensors' | 'csv', pair?: [string, string]): Promise<void>;
  inspectPrompt(text: string): void;
  rerun(set: PromptSet): void;
}

export class StatsPanel implements vscode.Disposable {
  static readonly viewType = 'routescope.statsPanel';
  private panel: vscode.WebviewPanel | undefined;
  private ready = false;
  private start: StatsRunStart | undefined;
  private progress: IpcMessage<unknown> | undefined;
  private failed: string | undefined;
  private data: StatsPanelData | undefined;
  private set: PromptSet | undefined;
  private steering: SteeringState | undefined;
  private readonly disposables: vscode.Disposable[] = [];

  constructor(private readonly context: vscode.ExtensionContext, private readonly actions: StatsPanelActions) {}

  /** The statistics shown (undefined while running or when none). */
  get shown(): StatsPanelData | undefined {
    return this.data;
  }

  private post(message: IpcMessage<unknown>): void {
    if (this.panel && this.ready) void this.panel.webview.postMessage(message);
  }

  private open(title: string): void {
    if (this.panel) {
      this.panel.title = title;
      this.panel.reveal(undefined, true);
      return;
    }
    const webviewRoot = vscode.Uri.joinPath(this.context.extensionUri, 'dist', 'webview');
    // Beside the editor (the prompt file keeps its code lenses); the aggregate is re-sent when the page reloads.
    const panel = vscode.window.createWebviewPanel(StatsPanel.viewType, title, { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true }, {
      enableScripts: true,
      localResourceRoots: [webviewRoot],
    });
    panel.iconPath = vscode.Uri.joinPath(this.context.extensionUri, 'media', 'routescope.svg');
    this.ready = false;
    panel.webview.html = routingPanelHtml({
      cspSource: panel.webview.cspSource,
      nonce: randomBytes(18).toString('base64').replace(/[^A-Za-z0-9]/g, 'x'),
      scriptUri: panel.webview.asWebviewUri(vscode.Uri.joinPath(webviewRoot, 'stats.js')).toString(),
      styleUri: panel.webview.asWebviewUri(vscode.Uri.joinPath(webviewRoot, 'stats-style.css')).toString(),
      title: 'Routing statistics',
    });
    this.disposables.push(
      panel.webview.onDidReceiveMessage((raw) => this.onMessage(raw)),
      panel.onDidDispose(() => {
        this.panel = undefined;
        this.ready = false;
      }),
      // A hidden webview is unloaded; it asks for the statistics again (ready) when shown.
      panel.onDidChangeViewState((e) => {
        if (!e.webviewPanel.visible) this.ready = false;
      }),
    );
    this.panel = panel;
  }

  /** A new run begins: the panel shows its progress. */
  begin(start: StatsRunStart, set: PromptSet): void {
    this.start = start;
    this.set = set;
    this.data = undefined;
    this.progress = undefined;
    this.failed = undefined;
    this.steering = undefined;
    this.open(`Routing Statistics: ${start.source}`);
    this.post(StatsStartedNotification.create(start));
  }

  report(progress: { done: number; total: number; tokens: number; skipped: number; load?: Float64Array }): void {
    this.progress = StatsProgressNotification.create(progress);
    this.post(this.progress);
  }

  finish(data: StatsPanelData): void {
    this.data = data;
    this.open(`Routing Statistics: ${data.source}`);
    this.post(StatsResultNotification.create(this.data));
  }

  fail(message: string): void {
    this.failed = message;
    this.post(StatsFailedNotification.create({ message }));
  }

  setSteering(state: SteeringState): void {
    this.steering = state;
    this.post(SteeringNotification.create(state));
  }

  showContext(context: Parameters<typeof StatsContextNotification.create>[0]): void {
    this.post(StatsContextNotification.create(context));
  }

  private resend(): void {
    if (this.data) this.post(StatsResultNotification.create(this.data));
    else if (this.start) {
      this.post(StatsStartedNotification.create(this.start));
      if (this.progress) this.post(this.progress);
    }
    if (this.failed) this.post(StatsFailedNotification.create({ message: this.failed }));
    if (this.steering) this.post(SteeringNotification.create(this.steering));
  }

  private onMessage(raw: unknown): void {
    const message = decodeStatsMessage(raw);
    if (!message) return;
    if (StatsReadyCommand.is(message)) {
      this.ready = true;
      this.resend();
      return;
    }
    const { data, set } = this;
    if (!set) return;
    if (StatsRerunCommand.is(message)) this.actions.rerun(set);
    if (!data) return;
    if (OpenContextCommand.is(message)) void this.actions.openContext(set, message.params);
    else if (SteerCommand.is(message)) void this.actions.steer(data, set, message.params);
    else if (ApplySteeringPatchCommand.is(message) && this.steering) this.actions.applyPatch(this.steering);
    else if (StatsExportCommand.is(message)) void this.actions.exportStats(data, set, message.params.format === 'csv' ? 'csv' : 'safetensors', message.params.pair);
    else if (InspectPromptCommand.is(message)) {
      const prompt = set.prompts[message.params.prompt];
      if (prompt) this.actions.inspectPrompt(prompt.text);
    }
  }

  dispose(): void {
    this.panel?.dispose();
    for (const d of this.disposables) d.dispose();
  }
}
