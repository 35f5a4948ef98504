// Helpers for the end-to-end tests in code-server (not a test file): a suite's session (the extension staged as
// installed, code-server and chromium started on its own profile, the steps of one walk through the product), and
// page helpers: the command palette, tree views, notifications, the webviews inside their two nested iframes, the
// Routescope panels' data attributes, colour themes (switched through the user settings file, waited for on the page)
// and screenshots. Every wait is for a condition on the page, never a fixed delay: the machine running these may be
// heavily loaded.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { BrowserContext, FrameLocator, Locator, Page } from 'playwright-core';
import { ROOT } from '../helpers/cli';

export const STEP_MS = 120_000;
export const UI_MS = 20_000;
/** Screenshots of every panel the suites open. */
export const OUT = path.join(ROOT, 'test', 'out', 'e2e');
/** ROUTESCOPE_E2E_MODEL=DIR stages DIR as the extension's demo model (default media/demo-model). */
export const DEMO_MODEL = path.resolve(process.env.ROUTESCOPE_E2E_MODEL || path.join(ROOT, 'media', 'demo-model'));

export type ThemeName = 'dark' | 'light' | 'high-contrast';
/** VS Code's built-in themes and the class each puts on the workbench and on a webview's body. */
const THEMES: Record<ThemeName, { label: string; workbench: string; webview: string }> = {
  dark: { label: 'Dark Modern', workbench: 'vs-dark', webview: 'vscode-dark' },
  light: { label: 'Light Modern', workbench: 'vs', webview: 'vscode-light' },
  'high-contrast': { label: 'Dark High Contrast', workbench: 'hc-black', webview: 'vscode-high-contrast' },
};
export const THEME_NAMES = Object.keys(THEMES) as ThemeName[];

export class Workbench {
  readonly shots: string[] = [];

  constructor(
    readonly page: Page,
    private readonly outDir: string,
    private readonly settingsFile: string,
    /** Put before each screenshot's number, so suites sharing the folder keep apart. */
    private readonly shotPrefix = '',
  ) {}

  /** Polls `probe` until it returns a value (not undefined) or the time is up; then throws `what` with the last probe. */
  async until<T>(what: string, probe: () => Promise<T | undefined>, timeout = STEP_MS): Promise<T> {
    const deadline = Date.now() + timeout;
    let last: unknown;
    while (Date.now() < deadline) {
      try {
        const value = await probe();
        if (value !== undefined) return value;
      } catch (error) {
        last = error;
      }
      await this.page.waitForTimeout(200);
    }
    throw new Error(`timed out waiting for ${what}${last ? ` (${(last as Error).message})` : ''}`);
  }

  async shot(name: string): Promise<void> {
    const file = path.join(this.outDir, `${this.shotPrefix}${String(this.shots.length + 1).padStart(2, '0')}-${name}.png`);
    await this.page.screenshot({ path: file });
    this.shots.push(file);
  }

  async runCommand(title: string, prefix = 'Routescope: '): Promise<void> {
    const page = this.page;
    for (let attempt = 0; attempt < 8; attempt++) {
      await page.keyboard.press('Escape');
      await page.keyboard.press('F1');
      const input = page.locator('.quick-input-widget input.input');
      await input.waitFor({ state: 'visible', timeout: 10_000 });
      await input.fill(`>${prefix}${title}`);
      const row = page.locator('.quick-input-list .monaco-list-row', { hasText: `${prefix}${title}` }).first();
      try {
        await row.waitFor({ state: 'visible', timeout: 3_000 });
        await input.press('Enter');
        return;
      } catch {
        // The palette snapshots commands when opened: the extension may not have activated yet.
        await page.keyboard.press('Escape');
      }
    }
    throw new Error(`command "${prefix}${title}" never appeared in the palette`);
  }

  /** Types `target` into VS Code's own file dialog (save or open: a quick input holding a path) and accepts it. The
   *  dialog fills in its default path after it opens; typing before that gets the two mixed, so wait for it, then
   *  type until it sticks. */
  async fillPathDialog(target: string): Promise<void> {
    const input = this.page.locator('.quick-input-widget input.input');
    await input.waitFor({ state: 'visible' });
    for (let deadline = Date.now() + UI_MS; (await input.inputValue()) === '' && Date.now() < deadline; ) await this.page.waitForTimeout(100);
    for (let attempt = 0; attempt < 5; attempt++) {
      await input.fill(target);
      await this.page.waitForTimeout(300);
      if ((await input.inputValue()) === target) break;
    }
    const typed = await input.inputValue();
    if (typed !== target) throw new Error(`the file dialog holds ${typed}, not ${target}`);
    await input.press('Enter');
  }

  view(name: string): Locator {
    return this.page.locator(`.pane:has(.pane-header[aria-label^="${name}"])`);
  }

  async treeRows(name: string): Promise<string[]> {
    return this.view(name).locator('.monaco-list-row').allInnerTexts();
  }

  /** A notification's text: from its toast, or from the notification centre once the toast has timed out. */
  async waitForNotification(pattern: RegExp, timeout = STEP_MS): Promise<string> {
    const message = this.page.locator('.notification-list-item-message', { hasText: pattern }).first();
    const started = Date.now();
    let centre = false;
    const text = await this.until(`a notification matching ${pattern}`, async () => {
      if ((await message.count()) > 0 && (await message.isVisible())) return message.innerText();
      if (!centre && Date.now() - started > 5_000) {
        centre = true;
        await this.runCommand('Notifications: Show Notifications', '');
      }
      return undefined;
    }, timeout);
    if (centre) await this.page.keyboard.press('Escape');
    return text;
  }

  async clearNotifications(): Promise<void> {
    await this.runCommand('Notifications: Clear All Notifications', '');
  }

  /** Progress notifications still on screen (their message text). */
  async progressToasts(): Promise<string[]> {
    return this.page.locator('.notification-toast:has(.monaco-progress-container.active)').allInnerTexts();
  }

  /** Waits until no progress notification is on screen (a finished run's must close); returns what stayed. */
  async progressClosed(timeout = UI_MS): Promise<string[]> {
    const deadline = Date.now() + timeout;
    let open = await this.progressToasts();
    while (open.length > 0 && Date.now() < deadline) {
      await this.page.waitForTimeout(200);
      open = await this.progressToasts();
    }
    return open;
  }

  /** Waits until the Runs view lists `count` finished runs; returns the rows (newest first). */
  async waitForRuns(count: number): Promise<string[]> {
    return this.until(`${count} finished runs in the Runs view`, async () => {
      const rows = await this.treeRows('Runs');
      return rows.length >= count && !rows.some((r) => /running…/.test(r)) ? rows : undefined;
    });
  }

  /** Opens a workspace file as a user does (Quick Open, Ctrl+P) and waits for its editor tab. */
  async openFile(name: string): Promise<void> {
    await this.page.keyboard.press('Control+P');
    const input = this.page.locator('.quick-input-widget input.input');
    await input.fill(name);
    await this.page.locator('.quick-input-list .monaco-list-row', { hasText: name }).first().waitFor();
    await input.press('Enter');
    await this.page.locator('.tabs-container .tab.active', { hasText: name }).waitFor();
    await this.page.locator('.monaco-editor .view-lines').first().waitFor({ state: 'visible' });
  }

  async showEditor(name: string): Promise<void> {
    await this.page.locator('.tabs-container .tab', { hasText: name }).first().click();
    await this.page.locator('.monaco-editor .view-lines').first().waitFor({ state: 'visible' });
  }

  /** The `#active-frame` of the webview whose document holds `selector` (a panel's own element). */
  async webview(selector: string, timeout = STEP_MS): Promise<FrameLocator> {
    return this.until(`a webview holding ${selector}`, async () => {
      const n = await this.page.locator('iframe.webview').count();
      for (let i = 0; i < n; i++) {
        const frame = this.page.frameLocator('iframe.webview').nth(i).frameLocator('#active-frame');
        if ((await frame.locator(selector).count()) > 0 && (await frame.locator(selector).first().isVisible())) return frame;
      }
      return undefined;
    }, timeout);
  }

  /** Editor groups side by side in the window. */
  async editorGroups(): Promise<number> {
    return this.page.locator('.editor-group-container').count();
  }

  /** Switches the colour theme as a user does (Preferences: Color Theme) and waits for the workbench and `frames`. */
  async setTheme(theme: ThemeName, frames: FrameLocator[] = []): Promise<void> {
    const t = THEMES[theme];
    if ((await this.page.locator(`.monaco-workbench.${t.workbench}`).count()) === 0) {
      // Ctrl+K Ctrl+T opens the theme picker itself (the palette would also offer "Browse Color Themes in Marketplace").
      await this.page.keyboard.press('Escape');
      await this.page.keyboard.press('Control+K');
      await this.page.keyboard.press('Control+T');
      const input = this.page.locator('.quick-input-widget input.input');
      await input.waitFor({ state: 'visible' });
      await input.fill(t.label);
      await this.page.locator('.quick-input-list .monaco-list-row', { hasText: t.label }).first().waitFor({ state: 'visible' });
      await input.press('Enter');
    }
    await this.until(`the ${theme} theme on the workbench`, async () => ((await this.page.locator(`.monaco-workbench.${t.workbench}`).count()) > 0 ? true : undefined), UI_MS * 2);
    for (const frame of frames) {
      await this.until(`the ${theme} theme in a webview`, async () => ((await frame.locator(`body.${t.webview}`).count()) > 0 ? true : undefined), UI_MS * 2);
      // One animation frame for the canvases, which redraw on the class change.
      await frame.locator('body').evaluate('new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)))');
    }
  }

  /** A screenshot in each theme (dark, light, high contrast), ending in the dark theme the tests run in. */
  async themedShots(name: string, frames: FrameLocator[] = [], prepare?: () => Promise<void>): Promise<void> {
    for (const theme of ['light', 'high-contrast', 'dark'] as ThemeName[]) {
      await this.setTheme(theme, frames);
      await prepare?.();
      await this.shot(`${name}-${theme}`);
    }
  }

  /** Sets (or with `undefined` removes) one user setting. */
  setSetting(key: string, value: unknown): void {
    const settings = JSON.parse(fs.readFileSync(this.settingsFile, 'utf8')) as Record<string, unknown>;
    if (value === undefined) delete settings[key];
    else settings[key] = value;
    fs.writeFileSync(this.settingsFile, `${JSON.stringify(settings, null, 2)}\n`);
  }
}

interface CodeServerTools {
  ensureCodeServer(): { nodeBin: string; entry: string };
  prepareProfile(dir: string, options: { extensionDir: string; settings?: Record<string, unknown>; workspaceFiles?: Record<string, string> }): { workspace: string; ud: string };
  startCodeServer(options: { dir: string; port: number; install: unknown; stdio?: unknown }): Promise<{ url: string; stop(): void }>;
  freePort(): Promise<number>;
  CHROMIUM: string;
}

/** The extension as it is installed: the built tree, with `model` as media/demo-model. */
function stageExtension(dir: string, model: string): string {
  const ext = path.join(dir, 'extension');
  fs.rmSync(ext, { recursive: true, force: true });
  fs.mkdirSync(path.join(ext, 'media'), { recursive: true });
  for (const name of ['package.json', 'dist', 'build', 'node_modules']) fs.symlinkSync(path.join(ROOT, name), path.join(ext, name));
  for (const name of fs.readdirSync(path.join(ROOT, 'media'))) {
    if (name !== 'demo-model') fs.symlinkSync(path.join(ROOT, 'media', name), path.join(ext, 'media', name));
  }
  fs.symlinkSync(model, path.join(ext, 'media', 'demo-model'));
  return ext;
}

export interface WorkbenchSession {
  wb: Workbench;
  page: Page;
  /** The folder VS Code has open. */
  workspace: string;
  /** This suite's own folder: code-server's profile, the workspace and the staged extension. */
  runDir: string;
  /** Closes the browser and code-server; lists the screenshots taken. */
  close(): Promise<void>;
}

/** A suite's own VS Code: the extension staged (with `model`, default DEMO_MODEL, as its demo model), code-server on
 *  a fresh profile in .cache/e2e/<name> (outside test/out, whose *.test.js files are the suites) with `settings` and
 *  `workspaceFiles`, and chromium on the workbench. `model(runDir)` may write the model into the suite's folder. */
export async function openWorkbench(o: { name: string; shotPrefix?: string; model?: (runDir: string) => string; settings?: Record<string, unknown>; workspaceFiles?: Record<string, string> }): Promise<WorkbenchSession> {
  fs.mkdirSync(OUT, { recursive: true });
  const tools = (await import(pathToFileURL(path.join(ROOT, 'tools', 'code-server.mjs')).href)) as CodeServerTools;
  const install = tools.ensureCodeServer();
  const runDir = path.join(ROOT, '.cache', 'e2e', o.name);
  fs.rmSync(runDir, { recursive: true, force: true });
  fs.mkdirSync(runDir, { recursive: true });
  const model = o.model ? o.model(runDir) : DEMO_MODEL;
  if (!fs.existsSync(path.join(model, 'config.json'))) throw new Error(`the demo model is missing (${model}); the end-to-end tests open it`);
  const { workspace, ud } = tools.prepareProfile(runDir, { extensionDir: stageExtension(runDir, model), settings: o.settings, workspaceFiles: o.workspaceFiles });
  const server = await tools.startCodeServer({ dir: runDir, port: await tools.freePort(), install });
  let context: BrowserContext | undefined;
  let wb: Workbench | undefined;
  const close = async (): Promise<void> => {
    await context?.close().catch(() => undefined);
    server.stop();
    if (wb?.shots.length) console.log(`# screenshots:\n${wb.shots.map((s) => `#   ${path.relative(ROOT, s)}`).join('\n')}`);
  };
  try {
    const { chromium } = (await import('playwright-core')) as typeof import('playwright-core');
    context = await chromium.launchPersistentContext(path.join(runDir, 'chromium'), {
      executablePath: tools.CHROMIUM,
      headless: true,
      viewport: { width: 1600, height: 1000 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    context.setDefaultTimeout(UI_MS);
    const page = context.pages()[0] ?? (await context.newPage());
    wb = new Workbench(page, OUT, path.join(ud, 'User', 'settings.json'), o.shotPrefix);
    // A shared, loaded machine can take longer than the default UI timeout to serve the workbench.
    await page.goto(`${server.url}?folder=${encodeURIComponent(workspace)}`, { timeout: 60_000 });
    await page.locator('.monaco-workbench').waitFor({ state: 'visible', timeout: 60_000 });
    await page.locator('.activitybar').waitFor({ state: 'visible' });
    return { wb, page, workspace, runDir, close };
  } catch (error) {
    await close();
    throw error;
  }
}

type StepContext = { test: (name: string, options: { skip?: boolean }, fn: () => Promise<void>) => Promise<void> };

/** The steps of one walk through the product, each building on the last: on a failure a screenshot is kept and the
 *  later steps are skipped. ROUTESCOPE_E2E_STEPS=REGEX runs only the steps whose names match, for work on one. */
export function stepRunner(shot: (name: string) => Promise<void>): (t: StepContext, name: string, fn: () => Promise<void>) => Promise<void> {
  let failed = false;
  const only = process.env.ROUTESCOPE_E2E_STEPS ? new RegExp(process.env.ROUTESCOPE_E2E_STEPS) : undefined;
  return async (t, name, fn) => {
    await t.test(name, { skip: only !== undefined && !only.test(name) }, async () => {
      if (failed) throw new Error('skipped: an earlier step failed');
      try {
        await fn();
      } catch (error) {
        failed = true;
        await shot(`failed-${name.slice(0, 40).replace(/[^a-z0-9]+/gi, '-')}`).catch(() => undefined);
        throw error;
      }
    });
  };
}
