// End to end in a real VS Code: code-server (installed into the cache by tools/code-server.mjs) driven through
// Debian chromium with playwright-core, as in shared/spec/vscode-testing.md. The extension is the built tree
// (dist/, build/Release, media/) staged as an installed extension (workbench.ts: openWorkbench). Screenshots of every
// panel go to test/out/e2e/.
//   ROUTESCOPE_E2E_MODEL=DIR   stage DIR as the extension's demo model (default media/demo-model)
// Over 400 lines on purpose: one test walks the product in one window, each step building on the last (the model
// opened, the runs made, the patch set), so the steps stay together (page helpers: workbench.ts).
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { FrameLocator, Page } from 'playwright-core';
import { ROOT, runCli, runCliJson } from '../helpers/cli';
import { DEMO_MODEL, openWorkbench, stepRunner, STEP_MS, UI_MS, Workbench, type WorkbenchSession } from './workbench';
import { decodeTensor, readSafetensorsRaw } from '../helpers/safetensors';
import { loadTokenizer } from '../../extension/src/checkpoint/tokenizer';

let session: WorkbenchSession | undefined;
let page: Page;
let wb: Workbench;
let workspace: string;
let referenceDir: string;

const shot = (name: string): Promise<void> => wb.shot(name);
const runCommand = (title: string): Promise<void> => wb.runCommand(title);
const view = (name: string) => wb.view(name);
const treeRows = (name: string): Promise<string[]> => wb.treeRows(name);
const waitForNotification = (pattern: RegExp, timeout?: number): Promise<string> => wb.waitForNotification(pattern, timeout);
const clearNotifications = (): Promise<void> => wb.clearNotifications();
const waitForRuns = (count: number): Promise<string[]> => wb.waitForRuns(count);
const showPromptsEditor = (): Promise<void> => wb.showEditor('demo.prompts.md');
/** The routing panel's page. */
const routingFrame = (): Promise<FrameLocator> => wb.webview('#routing-grid');

/** No progress notification outlives its run (a stale Cancel once stayed on screen). */
async function assertProgressClosed(): Promise<void> {
  const open = await wb.progressClosed();
  assert.deepEqual(open, [], 'progress notifications still open after the run finished');
}

/** The text and HTML of the adaptation panel once it shows a finished result whose heading starts with `title`. */
async function adaptPanel(title: string): Promise<{ text: string; html: string; frame: FrameLocator }> {
  return wb.until(`the adaptation panel showing "${title}"`, async () => {
    const frame = await wb.webview('main', 2_000);
    const body = frame.locator('body');
    const text = await body.innerText({ timeout: 2_000 });
    return text.startsWith(title) && !/Running…/.test(text) ? { text, html: await body.innerHTML({ timeout: 2_000 }), frame } : undefined;
  });
}

interface GridState {
  layers: number;
  tokens: number;
  mode: string;
  changedCells: number;
}

/** The routing grid's data attributes (documented in webview/README.md), once the shown run has finished. */
async function gridState(expect: { mode: 'single' | 'compare' }): Promise<GridState> {
  return wb.until(`a finished ${expect.mode} run in the routing grid`, async () => {
    const grid = (await routingFrame()).locator('#routing-grid');
    const last = await grid.evaluate((el) => Object.fromEntries(['data-layers', 'data-tokens', 'data-streaming', 'data-mode', 'data-changed-cells'].map((a) => [a, el.getAttribute(a)])), undefined, { timeout: 5_000 });
    // In compare mode the diff is counted after both runs have arrived.
    const diffReady = expect.mode === 'single' || (last['data-changed-cells'] ?? '') !== '';
    if (last['data-streaming'] !== 'false' || last['data-mode'] !== expect.mode || !diffReady) return undefined;
    return { layers: Number(last['data-layers']), tokens: Number(last['data-tokens']), mode: String(last['data-mode']), changedCells: Number(last['data-changed-cells'] || 0) };
  });
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
  // No routescope.c3po.reference: the first Re-mix asks for the set, as it does for a new user.
  session = await openWorkbench({
    name: 'vscode',
    settings: { 'workbench.colorTheme': 'Default Dark Modern', 'editor.codeLens': true, 'git.enabled': false, 'git.openRepositoryInParentFolders': 'never' },
    workspaceFiles: {
      'demo.prompts.md': fs.readFileSync(path.join(ROOT, 'media', 'demo.prompts.md'), 'utf8'),
      // Labelled items for the routing headroom: two of each skill of the demo model's evaluation split.
      'demo.tasks.jsonl': headroomItems(),
    },
  });
  ({ wb, page, workspace } = session);
  // A C3PO reference set for the demo model, built by the CLI as a user would, for the Re-mix lens.
  referenceDir = path.join(session.runDir, 'reference');
  const built = runCli(['reference', 'build', '--model', DEMO_MODEL, '--data', path.join(ROOT, 'media', 'tasks', 'reference.jsonl'), '--limit', '140', '--out', referenceDir, '--threads', '2', '--json']);
  assert.equal(built.code, 0, built.stderr);
});

after(async () => {
  await session?.close();
});

/** A sub-step; on failure a screenshot is kept and the later steps are skipped (they depend on this one). */
const step = stepRunner((name) => wb.shot(name));

test('Routescope in VS Code: open the demo model, inspect from the palette and a code lens, mask, diff, export, survive an engine crash', async (t) => {
  const config = JSON.parse(fs.readFileSync(path.join(DEMO_MODEL, 'config.json'), 'utf8')) as { num_hidden_layers: number };
  const tokenizer = loadTokenizer(DEMO_MODEL);
  const prompts = fs.readFileSync(path.join(workspace, 'demo.prompts.md'), 'utf8').split('\n');

  let moeLayers = 0;
  await step(t, 'open the demo model from the palette; the Model view describes it', async () => {
    // The view container appears once the extension host has read the extension (slow on a loaded machine).
    await page.locator('.activitybar [aria-label^="Routescope"]').first().click({ timeout: STEP_MS });
    await view('Model').waitFor({ state: 'visible' });
    await shot('side-panel-empty');
    await runCommand('Open Demo Model');
    const rows = await wb.until('the engine process in the Model view', async () => {
      const r = await treeRows('Model');
      return r.some((x) => /^Engine process/.test(x) && /pid \d+/.test(x)) ? r : undefined;
    });
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
    await wb.openFile('demo.prompts.md');
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
    // The panel opens beside the prompt file: both are visible, and the code lenses with them.
    assert.equal(await wb.editorGroups(), 2, 'the routing panel opens in a second editor group');
    await page.locator('.monaco-editor .codelens-decoration a', { hasText: 'Inspect routing' }).first().waitFor({ state: 'visible' });
    // The expert load: axes with layer and expert numbers, a colour bar with its unit, the value under the pointer.
    const frame = await routingFrame();
    const heatmap = frame.locator('#load-heatmap');
    const axes = await Promise.all(['data-rows', 'data-cols', 'data-row-title', 'data-col-title', 'data-unit'].map((a) => heatmap.getAttribute(a)));
    assert.deepEqual(axes, [String(moeLayers), '8', 'MoE layer', 'expert', 'activation rate (% of tokens)']);
    await heatmap.scrollIntoViewIfNeeded();
    const box = (await heatmap.boundingBox())!;
    await heatmap.hover({ position: { x: box.width * 0.45, y: box.height * 0.5 } });
    const tip = await frame.locator('#tooltip').innerText();
    assert.match(tip, /^layer \d+ · expert \d+: activation rate \d+\.\d% \(\d+ of \d+ tokens\)/);
    await assertProgressClosed();
    await shot('routing-panel-palette');
  });

  await step(t, 'Inspect routing from a code lens', async () => {
    await showPromptsEditor();
    const lens = page.locator('.monaco-editor .codelens-decoration a', { hasText: 'Inspect routing' }).first();
    await lens.waitFor({ state: 'visible' });
    await lens.click();
    const rows = await waitForRuns(2);
    assert.match(rows[0], /^Inspect: /);
    assert.equal(await wb.editorGroups(), 2, 'the panel is reused in its group');
    await assertProgressClosed();
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
    await mask.click();
    await view('Layers').locator('.monaco-list-row', { hasText: /masked/ }).first().waitFor();
    await shot('layers-view-masked');
    await clearNotifications();
    await runCommand('Re-run with Patch');
    const summary = await waitForNotification(/cells route to a different expert set/);
    const changed = Number(/(\d+) of (\d+) cells/.exec(summary)![1]);
    assert.ok(changed > 0, summary);
    // A is the unpatched run (the code lens's, reused), B the re-run with the patch made after it.
    const [, runA, runB] = /run #(\d+) vs #(\d+)/.exec(summary)!.map(Number);
    assert.ok(runA < runB, `A is the earlier, unpatched run: ${summary}`);
    // The panel recounts as run B's layers arrive: wait for it to settle on the host's count.
    const grid = await wb.until('the panel\'s count to settle', async () => {
      const g = await gridState({ mode: 'compare' });
      return g.changedCells === changed ? g : undefined;
    }, UI_MS).catch(() => gridState({ mode: 'compare' }));
    assert.equal(grid.changedCells, changed, 'the panel\'s diff shows the changed cells the host counted');
    await waitForRuns(3);
    const rows = await treeRows('Runs');
    assert.match(rows[0], /patched/);
    // What changed: per layer, and the next tokens that moved (or that none did) — never rows of 0.0 %.
    const frame = await routingFrame();
    const layerRows = await frame.locator('#diff-layers tbody tr').allInnerTexts();
    assert.equal(layerRows.length, moeLayers, JSON.stringify(layerRows));
    assert.ok(layerRows.some((r) => /e\d+ → e\d+ ×\d+/.test(r)), `a top-1 replacement is listed: ${JSON.stringify(layerRows)}`);
    // The signs: B has the busiest expert masked, so in its layer routing moves away from it (A → B), never to it.
    assert.doesNotMatch(layerRows[0], new RegExp(`→ e${busiest} ×`), `the masked expert is never B's choice: ${layerRows[0]}`);
    assert.doesNotMatch(await frame.locator('#run-label').innerText(), /\(patched\)/, 'A is the unpatched run');
    const moved = await frame.locator('#next-token-changes tbody tr').allInnerTexts();
    if (moved.length === 0) assert.match(await frame.locator('#next-token-unchanged').innerText(), /^No next token moved by 0\.05 percentage points/);
    for (const r of moved) assert.doesNotMatch(r.split('\t').at(-1)!, /^[+−]?0(\.0+)?$/, `a listed change moved: ${r}`);
    await assertProgressClosed();
    await frame.locator('#compare-panel').scrollIntoViewIfNeeded();
    await wb.themedShots('routing-panel-diff', [frame]);
  });

  await step(t, 'export the routing trace and read it back', async () => {
    const target = path.join(workspace, 'trace.safetensors');
    await runCommand('Export Routing Trace…');
    await wb.fillPathDialog(target);
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
    await wb.until('no masked expert in the Layers view', async () => ((await treeRows('Layers')).some((r) => /masked/.test(r)) ? undefined : true), UI_MS).catch(() => undefined);
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
    // The generated text is shown as text: in a notification, and in the panel (the same text the CLI generates).
    const note = await waitForNotification(/generated \d+ tokens?: “/);
    assert.doesNotMatch(note, /\b1 tokens\b/);
    const cli = runCliJson<{ text: string; tokens: number[] }>(['generate', '--model', DEMO_MODEL, '--prompt', firstPrompt.text, '--json']);
    const frame = await routingFrame();
    const text = frame.locator('#run-text');
    assert.equal(await text.getAttribute('data-generated-text'), cli.text);
    assert.equal(Number(await text.getAttribute('data-generated-tokens')), cli.tokens.length);
    assert.equal((await text.locator('.tok.gen').allInnerTexts()).join(''), cli.text, 'the generated tokens read as the generated text');
    assert.ok(note.includes(cli.text.trim().slice(0, 20)), note);
    await assertProgressClosed();
    await text.locator('.tok.gen').first().hover();
    assert.match(await frame.locator('#tooltip').innerText(), /generated[\s\S]*top-1 expert \(weight\): L\d+ e\d+/);
    await wb.themedShots('routing-panel-generate', [frame], async () => {
      await text.locator('.tok.gen').first().hover();
    });
  });

  await step(t, 'Compare Two Prompts takes two multi-line prompts picked from the prompt file', async () => {
    await showPromptsEditor();
    await clearNotifications();
    await runCommand('Compare Two Prompts');
    const input = page.locator('.quick-input-widget input.input');
    await page.locator('.quick-input-list .monaco-list-row', { hasText: 'Pick two prompts from the prompt files' }).first().click();
    for (const title of ['Addition', 'Subtraction']) {
      await input.fill(title);
      // In a multi-select list a click on a row ticks it.
      await page.locator('.quick-input-list .monaco-list-row', { hasText: new RegExp(`^${title}`) }).first().click();
    }
    await input.fill('');
    await page.locator('.quick-input-widget', { hasText: '2 of 2 ticked' }).first().waitFor({ state: 'visible' });
    await input.press('Enter');
    const summary = await waitForNotification(/cells route to a different expert set/);
    assert.match(summary, /^Routescope: run #\d+ vs #\d+/);
    await gridState({ mode: 'compare' });
    const frame = await routingFrame();
    const label = await frame.locator('#run-label').innerText();
    assert.match(label, /82 \+ 82/, `A is the first prompt of the file: ${label}`);
    // Both prompts read as text, A above B, each with its line break.
    assert.match(await frame.locator('#run-text').innerText(), /How much is 82 \+ 82\?\s*\n\s*A:/);
    assert.match(await frame.locator('#run-text-b').innerText(), /Calculate 94 - 16\.\s*\n\s*A:/);
    await assertProgressClosed();
    await shot('compare-two-prompts');
  });

  await step(t, 'Re-mix (C3PO) from a code lens: ω before/after per critical layer, neighbours, routing and answer', async () => {
    await showPromptsEditor();
    await page.locator('.monaco-editor .codelens-decoration a', { hasText: 'Re-mix (C3PO)' }).first().click();
    // No reference set configured: the user types the folder's path; what they type stays what they typed.
    await page.locator('.quick-input-list .monaco-list-row', { hasText: 'Type the folder' }).first().click();
    const input = page.locator('.quick-input-widget input.input');
    await input.waitFor({ state: 'visible' });
    await input.fill(referenceDir);
    await wb.until('the typed path to validate', async () => ((await page.locator('.quick-input-message', { hasText: 'not a reference set' }).count()) === 0 && (await input.inputValue()) === referenceDir ? true : undefined), UI_MS);
    assert.equal(await input.inputValue(), referenceDir, 'the box holds what was typed');
    await input.press('Enter');
    const { text, html } = await adaptPanel('Re-mix (C3PO): ngd');
    assert.equal(await wb.editorGroups(), 2, 'the adaptation panel opens as a tab beside the routing panel, not in a third group');
    const critical = Math.min(5, config.num_hidden_layers); // the last 5 MoE layers, all of them when fewer
    for (let l = config.num_hidden_layers - critical; l < config.num_hidden_layers; l++) assert.ok(html.includes(`aria-label="ω at layer ${l}"`), `ω of layer ${l}`);
    assert.match(text, /Neighbour loss: \d+\.\d+ → \d+\.\d+/);
    assert.ok(html.includes('aria-label="Neighbours"') && html.includes('aria-label="Routing change"'));
    assert.match(text, /Before[\s\S]*After re-mix/);
    assert.match(text, /ω before \(probability\)/, 'the ω bars have their scale');
    await shot('adapt-remix');
  });

  await step(t, 'Re-mix with Browse…: VS Code\'s own open dialog (browser-served here), the set\'s manifest.json picked, the folder saved', async () => {
    // Forget the set the last step saved, so Re-mix asks again.
    const settingsFile = path.join(workspace, '.vscode', 'settings.json');
    const key = 'routescope.c3po.reference';
    const saved = JSON.parse(fs.readFileSync(settingsFile, 'utf8')) as Record<string, unknown>;
    assert.equal(saved[key], referenceDir, 'the typed set was saved to the workspace settings');
    delete saved[key];
    fs.writeFileSync(settingsFile, JSON.stringify(saved, null, 2));
    // Close the last result, so the panel that opens is this Re-mix's.
    const resultTab = page.locator('.tabs-container .tab', { hasText: 'Re-mix (C3PO)' });
    await resultTab.first().hover();
    await resultTab.first().locator('.tab-actions .action-label').first().click();
    await wb.until('the last Re-mix result closed', async () => ((await resultTab.count()) === 0 ? true : undefined), UI_MS);
    await showPromptsEditor();
    const browse = page.locator('.quick-input-list .monaco-list-row', { hasText: 'Browse…' }).first();
    await wb.until('Re-mix to ask for the reference set again', async () => {
      await page.locator('.monaco-editor .codelens-decoration a', { hasText: 'Re-mix (C3PO)' }).first().click();
      return (await browse.isVisible().catch(() => false)) ? true : (await page.keyboard.press('Escape'), undefined);
    }, UI_MS * 2);
    await browse.click();
    // The workbench's own file dialog: a quick input holding a path (no OS dialog, which a browser could not open).
    await wb.fillPathDialog(path.join(referenceDir, 'manifest.json'));
    await adaptPanel('Re-mix (C3PO): ngd');
    await wb.until('the picked set saved to the workspace settings', async () => ((JSON.parse(fs.readFileSync(settingsFile, 'utf8')) as Record<string, unknown>)[key] === referenceDir ? true : undefined), UI_MS);
    await shot('adapt-remix-browse');
  });

  await step(t, 'Generate with rerouting from a code lens: rounds, δ per layer after each round, both texts', async () => {
    await showPromptsEditor();
    await page.locator('.monaco-editor .codelens-decoration a', { hasText: 'Generate with rerouting' }).first().click();
    const { text, html, frame } = await adaptPanel('Generate with rerouting');
    assert.ok(html.includes('aria-label="Rerouting rounds"') && html.includes('aria-label="Delta per layer after each round"'));
    // At half width the δ table scrolls inside the panel rather than running past its edge.
    const fits = await frame.locator('table[aria-label="Delta per layer after each round"]').evaluate((t) => t.getBoundingClientRect().right <= t.ownerDocument.documentElement.clientWidth);
    assert.ok(fits, 'the δ table stays inside the panel');
    assert.match(text, /Without rerouting[\s\S]*With rerouting/);
    await shot('adapt-reroute');
  });

  await step(t, 'Routing Headroom (Analysis Only) on a task file: per-layer bars with axes, the items it fixes, marked analysis only', async () => {
    await wb.openFile('demo.tasks.jsonl');
    await runCommand('Routing Headroom (Analysis Only)');
    const { text, html, frame } = await adaptPanel('Routing headroom — ANALYSIS ONLY');
    assert.equal(await wb.editorGroups(), 2, 'the headroom panel opens as a tab among the result panels');
    assert.match(text, /ANALYSIS ONLY: every routing change here is searched with the item's own label/);
    assert.match(text, /14 of 14 items/);
    for (let l = 0; l < config.num_hidden_layers; l++) assert.match(html, new RegExp(`aria-label="Layer ${l}: fixes \\d+ of \\d+ wrong items`), `bars of layer ${l}`);
    assert.ok(html.includes('share of items (%)') && html.includes('aria-label="Wrong items fixed by a routing change"'));
    // The bars take keyboard focus (Tab moves through them inside the panel).
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
    await shot('engine-killed');
    await clearNotifications();
    await showPromptsEditor();
    await page.locator('.monaco-editor .codelens-decoration a', { hasText: 'Inspect routing' }).first().click();
    await waitForRuns(7);
    const after = await treeRows('Model');
    const newPid = Number(/pid (\d+)/.exec(after.find((r) => r.startsWith('Engine process'))!)?.[1]);
    assert.ok(newPid && newPid !== pid, `engine restarted: ${JSON.stringify(after)}`);
    await shot('engine-recovered');
  });
});
