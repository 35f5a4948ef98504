// Progress for engine work. The task starts at once with its own cancellation token; a status-bar spinner shows while
// it runs, and a notification with Cancel opens only when it is still running after a moment. That notification's
// task is a promise settled when the work settles, whatever happens, so it always closes: no stale Cancel, and quick
// runs (most inspections of one prompt) do not pile notifications up. Cancel from the notification or from the
// routing panel reaches the same token.
import * as vscode from 'vscode';

/** How long work runs before its progress notification opens. */
export const NOTIFICATION_DELAY_MS = 700;

export interface RunProgress {
  /** The latest step, e.g. "layer 2/4" or "12 tokens". */
  report(message: string, increment?: number): void;
  readonly token: vscode.CancellationToken;
}

/** Runs `task` with progress as described above; `cancel` (if given) receives a function that cancels it. */
export async function withRunProgress<T>(title: string, task: (progress: RunProgress) => Promise<T>, cancel?: (cancelRun: () => void) => void): Promise<T> {
  const source = new vscode.CancellationTokenSource();
  cancel?.(() => source.cancel());
  let last: { message: string; increment?: number } | undefined;
  let worked = 0;
  let forward: ((step: { message: string; increment?: number }) => void) | undefined;
  let settle!: () => void;
  const settled = new Promise<void>((resolve) => (settle = resolve));
  const progress: RunProgress = {
    token: source.token,
    report(message, increment) {
      if (increment !== undefined) worked += increment;
      last = { message, ...(increment !== undefined ? { increment } : {}) };
      forward?.(last);
    },
  };
  void vscode.window.withProgress({ location: vscode.ProgressLocation.Window, title }, () => settled);
  const timer = setTimeout(() => {
    void vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title, cancellable: true }, (notification, token) => {
      token.onCancellationRequested(() => source.cancel());
      // Steps made before the notification opened: the total so far, then each new one as it comes.
      if (last) notification.report({ message: last.message, ...(worked > 0 ? { increment: worked } : {}) });
      forward = (step) => notification.report(step);
      return settled;
    });
  }, NOTIFICATION_DELAY_MS);
  try {
    return await task(progress);
  } finally {
    clearTimeout(timer);
    forward = undefined;
    settle();
    source.dispose();
  }
}
