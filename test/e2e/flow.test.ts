// End to end in a real VS Code (code-server + Debian chromium, as test/e2e/stats.test.ts, in its own window): the
// statistics panel's routing-flow picture of a 48-layer model (a random OLMoE-shaped checkpoint, 32 experts, top-4,
// with the demo model's tokenizer, staged as the extension's demo model) over part of the demo task suite. The
// picture must stay readable: columns at least the minimum gap apart, every k-th layer numbered, experts named at the
// ends only; screenshots in the dark and light themes (test/out/e2e/flow-*.png) are for a person to look at.
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { FrameLocator, Page } from 'playwright-core';
import { ROOT } from '../helpers/cli';
import { writeRandomOlmoe } from '../helpers/random-model';
import { DEMO_MODEL, openWorkbench, stepRunner, STEP_MS, Workbench, type WorkbenchSession } from './workbench';
import { FLOW_PICTURE } from '../../webview/src/stats/model';

const LAYERS = 48;
const PROMPTS = 120;

let session: WorkbenchSession | undefined;
let page: Page;
let wb: Workbench;

before(async () => {
  const items = fs.readFileSync(path.join(ROOT, 'media', 'tasks', 'eval.jsonl'), 'utf8').trim().split('\n');
  session = await openWorkbench({
    name: 'flow',
    shotPrefix: 'flow-',
    model: (runDir) => {
      const dir = path.join(runDir, 'model-48-layers');
      writeRandomOlmoe(dir, { hidden: 32, layers: LAYERS, experts: 32, topK: 4, vocab: 261 });
      for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(DEMO_MODEL, f), path.join(dir, f));
      return dir;
    },
    settings: { 'workbench.colorTheme': 'Default Dark Modern', 'git.enabled': false },
    // Every other item: all skills, a quick run.
    workspaceFiles: { 'tasks.jsonl': `${items.filter((_, i) => i % 2 === 0).slice(0, PROMPTS).join('\n')}\n` },
  });
  ({ wb, page } = session);
});

after(async () => {
  await session?.close();
});

const step = stepRunner((name) => wb.shot(name));

test('The routing flow of a 48-layer model in the statistics panel: readable, with every k-th layer numbered', async (t) => {
  let frame: FrameLocator;

  await step(t, 'open the 48-layer model, then Routing Statistics over a Prompt Set… on the open tasks.jsonl', async () => {
    await wb.runCommand('Open Demo Model');
    await wb.openFile('tasks.jsonl');
    await wb.runCommand('Routing Statistics over a Prompt Set…');
    frame = await wb.webview('body[data-state="done"]', STEP_MS * 2);
    assert.equal(Number(await frame.locator('#status').getAttribute('data-prompts')), PROMPTS);
    // Give the panel the whole editor area (its page reloads when shown again: wait for the statistics).
    await wb.runCommand('View: Single Column Editor Layout', '');
    await page.locator('.tabs-container .tab', { hasText: 'Routing Statistics' }).first().click();
    frame = await wb.webview('body[data-state="done"]');
  });

  await step(t, 'the flow picture: 48 columns at least the minimum gap apart, numbers that do not collide, experts named at the ends', async () => {
    const picture = frame.locator('#flow-picture');
    await picture.scrollIntoViewIfNeeded();
    const attrs = await picture.evaluate((c) => {
      const data = (name: string): string => c.getAttribute(`data-${name}`) ?? '';
      return { layers: data('layers'), ribbons: data('ribbons'), layerStep: data('layer-step'), expertLabels: data('expert-labels'), columnGap: data('column-gap'), width: c.getBoundingClientRect().width, host: c.parentElement!.clientWidth };
    });
    assert.equal(Number(attrs.layers), LAYERS);
    assert.ok(Number(attrs.ribbons) > 0);
    assert.ok(Number(attrs.columnGap) >= FLOW_PICTURE.minColumnGap, `columns ${attrs.columnGap} px apart`);
    assert.ok(Number(attrs.layerStep) >= 2, `every ${attrs.layerStep} layer numbered at ${attrs.columnGap} px`);
    assert.equal(attrs.expertLabels, 'ends');
    assert.ok(attrs.width >= attrs.host, 'the picture fills the panel (and scrolls when wider)');
    // Hover a ribbon in the middle: its figures in the tooltip.
    const box = (await picture.boundingBox())!;
    await picture.hover({ position: { x: box.width / 2, y: box.height * 0.4 } });
    await wb.shot('48-layers-dark');
    await wb.setTheme('light', [frame]);
    await picture.scrollIntoViewIfNeeded();
    await wb.shot('48-layers-light');
    await wb.setTheme('dark', [frame]);
  });
});
