// Where Routescope's result panels open (routing, statistics, adaptation, headroom): in the editor group of one that is
// already open, as another tab, so the editor the user works in (with its code lenses) keeps its width and the
// window is not split again; otherwise beside the active editor.
import * as vscode from 'vscode';

const panels = new Set<vscode.WebviewPanel>();

/** Counts `panel` among the result panels until it is closed. */
export function trackResultPanel(panel: vscode.WebviewPanel): void {
  panels.add(panel);
  panel.onDidDispose(() => panels.delete(panel));
}

/** The group of an open result panel, else beside the active editor. */
export function resultColumn(): vscode.ViewColumn {
  for (const panel of panels) if (panel.viewColumn !== undefined) return panel.viewColumn;
  return vscode.ViewColumn.Beside;
}
