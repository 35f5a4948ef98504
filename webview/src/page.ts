// The routing panel's page: the markup every view fills (ids are also what the end-to-end tests read,
// webview/README.md), and `$` to find an element of it.

export const PAGE = `
<header class="toolbar">
  <div class="title"><strong id="run-label">Waiting for a run…</strong> <span id="run-status" class="muted" aria-live="polite"></span></div>
  <div class="controls">
    <label class="control">Colour by <select id="metric"></select></label>
    <div class="control" role="group" aria-label="Zoom">
      <button id="zoom-out" title="Zoom out (-)" aria-label="Zoom out">−</button>
      <button id="zoom-in" title="Zoom in (+)" aria-label="Zoom in">+</button>
      <button id="zoom-fit" title="Fit all tokens (0)">Fit</button>
    </div>
    <button id="cancel-run" hidden title="Stop the engine at the next layer boundary">Cancel run</button>
    <button id="compare" title="Compare with another run">Compare…</button>
    <button id="stop-compare" hidden>Stop comparing</button>
    <div class="control" role="group" aria-label="Export the routing trace">
      <span class="muted">Export</span>
      <button id="export-st" title="Export the routing trace as .safetensors">.safetensors</button>
      <button id="export-csv" title="Export the routing trace as CSV">CSV</button>
    </div>
  </div>
</header>
<div id="legend" class="legend" aria-live="polite"></div>
<div id="unavailable" class="unavailable" hidden role="alert">
  <h2>Run no longer available — re-run</h2>
  <p id="unavailable-text"></p>
  <button id="rerun-unavailable">Re-run</button>
</div>
<section id="text-panel" class="text-panel" aria-labelledby="h-text">
  <h2 id="h-text">Text</h2> <span id="text-a" class="muted small" hidden>A:</span> <span id="text-summary" class="muted small"></span>
  <div id="run-text" class="token-text" tabindex="0" aria-label="The run's text, one span per token"></div>
  <div id="text-b" hidden><span class="muted small">B:</span> <span id="text-summary-b" class="muted small"></span>
    <div id="run-text-b" class="token-text" tabindex="0" aria-label="The compared run's text (B), one span per token"></div>
  </div>
</section>
<section id="grid-host" class="grid-host" aria-label="Token by layer routing grid"></section>
<div id="announce" class="sr-only" aria-live="polite"></div>
<div class="panels" id="panels">
  <section class="panel" aria-labelledby="h-pinned">
    <h2 id="h-pinned">Pinned cell</h2>
    <div id="pinned" class="cell-details"></div>
  </section>
  <section class="panel" aria-labelledby="h-patch">
    <h2 id="h-patch">Routing patch</h2>
    <div class="edit-form" role="group" aria-label="Edit an expert at a layer">
      <label>Layer <select id="edit-layer"></select></label>
      <label>Expert <input id="edit-expert" type="number" min="0" step="1" value="0"></label>
      <span id="edit-swatch" class="swatch"></span>
      <button id="do-mask" title="Router logit becomes -inf: the expert is never selected">Mask</button>
      <button id="do-force" title="Always select the expert">Force</button>
      <label>Bias <input id="edit-bias" type="number" step="0.5" value="1"></label>
      <button id="do-bias" title="Add the bias to the expert's router logit">Add bias</button>
    </div>
    <ul id="patch-list" class="patch-list"></ul>
    <div id="patch-error" class="error" role="alert"></div>
    <div class="actions">
      <button id="rerun" class="primary">Re-run with patch</button>
      <button id="clear-patch">Clear patch</button>
    </div>
  </section>
  <section class="panel" id="compare-panel" aria-labelledby="h-compare" hidden>
    <h2 id="h-compare">Difference</h2>
    <div id="compare-summary"></div>
  </section>
  <section class="panel wide" aria-labelledby="h-load">
    <h2 id="h-load">Expert load</h2>
    <div class="section-controls">
      <span class="muted small">Activation rate: the share of this run's tokens whose top-k includes the expert. Hover for values; click a cell (or arrows + Enter) to edit that expert.</span>
      <label class="control">Experts <select id="load-order">
        <option value="index">by number</option>
        <option value="picked-layer">by load in the picked layer</option>
        <option value="total">by load over all layers</option>
      </select></label>
    </div>
    <div class="load">
      <div id="heatmap-host" class="heatmap-host"></div>
      <div id="stats-host" class="stats-host"></div>
    </div>
  </section>
</div>
<div id="tooltip" class="tooltip" role="tooltip" hidden></div>`;

export const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;
