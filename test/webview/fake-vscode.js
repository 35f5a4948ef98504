// The harness's stand-in for VS Code's webview host: applies a theme's --vscode-* variables, provides
// acquireVsCodeApi, and on "webview/ready" posts the scenario's messages (window.ROUTESCOPE_SCENARIO, built by
// test/webview/screenshots.mjs from runs recorded with the engine, or by stress.js from synthetic data).
(function () {
  const params = new URLSearchParams(location.search);
  const theme = window.ROUTESCOPE_THEMES[params.get('theme') || 'dark'];
  for (const [name, value] of Object.entries(theme.vars)) document.documentElement.style.setProperty(`--vscode-${name}`, value);
  document.body.classList.add(theme.bodyClass);
  let saved = null;
  window.__posted = [];
  const toTyped = (c) => ({ ...c, routerLogits: Float32Array.from(c.routerLogits), experts: Int32Array.from(c.experts), weights: Float32Array.from(c.weights) });
  window.acquireVsCodeApi = () => ({
    postMessage(message) {
      window.__posted.push(message);
      if (message.method === 'webview/ready') {
        const scenario = window.ROUTESCOPE_SCENARIO || [];
        for (const m of scenario) {
          const out = m.method === 'run/layer' ? { method: m.method, params: { runId: m.params.runId, span: toTyped(m.params.span) } } : m;
          window.postMessage(out, '*');
        }
        window.postMessage({ method: 'harness/done', params: {} }, '*');
      }
    },
    getState: () => saved,
    setState: (s) => { saved = s; },
  });
})();
