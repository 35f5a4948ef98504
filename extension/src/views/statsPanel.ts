// The statistics panel on the host side: one WebviewPanel showing the routing statistics of a prompt set (the
// webview app webview/src/stats, bundled to dist/webview/stats.js). The engine process runs and aggregates the set
// (commands/stats.ts); this class holds the aggregate and the set, sends the aggregate once (again when the webview
// reloads), and answers the panel's requests: a top context opened as its prompt, the steering re-run, exports,
// inspecting one prompt. Both sides speak common/src/statsProtocol.ts. After a window reload VS Code restores the
// panel through its serializer; the aggregate was not kept, so the panel says so and Run again reads the same files.
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
  StatsUnavailableNotification,
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
import { resultColumn, trackResultPanel } from './columns';

/** What the panel's buttons ask of the commands (commands/stats.ts). */
export interface StatsPanelActions {
  openContext(set: PromptSet, request: { prompt: number; position: number; layer: number; expert: number; weight: number }): Promise<void>;
  steer(data: StatsPanelData, set: PromptSet, request: { a: string; b: string; side: PairSide; n: number; mode: SteerMode }): Promise<void>;
  applyPatch(state: SteeringState): void;
  exportStats(data: StatsPanelData, set: PromptSet, format: 'safetensors' | 'csv', pair?: [string, string]): Promise<void>;
  inspectPrompt(text: string): void;
  /** The statistics of these files and folders again. */
  rerun(sources: string[]): void;
}

/** What the page keeps in its webview state (webview/src/stats/main.ts), as the serializer receives it. */
interface SavedStatsState {
  sources?: unknown;
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
  /** A panel restored after a window reload: the inputs its page remembered (no statistics in memory). */
  private restoredSources: string[] | undefined;
  private readonly disposables: vscode.Disposable[] = [];

  constructor(private readonly context: vscode.ExtensionContext, private readonly actions: StatsPanelActions) {
    this.disposables.push(vscode.window.registerWebviewPanelSerializer(StatsPanel.viewType, {
      deserializeWebviewPanel: async (panel: vscode.WebviewPanel, state: unknown) => this.restore(panel, state as SavedStatsState | undefined),
    }));
  }

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
    // Beside the editor, among the other result panels (the prompt file keeps its code lenses); the aggregate is
    // re-sent when the page reloads. Its webview options are set by attach, as for a restored panel.
    const panel = vscode.window.createWebviewPanel(StatsPanel.viewType, title, { viewColumn: resultColumn(), preserveFocus: true });
    this.attach(panel);
  }

  /** Forgets what the panel showed (a new run, or a panel restored after a reload). */
  private clear(): void {
    this.restoredSources = undefined;
    this.data = undefined;
    this.progress = undefined;
    this.failed = undefined;
    this.steering = undefined;
  }

  /** A panel restored by VS Code after a window reload: the page, with nothing in memory to show. */
  private async restore(panel: vscode.WebviewPanel, state: SavedStatsState | undefined): Promise<void> {
    this.panel?.dispose();
    this.clear();
    this.start = undefined;
    this.set = undefined;
    const sources = Array.isArray(state?.sources) && state.sources.every((s) => typeof s === 'string') ? (state.sources as string[]) : [];
    this.restoredSources = sources.length > 0 ? sources : undefined;
    this.attach(panel);
  }

  private attach(panel: vscode.WebviewPanel): void {
    const webviewRoot = vscode.Uri.joinPath(this.context.extensionUri, 'dist', 'webview');
    panel.webview.options = { enableScripts: true, localResourceRoots: [webviewRoot] };
    trackResultPanel(panel);
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
        if (this.panel !== panel) return;
        this.panel = undefined;
        this.ready = false;
      }),
      // No view-state gate: a hidden page drops what is posted and asks for all of it again (ready) when shown, while
      // a view-state event arriving after the page's ready (as on a window reload) would silence a live page.
    );
    this.panel = panel;
  }

  /** A new run begins: the panel shows its progress. */
  begin(start: StatsRunStart, set: PromptSet): void {
    this.clear();
    this.start = start;
    this.set = set;
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
    else if (this.restoredSources) {
      this.post(StatsUnavailableNotification.create({ reason: 'The statistics were not kept across the window reload: Run again computes them for the same files.' }));
    } else if (!this.failed) {
      this.post(StatsUnavailableNotification.create({ reason: 'The statistics are no longer available: run Routing Statistics over a Prompt Set… again.' }));
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
    if (StatsRerunCommand.is(message)) {
      const sources = set?.sources ?? this.restoredSources;
      if (sources) this.actions.rerun(sources);
      return;
    }
    if (!set || !data) return;
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
