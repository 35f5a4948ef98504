// What the routing panel has sent of one run, and the messages that bring the webview up to date. A span that just
// arrived from the engine process is posted as it is (its typed arrays, no copy); rows the webview has not seen for
// another reason (the run was shown after they arrived) are posted as views into the run's own arrays (no copy
// either; VS Code transfers a view's whole buffer, which the run sized to the positions it can route). No vscode
// import: the unit tests drive it with a recording `post`.
import {
  RunFinishedNotification,
  RunInitNotification,
  RunLayerNotification,
  RunTokensNotification,
  type IpcMessage,
  type RunRole,
} from '../../../common/src/panelProtocol';
import type { RoutingSpan } from '../../../common/src/routing';
import type { RunInfo } from '../../../common/src/run';
import type { Run } from '../runs/run';

/** A run's metadata for `run/init` (no routing; arrays copied so later pushes on the host do not leak). */
export function encodeRunInfo(run: Run): RunInfo {
  const info: RunInfo = {
    id: run.id,
    kind: run.kind,
    label: run.label,
    prompt: run.prompt,
    model: { ...run.model, moeLayers: [...run.model.moeLayers] },
    patch: run.patch,
    tokens: [...run.tokens],
    tokenText: [...run.tokenText],
    promptTokens: run.promptTokens,
    startedAt: run.startedAt,
  };
  if (run.finishedAt !== undefined) info.finishedAt = run.finishedAt;
  if (run.nextTokens) info.nextTokens = run.nextTokens.map((t) => ({ ...t }));
  if (run.nextTokenProbs) info.nextTokenProbs = run.nextTokenProbs;
  if (run.generatedText !== undefined) info.generatedText = run.generatedText;
  if (run.error !== undefined) info.error = run.error;
  if (run.baseRunId !== undefined) info.baseRunId = run.baseRunId;
  return info;
}

export type Post = (message: IpcMessage<unknown>) => void;

export class RunSender {
  private tokens = 0;
  /** Per layer: rows [0, n) are in the webview. */
  private readonly sentRows = new Map<number, number>();
  private finished = false;

  constructor(
    readonly run: Run,
    private readonly role: RunRole,
    private readonly post: Post,
  ) {}

  /** Sends the run from the beginning (a new panel, a webview that reloaded, a run newly shown). */
  start(): void {
    this.sentRows.clear();
    this.finished = false;
    this.tokens = this.run.tokens.length;
    this.post(RunInitNotification.create({ role: this.role, run: encodeRunInfo(this.run) }));
    this.flush();
  }

  /** Sends what the webview has not seen: new tokens, `span` (just received) as it is, other unseen rows, the end. */
  flush(span?: RoutingSpan): void {
    const run = this.run;
    if (run.tokens.length > this.tokens) {
      const from = this.tokens;
      this.post(RunTokensNotification.create({ runId: run.id, from, tokens: run.tokens.slice(from), tokenText: run.tokenText.slice(from) }));
      this.tokens = run.tokens.length;
    }
    if (span && run.layers.has(span.layer)) {
      const sent = this.sentRows.get(span.layer) ?? 0;
      if (span.start <= sent && span.start + span.count > sent) {
        this.post(RunLayerNotification.create({ runId: run.id, span }));
        this.sentRows.set(span.layer, span.start + span.count);
      }
    }
    for (const layer of [...run.layers.keys()].sort((a, b) => a - b)) this.catchUp(layer);
    if (!this.finished && (run.finishedAt !== undefined || run.error !== undefined)) {
      this.finished = true;
      this.post(
        RunFinishedNotification.create({
          runId: run.id,
          finishedAt: run.finishedAt ?? Date.now(),
          ...(run.nextTokens ? { nextTokens: run.nextTokens } : {}),
          ...(run.nextTokenProbs ? { nextTokenProbs: run.nextTokenProbs } : {}),
          ...(run.generatedText !== undefined ? { generatedText: run.generatedText } : {}),
          ...(run.error !== undefined ? { error: run.error } : {}),
        }),
      );
    }
  }

  /** Rows of a layer the webview has not seen, as views into the run's arrays. */
  private catchUp(layer: number): void {
    const routing = this.run.layers.get(layer)!;
    const sent = this.sentRows.get(layer) ?? 0;
    if (routing.filled <= sent) return;
    this.post(RunLayerNotification.create({ runId: this.run.id, span: routing.span(sent, routing.filled) }));
    this.sentRows.set(layer, routing.filled);
  }
}
