// What the command groups share: the window's session, where runs are drawn, error reporting in the editor, and
// how a command argument names a run or an expert.
import * as vscode from 'vscode';
import type { RoutingSpan } from '../../../common/src/routing';
import { EngineError, isCancelled } from '../engine/protocol';
import type { Run } from '../runs/run';
import type { Session } from '../session';
import type { ExpertItem, RunItem } from '../views/sidePanel';

/** Where runs are drawn (the routing panel, views/routingPanel.ts). */
export interface RoutingDisplay {
  /** Shows a run (and, when given, the run it is compared with) in the routing panel. */
  show(run: Run, options?: { compare?: Run }): void;
  /** The run changed: a span arrived (`span`), tokens were generated, or it finished. */
  update(run: Run, span?: RoutingSpan): void;
}

export interface CommandContext {
  context: vscode.ExtensionContext;
  session: Session;
  display: () => RoutingDisplay | undefined;
}

export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Reports a failed or cancelled action: the output channel, and a notification with a way to the log. */
export function report(c: CommandContext, what: string, error: unknown): void {
  const out = c.session.output;
  if (isCancelled(error)) {
    out.appendLine(`${what}: cancelled`);
    void vscode.window.showInformationMessage(`Routescope: ${what} cancelled.`);
    return;
  }
  // A dead engine process has already been reported (Session), with the way out.
  if (error instanceof EngineError && error.code === 'ENGINE_DIED') return;
  const message = errorText(error);
  out.appendLine(`${what} failed: ${message}`);
  void vscode.window.showErrorMessage(`Routescope: ${message}`, 'Show Engine Log').then((choice) => {
    if (choice) out.show(true);
  });
}

/** A run named by a command argument: its id, or a Runs view item. */
export function runFromArg(c: CommandContext, arg: unknown): Run | undefined {
  if (typeof arg === 'number') return c.session.runs.get(arg);
  if (arg && typeof arg === 'object' && 'run' in arg) return (arg as RunItem).run;
  return undefined;
}

/** An expert named by a command argument: a Layers view item, or { layer, expert }. */
export function expertFromArg(arg: unknown): { layer: number; expert: number } | undefined {
  if (arg && typeof arg === 'object' && 'ref' in arg) return (arg as ExpertItem).ref;
  if (arg && typeof arg === 'object' && typeof (arg as { layer?: unknown }).layer === 'number') return arg as { layer: number; expert: number };
  return undefined;
}
