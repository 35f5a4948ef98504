// The routing panel's HTML shell (pure; used by the host panel and by the headless screenshot harness): a strict
// Content-Security-Policy — only our own stylesheet and a nonce'd script, no inline styles or event handlers.

export interface PanelHtmlOptions {
  /** webview.cspSource (the origin asWebviewUri URIs are served from). */
  cspSource: string;
  nonce: string;
  scriptUri: string;
  styleUri: string;
  title?: string;
  /** Extra nonce'd <script> tags before the app (the harness injects its fake acquireVsCodeApi this way). */
  preludeScripts?: string[];
}

const escapeAttr = (s: string) => s.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;');

export function routingPanelHtml(o: PanelHtmlOptions): string {
  const csp = [
    "default-src 'none'",
    `img-src ${o.cspSource} data:`,
    `style-src ${o.cspSource}`,
    `font-src ${o.cspSource}`,
    `script-src 'nonce-${o.nonce}'`,
  ].join('; ');
  const prelude = (o.preludeScripts ?? []).map((src) => `<script nonce="${o.nonce}" src="${escapeAttr(src)}"></script>`).join('\n');
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${escapeAttr(o.styleUri)}">
<title>${escapeAttr(o.title ?? 'Routing')}</title>
</head>
<body>
<div id="app"></div>
${prelude}
<script nonce="${o.nonce}" src="${escapeAttr(o.scriptUri)}"></script>
</body>
</html>`;
}
