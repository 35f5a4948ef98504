// The routing-headroom panel: one WebviewPanel showing the last headroom analysis, updated as items finish (HTML
// from views/headroomHtml.ts; no scripts, strict CSP with a nonce).
import { randomBytes } from 'node:crypto';
import * as vscode from 'vscode';
import { headroomPanelHtml, type HeadroomView } from './headroomHtml';

export class HeadroomPanel {
  private panel: vscode.WebviewPanel | undefined;

  show(view: HeadroomView): void {
    if (!this.panel) {
      this.panel = vscode.window.createWebviewPanel('routescope.headroom', 'Routescope: Routing Headroom (analysis only)', { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true }, {
        enableScripts: false,
        localResourceRoots: [],
      });
      this.panel.onDidDispose(() => (this.panel = undefined));
    } else if (view.kind === 'done') {
      this.panel.reveal(undefined, true);
    }
    this.panel.webview.html = headroomPanelHtml(view, randomBytes(16).toString('base64'), this.panel.webview.cspSource);
  }

  dispose(): void {
    this.panel?.dispose();
  }
}
