// Visual check of the routing panel in headless Debian chromium (playwright-core; never downloads a browser).
// Records real runs with the engine (the CLI on an OLMoE-shaped random checkpoint: 16 MoE layers × 64 experts,
// top-8 — or on --model DIR), feeds them to the built webview (dist/webview) through a fake acquireVsCodeApi, and
// writes screenshots for the light, dark and high-contrast variable sets to test/out/webview/.
//   node tools/build.mjs && node test/webview/screenshots.mjs [--model DIR] [--stress]
// --stress also opens the STRESS TEST page (synthetic 4,096 tokens × 48 layers × 128 experts, used only to measure
// frame times) and prints them.
import * as esbuild from 'esbuild';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const out = process.env.ROUTESCOPE_SHOTS ?? join(root, 'test', 'out', 'webview');
const work = join(out, 'work');
const argv = process.argv.slice(2);
const modelArg = argv.includes('--model') ? argv[argv.indexOf('--model') + 1] : undefined;
const chromium = process.env.CHROMIUM ?? '/usr/bin/chromium';
if (!existsSync(chromium)) {
  console.error(`routescope: ${chromium} missing: apt-get install -y chromium`);
  process.exit(1);
}
if (!existsSync(join(root, 'dist', 'webview', 'routing.js'))) {
  console.error('routescope: dist/webview/routing.js missing: node tools/build.mjs');
  process.exit(1);
}
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });

// Helpers written in TypeScript, bundled for this script.
await esbuild.build({
  entryPoints: { html: 'extension/src/views/routingHtml.ts', model: 'test/helpers/random-model.ts', tokenizer: 'extension/src/checkpoint/tokenizer.ts' },
  outdir: join(work, 'lib'),
  bundle: true, platform: 'node', format: 'esm', outExtension: { '.js': '.mjs' }, absWorkingDir: root, logLevel: 'warning',
});
const { routingPanelHtml } = await import(pathToFileURL(join(work, 'lib', 'html.mjs')).href);

// ---- record real runs ----------------------------------------------------------------------------------------------
let modelDir = modelArg;
if (!modelDir) {
  const { writeRandomOlmoe } = await import(pathToFileURL(join(work, 'lib', 'model.mjs')).href);
  modelDir = join(work, 'model');
  writeRandomOlmoe(modelDir, { hidden: 64, layers: 16, experts: 64, topK: 8, vocab: 512 });
}
const info = JSON.parse(execFileSync(process.execPath, [join(root, 'bin', 'routescope.js'), 'info', '--model', modelDir, '--json'], { encoding: 'utf8' }));
let seed = 7;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
const tokens = Array.from({ length: 96 }, () => 3 + Math.floor(rand() * (info.vocab_size - 3)));

function inspect(patch) {
  const args = [join(root, 'bin', 'routescope.js'), 'inspect', '--model', modelDir, '--tokens', tokens.join(','), '--json', '--logits', 'last'];
  if (patch) {
    const file = join(work, 'patch.json');
    writeFileSync(file, JSON.stringify(patch));
    args.push('--patch', file);
  }
  const started = Date.now();
  const result = JSON.parse(execFileSync(process.execPath, args, { encoding: 'utf8', maxBuffer: 1 << 28 }));
  return { result, started, finished: Date.now() };
}

function toMessages(id, label, recorded, patch, role) {
  const { result, started, finished } = recorded;
  const E = info.num_experts;
  const k = info.top_k;
  const logits = result.logits[result.logits.length - 1];
  const max = Math.max(...logits);
  const exps = logits.map((v) => Math.exp(v - max));
  const z = exps.reduce((a, b) => a + b, 0);
  const nextTokens = exps.map((p, token) => ({ token, text: '', prob: p / z })).sort((a, b) => b.prob - a.prob).slice(0, 10);
  const run = {
    id, kind: 'inspect', label, prompt: `tokens ${tokens.slice(0, 6).join(',')},…`,
    model: { dir: modelDir, name: modelDir.split('/').at(-1), modelType: info.model_type, numLayers: info.num_layers, numExperts: E, topK: k, moeLayers: info.moe_layers, vocabSize: info.vocab_size },
    patch, tokens: result.tokens, tokenText: result.tokens.map(() => ''), promptTokens: result.tokens.length, startedAt: started,
  };
  const messages = [{ method: 'run/init', params: { role, run } }];
  for (const layer of result.layers) {
    messages.push({
      method: 'run/layer',
      params: { runId: id, span: { layer: layer.layer, start: 0, count: layer.experts.length, numExperts: E, topK: k, routerLogits: layer.router_logits.flat(), experts: layer.experts.flat(), weights: layer.weights.flat() } },
    });
  }
  messages.push({ method: 'run/finished', params: { runId: id, finishedAt: finished, nextTokens } });
  return { messages, result };
}

const base = toMessages(1, 'Inspect: 96 tokens', inspect(undefined), undefined, 'primary');
// Mask the busiest top-1 expert of a middle layer, and bias another one up, as a user would from the panel.
const mid = base.result.layers[Math.floor(base.result.layers.length / 2)];
const counts = new Map();
for (const row of mid.experts) counts.set(row[0], (counts.get(row[0]) ?? 0) + 1);
const busiest = [...counts.entries()].sort((a, b) => b[1] - a[1])[0][0];
const patch = { layers: { [mid.layer]: { mask: [busiest], bias: { [(busiest + 1) % info.num_experts]: 2 } } } };
const patched = toMessages(2, 'Inspect: 96 tokens (patched)', inspect(patch), patch, 'primary');
const compareMessages = base.messages.map((m) => (m.method === 'run/init' ? { ...m, params: { ...m.params, role: 'compare' } } : m));

// A generation on the demo model, with its text: the prompt, then the generated tokens streamed after run/init.
function generateScenario() {
  const demo = join(root, 'media', 'demo-model');
  const prompt = 'Q: How much is 82 + 82?\nA:';
  const cli = (args) => JSON.parse(execFileSync(process.execPath, [join(root, 'bin', 'routescope.js'), ...args, '--model', demo, '--json'], { encoding: 'utf8', maxBuffer: 1 << 28 }));
  const started = Date.now();
  const gen = cli(['generate', '--prompt', prompt, '--max-new-tokens', '12']);
  const all = [...gen.prompt_tokens, ...gen.tokens];
  // The routing of every fed position (the last generated token is never fed back): one inspect of them.
  const routed = cli(['inspect', '--tokens', all.slice(0, -1).join(','), '--logits', 'none']);
  const demoInfo = cli(['info']);
  const text = (id) => tokenizer.tokenText(id);
  const run = {
    id: 3, kind: 'generate', label: `Generate: ${prompt.replace(/\n/g, ' ')}`, prompt,
    model: { dir: demo, name: 'demo-model', modelType: demoInfo.model_type, numLayers: demoInfo.num_layers, numExperts: demoInfo.num_experts, topK: demoInfo.top_k, moeLayers: demoInfo.moe_layers, vocabSize: demoInfo.vocab_size },
    patch: undefined, tokens: [...gen.prompt_tokens], tokenText: gen.prompt_tokens.map(text), promptTokens: gen.prompt_tokens.length, startedAt: started,
  };
  const messages = [{ method: 'run/init', params: { role: 'primary', run } }];
  messages.push({ method: 'run/tokens', params: { runId: 3, from: gen.prompt_tokens.length, tokens: gen.tokens, tokenText: gen.tokens.map(text) } });
  for (const layer of routed.layers) {
    messages.push({ method: 'run/layer', params: { runId: 3, span: { layer: layer.layer, start: 0, count: layer.experts.length, numExperts: demoInfo.num_experts, topK: demoInfo.top_k, routerLogits: layer.router_logits.flat(), experts: layer.experts.flat(), weights: layer.weights.flat() } } });
  }
  messages.push({ method: 'run/finished', params: { runId: 3, finishedAt: Date.now(), generatedText: gen.text } });
  return { messages, generatedText: gen.text };
}
const { loadTokenizer } = await import(pathToFileURL(join(work, 'lib', 'tokenizer.mjs')).href);
const tokenizer = loadTokenizer(join(root, 'media', 'demo-model'));
const generated = generateScenario();

const scenarios = {
  generate: generated.messages,
  single: [...base.messages, { method: 'patch/didChange', params: { patch } }],
  compare: [...patched.messages, ...compareMessages, { method: 'patch/didChange', params: { patch } }],
  unavailable: [{ method: 'run/unavailable', params: { label: 'Inspect: What is 47 + 38?', prompt: 'Q: What is 47 + 38?\nA:', reason: 'The run is no longer available: this panel showed a run from before the window reloaded, and runs are kept in memory only.' } }],
};

function page(name, scenario) {
  const dataFile = join(work, `${name}.data.js`);
  writeFileSync(dataFile, `window.ROUTESCOPE_SCENARIO = ${JSON.stringify(scenario)};`);
  const html = routingPanelHtml({
    cspSource: 'file:', nonce: 'harness', title: `harness: ${name}`,
    scriptUri: pathToFileURL(join(root, 'dist', 'webview', 'routing.js')).href,
    styleUri: pathToFileURL(join(root, 'dist', 'webview', 'routing-style.css')).href,
    preludeScripts: [pathToFileURL(join(root, 'test', 'webview', 'themes.js')).href, pathToFileURL(dataFile).href, pathToFileURL(join(root, 'test', 'webview', 'fake-vscode.js')).href],
  });
  const file = join(work, `${name}.html`);
  writeFileSync(file, html);
  return pathToFileURL(file).href;
}

// ---- browser -------------------------------------------------------------------------------------------------------
const { chromium: pw } = await import('playwright-core');
const context = await pw.launchPersistentContext(join(work, 'profile'), {
  executablePath: chromium,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--allow-file-access-from-files'],
  viewport: { width: 1280, height: 1000 },
});
const errors = [];
const shots = [];
async function open(name, scenario, theme) {
  const p = await context.newPage();
  p.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') errors.push(`${name}/${theme}: ${m.text()}`); });
  p.on('pageerror', (e) => errors.push(`${name}/${theme}: ${e.message}`));
  await p.goto(`${page(name, scenario)}?theme=${theme}`);
  await p.waitForFunction(() => window.__posted.some((m) => m.method === 'webview/ready'));
  await p.waitForTimeout(400);
  return p;
}
async function shot(p, file) {
  const path = join(out, file);
  await p.screenshot({ path, fullPage: true });
  shots.push(path);
}

for (const theme of ['dark', 'light', 'high-contrast']) {
  const p = await open('single', scenarios.single, theme);
  const grid = p.locator('#routing-grid');
  const box = await grid.boundingBox();
  // Pin a cell, then hover another: tooltip + pinned panel in one picture.
  await p.mouse.click(box.x + 52 + 30 * (box.width - 52) / 96, box.y + 70 + 40);
  await p.mouse.move(box.x + 52 + 60 * (box.width - 52) / 96, box.y + 70 + 120);
  await p.waitForTimeout(300);
  await shot(p, `single-${theme}.png`);
  const attrs = await grid.evaluate((c) => ({ layers: c.dataset.layers, tokens: c.dataset.tokens, pinned: c.dataset.pinned }));
  console.log(`single/${theme}: data-layers=${attrs.layers} data-tokens=${attrs.tokens} data-pinned=${attrs.pinned}`);
  await p.selectOption('#metric', 'entropy');
  await p.mouse.move(0, 0);
  await p.waitForTimeout(200);
  await p.locator('#grid-host').screenshot({ path: join(out, `entropy-${theme}.png`) });
  shots.push(join(out, `entropy-${theme}.png`));
  await p.close();

  const c = await open('compare', scenarios.compare, theme);
  await c.waitForTimeout(300);
  await shot(c, `compare-${theme}.png`);
  const changed = await c.locator('#routing-grid').getAttribute('data-changed-cells');
  console.log(`compare/${theme}: data-changed-cells=${changed}`);
  await c.close();
}
for (const theme of ['dark', 'light', 'high-contrast']) {
  const g = await open('generate', scenarios.generate, theme);
  const shown = await g.locator('#run-text').getAttribute('data-generated-text');
  if (shown !== generated.generatedText) errors.push(`generate/${theme}: the text view shows ${JSON.stringify(shown)}, the CLI generated ${JSON.stringify(generated.generatedText)}`);
  await g.locator('#run-text .tok.gen').nth(1).hover();
  await g.waitForTimeout(200);
  await shot(g, `generate-${theme}.png`);
  // The load heatmap with the value under the pointer.
  const heat = g.locator('#load-heatmap');
  await heat.scrollIntoViewIfNeeded();
  const hb = await heat.boundingBox();
  await g.mouse.move(hb.x + hb.width * 0.4, hb.y + hb.height * 0.5);
  await g.waitForTimeout(200);
  await g.screenshot({ path: join(out, `load-heatmap-${theme}.png`) });
  shots.push(join(out, `load-heatmap-${theme}.png`));
  console.log(`generate/${theme}: generated text ${JSON.stringify(shown)}`);
  await g.close();
}
const u = await open('unavailable', scenarios.unavailable, 'dark');
await shot(u, 'unavailable-dark.png');
await u.close();

if (argv.includes('--stress')) {
  const p = await context.newPage();
  p.on('pageerror', (e) => errors.push(`stress: ${e.message}`));
  const stressHtml = routingPanelHtml({
    cspSource: 'file:', nonce: 'harness', title: 'STRESS TEST (synthetic data)',
    scriptUri: pathToFileURL(join(root, 'dist', 'webview', 'routing.js')).href,
    styleUri: pathToFileURL(join(root, 'dist', 'webview', 'routing-style.css')).href,
    preludeScripts: [pathToFileURL(join(root, 'test', 'webview', 'themes.js')).href, pathToFileURL(join(root, 'test', 'webview', 'stress.js')).href, pathToFileURL(join(root, 'test', 'webview', 'fake-vscode.js')).href],
  });
  writeFileSync(join(work, 'stress.html'), stressHtml);
  await p.goto(`${pathToFileURL(join(work, 'stress.html')).href}?theme=dark`);
  await p.waitForFunction(() => window.__posted.some((m) => m.method === 'webview/ready'), null, { timeout: 120000 });
  await p.waitForFunction(() => document.getElementById('routing-grid')?.dataset.layersArrived === '48', null, { timeout: 120000 });
  await p.waitForTimeout(500);
  const result = await p.evaluate(async () => {
    const grid = window.routescopeDebug.grid;
    const frame = () => new Promise((r) => requestAnimationFrame(() => r(performance.now())));
    const measure = async (label, step, n = 120) => {
      grid.frameTimes.length = 0;
      const intervals = [];
      let last = await frame();
      for (let i = 0; i < n; i++) {
        step(i);
        const now = await frame();
        intervals.push(now - last);
        last = now;
      }
      const draw = [...grid.frameTimes].sort((a, b) => a - b);
      const iv = intervals.sort((a, b) => a - b);
      const q = (a, f) => a[Math.min(a.length - 1, Math.floor(a.length * f))];
      return { label, frames: draw.length, drawMedianMs: q(draw, 0.5), drawP95Ms: q(draw, 0.95), drawMaxMs: draw.at(-1), frameIntervalMedianMs: q(iv, 0.5), frameIntervalP95Ms: q(iv, 0.95), block: grid.block };
    };
    const s = grid.scroller;
    const rect = grid.canvas.getBoundingClientRect();
    const out = [];
    grid.fit();
    out.push(await measure('fit (4,096 tokens in view), hover sweep', (i) => {
      grid.canvas.dispatchEvent(new MouseEvent('mousemove', { bubbles: true, clientX: rect.left + 60 + (i * 9) % (rect.width - 70), clientY: rect.top + 80 + (i * 7) % (rect.height - 90) }));
    }));
    grid.zoomBy(4);
    out.push(await measure('zoom ×4, pan', (i) => { s.scrollLeft = (i * 97) % (s.scrollWidth - s.clientWidth); }));
    grid.zoom = 14; grid.layout();
    out.push(await measure('single tokens (14 px), pan', (i) => { s.scrollLeft = (i * 211) % (s.scrollWidth - s.clientWidth); }));
    out.push(await measure('zoom in/out cycle', (i) => grid.zoomBy(i % 20 < 10 ? 1.3 : 1 / 1.3)));
    return out;
  });
  await p.screenshot({ path: join(out, 'stress-test-synthetic.png') });
  console.log('STRESS TEST (synthetic 4096 tokens x 48 layers x 128 experts), frame times:');
  for (const r of result) console.log(JSON.stringify(r));
  writeFileSync(join(out, 'stress-frame-times.json'), JSON.stringify(result, null, 2));
  await p.close();
}

await context.close();
for (const s of shots) console.log(`screenshot: ${s}`);
if (errors.length) {
  console.error(`page errors:\n${errors.join('\n')}`);
  process.exitCode = 1;
}
