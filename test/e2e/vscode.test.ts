// End to end in a real VS Code: code-server (installed into the cache by tools/code-server.mjs) driven through
// Debian chromium with playwright-core, as in shared/spec/vscode-testing.md. The extension is the built tree
// (dist/, build/Release, media/) staged as an installed extension. Screenshots of every panel go to test/out/e2e/.
//   ROUTESCOPE_E2E_MODEL=DIR   stage DIR as the extension's demo model (default media/demo-model)
// Over 400 lines on purpose: one test walks the product in one window, each step building on the last (the model
// opened, the runs made, the patch set), so the steps and their page helpers stay together.
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { BrowserContext, FrameLocator, Page } from 'playwright-core';
import { ROOT, runCli } from '../helpers/cli';
import { decodeTensor, readSafetensorsRaw } from '../helpers/safetensors';
import { loadTokenizer } from '../../extension/src/checkpoint/tokenizer';

const OUT = path.join(ROOT, 'test', 'out', 'e2e');
// code-server's profile, workspace and the staged extension: outside test/out, whose *.test.js files are the suites.
const RUN_DIR = path.join(ROOT, '.cache', 'e2e', 'vscode');
const DEMO_MODEL = path.resolve(process.env.ROUTESCOPE_E2E_MODEL || path.join(ROOT, 'media', 'demo-model'));
const STEP_MS = 90_000;
const UI_MS = 20_000;

interface CodeServerTools {
  ensureCodeServer(): { nodeBin: string; entry: string };
  prepareProfile(dir: string, options: { extensionDir: string; settings?: Record<string, unknown>; workspaceFiles?: Record<string, string> }): { workspace: string };
  startCodeServer(options: { dir: string; port: number; install: unknown; stdio?: unknown }): Promise<{ url: string; stop(): void }>;
  freePort(): Promise<number>;
  CHROMIUM: string;
}

let context: BrowserContext | undefined;
let page: Page;
let server: { url: string; stop(): void } | undefined;
let workspace: string;
const shots: string[] = [];

/** The extension as it is installed: the built tree, with the chosen model as media/demo-model. */
function stageExtension(dir: string): string {
  const ext = path.join(dir, 'extension');
  fs.rmSync(ext, { recursive: true, force: true });
  fs.mkdirSync(path.join(ext, 'media'), { recursive: true });
  for (const name of ['package.json', 'dist', 'build', 'node_modules']) fs.symlinkSync(path.join(ROOT, name), path.join(ext, name));
  for (const name of fs.readdirSync(path.join(ROOT, 'media'))) {
    if (name !== 'demo-model') fs.symlinkSync(path.join(ROOT, 'media', name), path.join(ext, 'media', name));
  }
  fs.symlinkSync(DEMO_MODEL, path.join(ext, 'media', 'demo-model'));
  return ext;
}

async function shot(name: string): Promise<void> {
  const file = path.join(OUT, `${String(shots.length + 1).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file });
  shots.push(file);
}

async function runCommand(title: string): Promise<void> {
  for (let attempt = 0; attempt < 8; attempt++) {
    await page.keyboard.press('Escape');
    await page.keyboard.press('F1');
    const input = page.locator('.quick-input-widget input.input');
    await input.waitFor({ state: 'visible', timeout: 10_000 });
    await input.fill(`>Routescope: ${title}`);
    const row = page.locator('.quick-input-list .monaco-list-row', { hasText: `Routescope: ${title}` }).first();
    try {
      await row.waitFor({ state: 'visible', timeout: 3_000 });
      await input.press('Enter');
      return;
    } catch {
      // The palette snapshots commands when opened: the extension may not have activated yet.
      await page.keyboard.press('Escape');
      await page.waitForTimeout(1_000);
    }
  }
  throw new Error(`command "Routescope: ${title}" never appeared in the palette`);
}

function view(name: string) {
  return page.locator(`.pane:has(.pane-header[aria-label^="${name}"])`);
}

async function treeRows(name: string): Promise<string[]> {
  return view(name).locator('.monaco-list-row').allInnerTexts();
}

async function waitForNotification(pattern: RegExp, timeout = STEP_MS): Promise<string> {
  const toast = page.locator('.notification-list-item-message', { hasText: pattern }).first();
  await toast.waitFor({ state: 'visible', timeout });
  return toast.innerText();
}

async function clearNotifications(): Promise<void> {
  await runVsCodeCommand('Notifications: Clear All Notifications');
}

async function runVsCodeCommand(label: string): Promise<void> {
  await page.keyboard.press('Escape');
  await page.keyboard.press('F1');
  const input = page.locator('.quick-input-widget input.input');
  await input.waitFor({ state: 'visible' });
  await input.fill(`>${label}`);
  await page.locator('.quick-input-list .monaco-list-row', { hasText: label }).first().waitFor({ state: 'visible', timeout: 10_000 });
  await input.press('Enter');
}

/** Waits until the Runs view lists `count` finished runs; returns the rows (newest first). */
async function waitForRuns(count: number): Promise<string[]> {
  const deadline = Date.now() + STEP_MS;
  let rows: string[] = [];
  while (Date.now() < deadline) {
    rows = await treeRows('Runs');
    if (rows.length >= count && !rows.some((r) => /running…/.test(r))) return rows;
    await page.waitForTimeout(250);
  }
  throw new Error(`expected ${count} finished runs, the Runs view shows: ${JSON.stringify(rows)}`);
}

async function showPromptsEditor(): Promise<void> {
  await page.locator('.tabs-container .tab', { hasText: 'demo.prompts.md' }).first().click();
  await page.locator('.monaco-editor .view-lines').first().waitFor({ state: 'visible' });
}

function panelFrame(): FrameLocator {
  return page.frameLocator('iframe.webview').frameLocator('#active-frame');
}

/** The text and HTML of the adaptation panel once it shows a finished result whose heading starts with `title`. */
async function adaptPanel(title: string): Promise<{ text: string; html: string }> {
  const deadline = Date.now() + STEP_MS;
  while (Date.now() < deadline) {
    const frames = page.frameLocator('iframe.webview');
    const n = await page.locator('iframe.webview').count();
    for (let i = 0; i < n; i++) {
      try {
        const body = frames.nth(i).frameLocator('#active-frame').locator('body');
        const text = await body.innerText({ timeout: 2_000 });
        if (text.startsWith(title) && !/Running…/.test(text)) return { text, html: await body.innerHTML({ timeout: 2_000 }) };
      } catch {
        // not loaded, or another panel
      }
    }
    await page.waitForTimeout(250);
  }
  throw new Error(`the adaptation panel never showed "${title}"`);
}

interface GridState {
  layers: number;
  tokens: number;
  mode: string;
  changedCells: number;
}

/** The routing grid's data attributes (documented in webview/README.md), once the shown run has finished. */
async function gridState(expect: { mode: 'single' | 'compare' }): Promise<GridState> {
  const grid = panelFrame().locator('#routing-grid');
  const deadline = Date.now() + STEP_MS;
  let last: Record<string, string | null> = {};
  while (Date.now() < deadline) {
    try {
      last = await grid.evaluate((el) => Object.fromEntries(['data-layers', 'data-tokens', 'data-streaming', 'data-mode', 'data-changed-cells'].map((a) => [a, el.getAttribute(a)])), undefined, { timeout: 5_000 });
      // In compare mode the diff is counted after both runs have arrived.
      const diffReady = expect.mode === 'single' || (last['data-changed-cells'] ?? '') !== '';
      if (last['data-streaming'] === 'false' && last['data-mode'] === expect.mode && diffReady) {
        return {
          layers: Number(last['data-layers']),
          tokens: Number(last['data-tokens']),
          mode: String(last['data-mode']),
          changedCells: Number(last['data-changed-cells'] || 0),
        };
      }
    } catch {
      // The panel is still loading.
    }
    await page.waitForTimeout(250);
  }
  throw new Error(`the routing grid never showed a finished ${expect.mode} run: ${JSON.stringify(last)}`);
}

/** Two items of each skill from media/tasks/eval.jsonl, as the text of a task file. */
function headroomItems(): string {
  const lines = fs.readFileSync(path.join(ROOT, 'media', 'tasks', 'eval.jsonl'), 'utf8').trim().split('\n');
  const bySkill = new Map<string, string[]>();
  for (const line of lines) {
    const skill = (JSON.parse(line) as { skill: string }).skill;
    const list = bySkill.get(skill) ?? [];
    if (list.length < 2) bySkill.set(skill, [...list, line]);
  }
  return [...bySkill.values()].flat().join('\n') + '\n';
}

before(async () => {
  assert.ok(fs.existsSync(path.join(DEMO_MODEL, 'config.json')), `the demo model is missing (${DEMO_MODEL}); the end-to-end tests open it`);
  fs.mkdirSync(OUT, { recursive: true });
  const tools = (await import(pathToFileURL(path.join(ROOT, 'tools', 'code-server.mjs')).href)) as CodeServerTools;
  const install = tools.ensureCodeServer();
  fs.rmSync(RUN_DIR, { recursive: true, force: true });
  const extension = stageExtension(RUN_DIR);
  // A C3PO reference set for the demo model, built by the CLI as a user would, for the Re-mix lens.
  const ref = path.join(RUN_DIR, 'reference');
  const built = runCli(['reference', 'build', '--model', DEMO_MODEL, '--data', path.join(ROOT, 'media', 'tasks', 'reference.jsonl'), '--limit', '140', '--out', ref, '--threads', '2', '--json']);
  assert.equal(built.code, 0, built.stderr);
  ({ workspace } = tools.prepareProfile(RUN_DIR, {
    extensionDir: extension,
    settings: {
      'workbench.colorTheme': 'Default Dark Modern', 'editor.codeLens': true, 'git.enabled': false, 'git.openRepositoryInParentFolders': 'never',
      'routescope.c3po.reference': ref,
    },
    workspaceFiles: {
      'demo.prompts.md': fs.readFileSync(path.join(ROOT, 'media', 'demo.prompts.md'), 'utf8'),
      // Labelled items for the routing headroom: two of each skill of the demo model's evaluation split.
      'demo.tasks.jsonl': headroomItems(),
    },
  }));
  const port = await tools.freePort();
  server = await tools.startCodeServer({ dir: RUN_DIR, port, install });
  const { chromium } = (await import('playwright-core')) as typeof import('playwright-core');
  context = await chromium.launchPersistentContext(path.join(RUN_DIR, 'chromium'), {
    executablePath: tools.CHROMIUM,
    headless: true,
    viewport: { width: 1600, height: 1000 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context.setDefaultTimeout(UI_MS);
  page = context.pages()[0] ?? (await context.newPage());
  // A shared, loaded machine can take longer than the default UI timeout to serve the workbench.
  await page.goto(`${server.url}?folder=${encodeURIComponent(workspace)}`, { timeout: 60_000 });
  await page.locator('.monaco-workbench').waitFor({ state: 'visible', timeout: 60_000 });
  await page.locator('.activitybar').waitFor({ state: 'visible' });
});

after(async () => {
  await context?.close().catch(() => undefined);
  server?.stop();
  if (shots.length) console.log(`# screenshots:\n${shots.map((s) => `#   ${path.relative(ROOT, s)}`).join('\n')}`);
});

/** A sub-step; on failure a screenshot is kept and the later steps are skipped (they depend on this one). */
let failed = false;
async function step(t: { test: (name: string, fn: () => Promise<void>) => Promise<void> }, name: string, fn: () => Promise<void>): Promise<void> {
  await t.test(name, async () => {
    if (failed) throw new Error('skipped: an earlier step failed');
    try {
      await fn();
    } catch (error) {
      failed = true;
      await shot(`failed-${name.slice(0, 40).replace(/[^a-z0-9]+/gi, '-')}`).catch(() => undefined);
      throw error;
    }
  });
}

test('Routescope in VS Code: open the demo model, inspect from the palette and a code lens, mask, diff, export, survive an engine crash', async (t) => {
  const config = JSON.parse(fs.readFileSync(path.join(DEMO_MODEL, 'config.json'), 'utf8')) as { num_hidden_layers: number };
  const tokenizer = loadTokenizer(DEMO_MODEL);
  const prompts = fs.readFileSync(path.join(workspace, 'demo.prompts.md'), 'utf8').split('\n');

  let moeLayers = 0;
  await step(t, 'open the demo model from the palette; the Model view describes it', async () => {
    await page.locator('.activitybar [aria-label^="Routescope"]').first().click();
    await view('Model').waitFor({ state: 'visible' });
    await shot('side-panel-empty');
    await runCommand('Open Demo Model');
    const deadline = Date.now() + STEP_MS;
    let rows: string[] = [];
    while (Date.now() < deadline && !rows.some((r) => /^Engine process/.test(r) && /pid \d+/.test(r))) {
      rows = await treeRows('Model');
      await page.waitForTimeout(250);
    }
    const layersRow = rows.find((r) => r.startsWith('Layers'));
    assert.ok(layersRow, `Model view rows: ${JSON.stringify(rows)}`);
    assert.match(layersRow, new RegExp(`^Layers\\s*${config.num_hidden_layers}`));
    const moe = /\((\d+) MoE/.exec(layersRow);
    moeLayers = moe ? Number(moe[1]) : config.num_hidden_layers;
    assert.ok(rows.some((r) => /^Tokenizer\s*tokenizer\.json/.test(r)), JSON.stringify(rows));
    await shot('model-view');
  });

  const firstPrompt = (() => {
    const heading = prompts.findIndex((l) => l.startsWith('## '));
    const body: string[] = [];
    for (let i = heading + 1; i < prompts.length && !prompts[i].startsWith('## '); i++) body.push(prompts[i]);
    return { line: heading + 1, text: body.join('\n').trim() };
  })();
  const expectedTokens = tokenizer.encode(firstPrompt.text).length;

  await step(t, 'Inspect Routing from the palette on the prompt at the cursor: one grid row per MoE layer, all tokens', async () => {
    await page.keyboard.press('Control+P');
    const input = page.locator('.quick-input-widget input.input');
    await input.fill('demo.prompts.md');
    await page.locator('.quick-input-list .monaco-list-row', { hasText: 'demo.prompts.md' }).first().waitFor();
    await input.press('Enter');
    await page.locator('.monaco-editor .view-lines').first().waitFor({ state: 'visible' });
    // Cursor into the first prompt's body.
    await page.keyboard.press('Control+G');
    await page.locator('.quick-input-widget input.input').fill(`:${firstPrompt.line + 2}`);
    await page.keyboard.press('Enter');
    await runCommand('Inspect Routing');
    const rows = await waitForRuns(1);
    assert.match(rows[0], new RegExp(`${expectedTokens} tokens`), `run row: ${rows[0]}`);
    const layerRows = await treeRows('Layers');
    assert.equal(layerRows.length, moeLayers, `Layers view: ${JSON.stringify(layerRows)}`);
    const grid = await gridState({ mode: 'single' });
    assert.equal(grid.layers, moeLayers, 'one grid row per MoE layer');
    assert.equal(grid.tokens, expectedTokens, 'one grid column per token');
    await shot('routing-panel-palette');
  });

  await step(t, 'Inspect routing from a code lens', async () => {
    await showPromptsEditor();
    const lens = page.locator('.monaco-editor .codelens-decoration a', { hasText: 'Inspect routing' }).first();
    await lens.waitFor({ state: 'visible' });
    await lens.click();
    const rows = await waitForRuns(2);
    assert.match(rows[0], /^Inspect: /);
    await shot('routing-panel-code-lens');
  });

  await step(t, 'mask the busiest expert of the first MoE layer from the Layers view, re-run, and the diff shows changed cells', async () => {
    const layer = view('Layers').locator('.monaco-list-row').first();
    await layer.click();
    await page.keyboard.press('ArrowRight');
    await view('Layers').locator('.monaco-list-row', { hasText: 'Expert 0' }).first().waitFor();
    const experts = (await treeRows('Layers')).filter((r) => r.startsWith('Expert'));
    const loads = experts.map((r) => Number(/load (\d+)/.exec(r)![1]));
    const busiest = loads.indexOf(Math.max(...loads));
    const row = view('Layers').locator('.monaco-list-row', { hasText: new RegExp(`^Expert ${busiest}(?!\\d)`) }).first();
    await row.click({ button: 'right' });
    const mask = page.getByRole('menuitem', { name: 'Mask Expert' });
    await mask.waitFor({ state: 'visible' });
    await mask.hover();
    await page.waitForTimeout(300);
    await mask.click();
    await view('Layers').locator('.monaco-list-row', { hasText: /masked/ }).first().waitFor();
    await shot('layers-view-masked');
    await clearNotifications();
    await runCommand('Re-run with Patch');
    const summary = await waitForNotification(/cells route to a different expert set/);
    const changed = Number(/(\d+) of (\d+) cells/.exec(summary)![1]);
    assert.ok(changed > 0, summary);
    // The panel recounts as run B's layers arrive: wait for it to settle on the host's count.
    let grid = await gridState({ mode: 'compare' });
    for (let deadline = Date.now() + UI_MS; grid.changedCells !== changed && Date.now() < deadline; ) {
      await page.waitForTimeout(250);
      grid = await gridState({ mode: 'compare' });
    }
    assert.equal(grid.changedCells, changed, 'the panel\'s diff shows the changed cells the host counted');
    await waitForRuns(3);
    const rows = await treeRows('Runs');
    assert.match(rows[0], /patched/);
    await shot('routing-panel-diff');
  });

  await step(t, 'export the routing trace and read it back', async () => {
    const target = path.join(workspace, 'trace.safetensors');
    await runCommand('Export Routing Trace…');
    const input = page.locator('.quick-input-widget input.input');
    await input.waitFor({ state: 'visible' });
    // The save dialog fills in its default path after it opens; typing before that gets the two mixed
    // ("trace.safetensors.safetensors" in a folder that does not exist): wait for it, then type until it sticks.
    for (let deadline = Date.now() + UI_MS; (await input.inputValue()) === '' && Date.now() < deadline; ) await page.waitForTimeout(100);
    for (let attempt = 0; attempt < 5; attempt++) {
      await input.fill(target);
      await page.waitForTimeout(300);
      if ((await input.inputValue()) === target) break;
    }
    assert.equal(await input.inputValue(), target, 'the save dialog holds the target path');
    await input.press('Enter');
    await waitForNotification(/routing trace of run #\d+ saved/);
    const st = readSafetensorsRaw(target);
    const logits = decodeTensor(st, 'router_logits');
    assert.equal(logits.shape[0], moeLayers);
    assert.equal(logits.shape[1], expectedTokens);
    const experts = decodeTensor(st, 'experts');
    assert.equal(experts.dtype, 'I32');
    assert.deepEqual(experts.shape.slice(0, 2), [moeLayers, expectedTokens]);
    assert.deepEqual(JSON.parse(st.metadata!.tokens), tokenizer.encode(firstPrompt.text));
    assert.ok(JSON.parse(st.metadata!.patch).layers, 'the patched run carries its patch');
    await shot('export');
  });

  await step(t, 'Edit Routing Patch shows the patch as JSON; Clear Patch removes the mask', async () => {
    await runCommand('Edit Routing Patch');
    await page.locator('.tabs-container .tab', { hasText: 'current-patch.json' }).first().waitFor({ state: 'visible' });
    await page.locator('.monaco-editor .view-lines', { hasText: '"mask"' }).first().waitFor({ state: 'visible' });
    await shot('patch-document');
    await runCommand('Clear Patch');
    await page.locator('.monaco-editor .view-lines', { hasText: '"layers": {}' }).first().waitFor({ state: 'visible' });
    const deadline = Date.now() + UI_MS;
    while (Date.now() < deadline && (await treeRows('Layers')).some((r) => /masked/.test(r))) await page.waitForTimeout(250);
    assert.ok(!(await treeRows('Layers')).some((r) => /masked/.test(r)), 'no expert is masked after Clear Patch');
  });

  await step(t, 'Generate from a code lens streams a continuation with routing', async () => {
    await showPromptsEditor();
    await page.locator('.monaco-editor .codelens-decoration a', { hasText: 'Generate' }).first().click();
    const rows = await waitForRuns(4);
    assert.match(rows[0], /^Generate: /);
    const tokens = Number(/(\d+) tokens/.exec(rows[0])![1]);
    assert.ok(tokens > expectedTokens, `generated past the prompt: ${rows[0]}`);
    await gridState({ mode: 'single' });
    await shot('routing-panel-generate');
  });

  await step(t, 'Re-mix (C3PO) from a code lens: ω before/after per critical layer, neighbours, routing and answer', async () => {
    await showPromptsEditor();
    await page.locator('.monaco-editor .codelens-decoration a', { hasText: 'Re-mix (C3PO)' }).first().click();
    const { text, html } = await adaptPanel('Re-mix (C3PO): ngd');
    const critical = Math.min(5, config.num_hidden_layers); // the last 5 MoE layers, all of them when fewer
    for (let l = config.num_hidden_layers - critical; l < config.num_hidden_layers; l++) assert.ok(html.includes(`aria-label="ω at layer ${l}"`), `ω of layer ${l}`);
    assert.match(text, /Neighbour loss: \d+\.\d+ → \d+\.\d+/);
    assert.ok(html.includes('aria-label="Neighbours"') && html.includes('aria-label="Routing change"'));
    assert.match(text, /Before[\s\S]*After re-mix/);
    await shot('adapt-remix');
  });

  await step(t, 'Generate with rerouting from a code lens: rounds, δ per layer after each round, both texts', async () => {
    await showPromptsEditor();
    await page.locator('.monaco-editor .codelens-decoration a', { hasText: 'Generate with rerouting' }).first().click();
    const { text, html } = await adaptPanel('Generate with rerouting');
    assert.ok(html.includes('aria-label="Rerouting rounds"') && html.includes('aria-label="Delta per layer after each round"'));
    assert.match(text, /Without rerouting[\s\S]*With rerouting/);
    await shot('adapt-reroute');
  });

  await step(t, 'Routing Headroom (Analysis Only) on a task file: per-layer bars with axes, the items it fixes, marked analysis only', async () => {
    await page.keyboard.press('Control+P');
    const input = page.locator('.quick-input-widget input.input');
    await input.fill('demo.tasks.jsonl');
    await page.locator('.quick-input-list .monaco-list-row', { hasText: 'demo.tasks.jsonl' }).first().waitFor();
    await input.press('Enter');
    await page.locator('.tabs-container .tab.active', { hasText: 'demo.tasks.jsonl' }).waitFor();
    await runCommand('Routing Headroom (Analysis Only)');
    const { text, html } = await adaptPanel('Routing headroom — ANALYSIS ONLY');
    assert.match(text, /ANALYSIS ONLY: every routing change here is searched with the item's own label/);
    assert.match(text, /14 of 14 items/);
    for (let l = 0; l < config.num_hidden_layers; l++) assert.match(html, new RegExp(`aria-label="Layer ${l}: fixes \\d+ of \\d+ wrong items`), `bars of layer ${l}`);
    assert.ok(html.includes('share of items (%)') && html.includes('aria-label="Wrong items fixed by a routing change"'));
    // The bars take keyboard focus (Tab moves through them inside the panel).
    const frame = page.frameLocator('iframe.webview').last().frameLocator('#active-frame');
    await frame.locator('g.bars').first().focus();
    assert.equal(await frame.locator('g.bars:focus').count(), 1);
    await shot('headroom');
  });

  await step(t, 'kill the engine process: a clear message, and the next action restarts it', async () => {
    await clearNotifications();
    const rows = await treeRows('Model');
    const pid = Number(/pid (\d+)/.exec(rows.find((r) => r.startsWith('Engine process'))!)![1]);
    process.kill(pid, 'SIGKILL');
    await waitForNotification(/engine process exited unexpectedly \(signal SIGKILL\)/);
    await page.waitForTimeout(500);
    await shot('engine-killed');
    await clearNotifications();
    await showPromptsEditor();
    await page.locator('.monaco-editor .codelens-decoration a', { hasText: 'Inspect routing' }).first().click();
    await waitForRuns(5);
    const after = await treeRows('Model');
    const newPid = Number(/pid (\d+)/.exec(after.find((r) => r.startsWith('Engine process'))!)?.[1]);
    assert.ok(newPid && newPid !== pid, `engine restarted: ${JSON.stringify(after)}`);
    await shot('engine-recovered');
  });
});
