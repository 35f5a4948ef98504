// STRESS TEST data — synthetic, used ONLY to measure the routing panel's frame time at 4,096 tokens × 48 layers ×
// 128 experts (test/webview/screenshots.mjs --stress). Never shown to users as a result; the page title, run label
// and model name say so.
(function () {
  const T = 4096, L = 48, E = 128, k = 8;
  let seed = 12345;
  const rand = () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 4294967296);
  const moeLayers = Array.from({ length: L }, (_, i) => i);
  const run = {
    id: 1, kind: 'inspect', label: 'STRESS TEST — synthetic data (frame-time measurement only)', prompt: 'synthetic',
    model: { dir: '/synthetic', name: 'STRESS-TEST-synthetic', modelType: 'synthetic', numLayers: L, numExperts: E, topK: k, moeLayers, vocabSize: 50000 },
    patch: undefined, tokens: Array.from({ length: T }, (_, i) => i % 50000), tokenText: Array.from({ length: T }, (_, i) => `t${i}`),
    promptTokens: T, startedAt: Date.now(),
  };
  const messages = [{ method: 'run/init', params: { role: 'primary', run } }];
  for (let layer = 0; layer < L; layer++) {
    const routerLogits = new Float32Array(T * E);
    const experts = new Int32Array(T * k);
    const weights = new Float32Array(T * k);
    for (let t = 0; t < T; t++) {
      const hot = (Math.floor(t / 64) * 7 + layer * 13) % E;
      for (let e = 0; e < E; e++) routerLogits[t * E + e] = rand() * 2 + (e === hot ? 4 : 0);
      for (let j = 0; j < k; j++) {
        experts[t * k + j] = j === 0 && rand() < 0.7 ? hot : Math.floor(rand() * E);
        weights[t * k + j] = (k - j) / ((k * (k + 1)) / 2);
      }
    }
    messages.push({ method: 'run/layer', params: { runId: 1, span: { layer, start: 0, count: T, numExperts: E, topK: k, routerLogits, experts, weights } } });
  }
  messages.push({ method: 'run/finished', params: { runId: 1, finishedAt: Date.now() } });
  window.ROUTESCOPE_SCENARIO = messages;
})();
