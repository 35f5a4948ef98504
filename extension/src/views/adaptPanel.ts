// The adaptation panel: one WebviewPanel showing the last "Re-mix (C3PO)" or "Generate with rerouting" result
// (HTML from views/adaptHtml.ts; no scripts, strict CSP with a nonce), in the group of the other result panels.
import { randomBytes } from 'node:crypto';
import * as vscode from 'vscode';
import { adaptPanelHtml, type AdaptView } from './adaptHtml';
import { resultColumn, trackResultPanel } from './columns';

export class AdaptPanel {
  private panel: vscode.WebviewPanel | undefined;

  show(view: AdaptView): void {
    if (!this.panel) {
      this.panel = vscode.window.createWebviewPanel('routescope.adapt', 'Routescope: Adaptation', { viewColumn: resultColumn(), preserveFocus: true }, {
        enableScripts: false,
        localResourceRoots: [],
      });
      trackResultPanel(this.panel);
      this.panel.onDidDispose(() => (this.panel = undefined));
    } else {
      this.panel.reveal(undefined, true);
    }
    this.panel.title = view.kind === 'remix' ? 'Routescope: Re-mix (C3PO)' : 'Routescope: Rerouting';
    this.panel.webview.html = adaptPanelHtml(view, randomBytes(16).toString('base64'), this.panel.webview.cspSource);
  }

  dispose(): void {
    this.panel?.dispose();
  }
}
