// The palette commands (category "Routescope") and the side panel's item commands. Long work runs under a
// cancellable progress notification whose Cancel reaches the engine process.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { Session } from './session';
import type { Run } from './runs/run';
import { inspectRun, generateRun, type PromptInput } from './runs/runner';
import { diffRuns } from './runs/aggregate';
import { traceCsv, traceSafetensors } from './runs/trace';
import { EngineError, isCancelled } from './engine/protocol';
import type { Backend } from './engine/native';
import { PatchError } from '../../common/src/patch';
import { parsePromptFile, promptAt } from './prompts/parse';
import { addPromptLenses, type PromptArgument } from './prompts/codeLens';
import { readSettings, type C3poMethod } from './adapt/settings';
import { AdaptPanel } from './views/adaptPanel';
import type { NativeRerouteRound } from './engine/native';
import { PATCH_URI } from './views/patchDocument';
import type { ExpertItem, RunItem } from './views/sidePanel';
import { applyPatchEdit, clearExpertEdits, type PatchEdit } from '../../common/src/patchEdit';
import { FILE_KINDS, readTextFile } from './inputFiles';
import { jsonErrorText } from '../../common/src/jsonError';

/** Where runs are drawn (the routing panel, views/routingPanel.ts). */
export interface RoutingDisplay {
  /** Shows a run (and, when given, the run it is compared with) in the routing panel. */
  show(run: Run, options?: { compare?: Run }): void;
  /** The run's arrays grew (streaming) or it finished. */
  update(run: Run): void;
}

const RECENT_KEY = 'routescope.recentModels';
const RECENT_LIMIT = 8;

export interface CommandContext {
  context: vscode.ExtensionContext;
  session: Session;
  display: () => RoutingDisplay | undefined;
}

function settings() {
  const c = vscode.workspace.getConfiguration('routescope');
  return {
    threads: c.get<number>('threads', 0),
    backend: c.get<Backend>('backend', 'auto'),
    maxNewTokens: c.get<number>('maxNewTokens', 32),
  };
}

/** A problem with a model folder, found before the engine is asked. */
export function checkModelFolder(dir: string): string | undefined {
  const config = path.join(dir, 'config.json');
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) return `${dir}: not a folder`;
  if (!fs.existsSync(config)) return `${dir}: no config.json (a Hugging Face model folder has config.json and *.safetensors)`;
  let text: string;
  try {
    text = readTextFile(config, FILE_KINDS.config); // never blocks the extension host on a FIFO
  } catch (error) {
    return (error as Error).message;
  }
  try {
    const value = JSON.parse(text) as { model_type?: unknown } | null;
    if (typeof value?.model_type !== 'string') return `${config}: no "model_type"`;
  } catch (error) {
    return `${config}: invalid JSON (${jsonErrorText(error)})`;
  }
  return undefined;
}

export function demoModelDir(context: vscode.ExtensionContext): string {
  return path.join(context.extensionPath, 'media', 'demo-model');
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export function registerCommands(c: CommandContext): vscode.Disposable[] {
  const { context, session } = c;
  const out = session.output;

  const report = (what: string, error: unknown): void => {
    if (isCancelled(error)) {
      out.appendLine(`${what}: cancelled`);
      void vscode.window.showInformationMessage(`Routescope: ${what} cancelled.`);
      return;
    }
    // A dead engine process has already been reported (Session), with the way out.
    if (error instanceof EngineError && error.code === 'ENGINE_DIED') return;
    const message = errorText(error);
    out.appendLine(`${what} failed: ${message}`);
    void vscode.window.showErrorMessage(`Routescope: ${message}`, 'Show Engine Log').then((choice) => {
      if (choice) out.show(true);
    });
  };

  // ---- models ----

  const remember = async (dir: string): Promise<void> => {
    const recent = context.globalState.get<string[]>(RECENT_KEY, []).filter((d) => d !== dir);
    await context.globalState.update(RECENT_KEY, [dir, ...recent].slice(0, RECENT_LIMIT));
  };

  const openModelDir = async (dir: string, { remembered = true } = {}): Promise<boolean> => {
    const problem = checkModelFolder(dir);
    if (problem) {
      void vscode.window.showErrorMessage(`Routescope: ${problem}`);
      return false;
    }
    const { threads, backend } = settings();
    try {
      const loaded = await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: `Routescope: opening ${path.basename(dir)}`, cancellable: true },
        async (_progress, token) => {
          // Loading is one native call; Cancel stops the engine process (which frees whatever it mapped).
          const sub = token.onCancellationRequested(() => void session.host.restart());
          try {
            return await session.host.load({ dir, backend, ...(threads > 0 ? { threads } : {}) });
          } catch (error) {
            if (token.isCancellationRequested) throw new EngineError('CANCELLED', 'cancelled');
            throw error;
          } finally {
            sub.dispose();
          }
        },
      );
      void vscode.commands.executeCommand('setContext', 'routescope.engineRunning', true);
      const info = loaded.info;
      out.appendLine(`opened ${dir}: ${info.modelType}, ${info.numLayers} layers, ${info.numExperts} experts, top-${info.topK}`);
      if (remembered) await remember(dir);
      if (!loaded.tokenizer) {
        void vscode.window.showWarningMessage(`Routescope: ${path.basename(dir)} has no usable tokenizer (${loaded.tokenizerError}); prompts can only be given as token ids ("1, 2, 3").`);
      }
      // The patch belongs to a model: keep it only where it still fits.
      try {
        session.setPatch(session.patch);
      } catch {
        session.setPatch({ layers: {} });
        out.appendLine('the routing patch did not fit the new model and was cleared');
      }
      return true;
    } catch (error) {
      report(`opening ${dir}`, error);
      return false;
    }
  };

  const openModel = async (arg?: vscode.Uri | string): Promise<boolean> => {
    if (arg) return openModelDir(typeof arg === 'string' ? arg : arg.fsPath);
    const recent = context.globalState.get<string[]>(RECENT_KEY, []).filter((d) => fs.existsSync(d));
    let dir: string | undefined;
    if (recent.length > 0) {
      const browse: vscode.QuickPickItem = { label: '$(folder-opened) Browse…', description: 'pick a Hugging Face model folder' };
      const picked = await vscode.window.showQuickPick(
        [browse, { label: 'recent', kind: vscode.QuickPickItemKind.Separator }, ...recent.map((d) => ({ label: path.basename(d), description: d }))],
        { title: 'Routescope: Open Model', placeHolder: 'A recent model, or browse for a folder with config.json' },
      );
      if (!picked) return false;
      if (picked !== browse) dir = picked.description;
    }
    if (!dir) {
      const uris = await vscode.window.showOpenDialog({ canSelectFolders: true, canSelectFiles: false, canSelectMany: false, openLabel: 'Open Model', title: 'A Hugging Face MoE model folder (config.json + safetensors)' });
      if (!uris?.length) return false;
      dir = uris[0].fsPath;
    }
    return openModelDir(dir);
  };

  const openDemoModel = async (): Promise<boolean> => {
    const dir = demoModelDir(context);
    if (!fs.existsSync(path.join(dir, 'config.json'))) {
      void vscode.window.showErrorMessage(`Routescope: the demo model is not part of this installation (${dir} has no config.json). Open a model folder with "Routescope: Open Model…".`);
      return false;
    }
    return openModelDir(dir, { remembered: false });
  };

  /** True when a model is open, after offering to open one. */
  const ensureModel = async (): Promise<boolean> => {
    if (session.model) return true;
    const demo = fs.existsSync(path.join(demoModelDir(context), 'config.json'));
    const choice = await vscode.window.showWarningMessage('Routescope: no model is open.', ...(demo ? ['Open Demo Model'] : []), 'Open Model…');
    if (choice === 'Open Demo Model') return openDemoModel();
    if (choice === 'Open Model…') return openModel();
    return false;
  };

  // ---- prompts ----

  const promptFromEditor = (): string | undefined => {
    const editor = vscode.window.activeTextEditor;
    if (!editor) return undefined;
    const selected = editor.document.getText(editor.selection);
    if (selected.trim() !== '') return selected;
    const parsed = parsePromptFile(editor.document.fileName, editor.document.getText());
    if (!/\.prompts\.(md|jsonl)$/i.test(editor.document.fileName) && parsed.prompts.length === 0) return undefined;
    return promptAt(parsed, editor.selection.active.line)?.text;
  };

  const askPrompt = async (title: string, value?: string): Promise<string | undefined> =>
    vscode.window.showInputBox({
      title,
      prompt: session.model?.tokenizer ? 'Text to run through the model' : 'Token ids, separated by commas or spaces (the model has no tokenizer)',
      value: value ?? session.runs.selected?.prompt ?? '',
      ignoreFocusOut: true,
      validateInput: (v) => (v.trim() === '' ? 'Enter a prompt' : undefined),
    });

  const toInput = (text: string): PromptInput => {
    if (!session.model?.tokenizer) {
      const ids = text.split(/[\s,]+/).filter(Boolean).map(Number);
      if (ids.length === 0 || ids.some((n) => !Number.isInteger(n) || n < 0)) {
        throw new Error('this model has no tokenizer: give the prompt as token ids, e.g. "1, 5, 9"');
      }
      return { tokens: ids };
    }
    return { text };
  };

  const resolvePrompt = async (arg: unknown, title: string): Promise<string | undefined> => {
    if (typeof arg === 'string') return arg;
    if (arg && typeof arg === 'object' && typeof (arg as PromptArgument).text === 'string') return (arg as PromptArgument).text;
    return promptFromEditor() ?? (await askPrompt(title));
  };

  // ---- runs ----

  const execute = async (kind: 'inspect' | 'generate', text: string, options: { baseRunId?: number; show?: boolean; label?: string; patch?: Run['patch'] | null } = {}): Promise<Run | undefined> => {
    const patch = options.patch === null ? undefined : (options.patch ?? session.activePatch);
    let run: Run | undefined;
    try {
      const input = toInput(text);
      return await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: kind === 'inspect' ? 'Routescope: inspecting routing' : 'Routescope: generating', cancellable: true },
        async (progress, token) => {
          const numLayers = session.model?.info.moeLayers.length ?? 0;
          const seen = new Set<number>();
          const request = {
            id: session.runs.nextId(),
            input,
            ...(patch ? { patch } : {}),
            ...(options.baseRunId !== undefined ? { baseRunId: options.baseRunId } : {}),
            ...(options.label ? { label: options.label } : {}),
            token,
            onUpdate: (r: Run, layer?: number) => {
              if (layer !== undefined && !seen.has(layer)) {
                seen.add(layer);
                if (kind === 'inspect') progress.report({ message: `layer ${seen.size}/${numLayers}`, increment: 100 / Math.max(1, numLayers) });
              } else if (layer === undefined) {
                progress.report({ message: `${r.tokens.length - r.promptTokens} tokens` });
              }
              session.runs.updated(r);
              c.display()?.update(r);
            },
          };
          const onStart = (r: Run): void => {
            run = r;
            session.runs.add(r);
            if (options.show !== false) c.display()?.show(r);
          };
          const done = kind === 'inspect'
            ? await inspectRun(session.host, request, onStart)
            : await generateRun(session.host, { ...request, maxNewTokens: settings().maxNewTokens }, onStart);
          session.runs.updated(done);
          c.display()?.update(done);
          out.appendLine(`run #${done.id} (${kind}) finished: ${done.tokens.length} tokens in ${((done.finishedAt! - done.startedAt) / 1000).toFixed(2)} s${done.patch ? ', patched' : ''}`);
          return done;
        },
      );
    } catch (error) {
      if (run) {
        run.error = isCancelled(error) ? 'cancelled' : errorText(error);
        run.finishedAt = Date.now();
        session.runs.updated(run);
        c.display()?.update(run);
      }
      report(kind === 'inspect' ? 'Inspect Routing' : 'Generate', error);
      return undefined;
    }
  };

  const runCommand = (kind: 'inspect' | 'generate') => async (arg?: unknown): Promise<Run | undefined> => {
    if (!(await ensureModel())) return undefined;
    const text = await resolvePrompt(arg, kind === 'inspect' ? 'Routescope: Inspect Routing' : 'Routescope: Generate');
    if (text === undefined) return undefined;
    return execute(kind, text);
  };

  const pickRun = async (title: string, exclude?: Run): Promise<Run | undefined> => {
    const runs = [...session.runs.all()].reverse().filter((r) => r !== exclude && r.finishedAt !== undefined && !r.error);
    if (runs.length === 0) return undefined;
    const picked = await vscode.window.showQuickPick(
      runs.map((r) => ({ label: r.label, description: `#${r.id} · ${r.tokens.length} tokens${r.patch ? ' · patched' : ''}`, run: r })),
      { title },
    );
    return picked?.run;
  };

  const showComparison = (run: Run, base: Run): void => {
    c.display()?.show(run, { compare: base });
    try {
      const d = diffRuns(base, run);
      const next = d.nextToken
        ? `; next-token distribution: total variation ${d.nextToken.totalVariation.toFixed(3)}, KL ${d.nextToken.klAtoB.toFixed(3)}`
        : '';
      const summary = `run #${run.id} vs #${base.id}: ${d.changedCells} of ${d.totalCells} cells route to a different expert set${next}`;
      out.appendLine(summary);
      void vscode.window.showInformationMessage(`Routescope: ${summary}.`);
    } catch (error) {
      report('Compare', error);
    }
  };

  const compareWithPrevious = async (arg?: unknown): Promise<void> => {
    const run = runFromArg(arg) ?? session.runs.selected ?? session.runs.all().at(-1);
    if (!run) return;
    const base = (run.baseRunId !== undefined ? session.runs.get(run.baseRunId) : undefined) ?? session.runs.previous(run);
    if (!base) {
      void vscode.window.showInformationMessage('Routescope: there is no earlier run on this model to compare with.');
      return;
    }
    showComparison(run, base);
  };

  const compareTwoPrompts = async (): Promise<void> => {
    if (!(await ensureModel())) return;
    const first = await askPrompt('Routescope: Compare Two Prompts (1/2)');
    if (first === undefined) return;
    const second = await askPrompt('Routescope: Compare Two Prompts (2/2)', first);
    if (second === undefined) return;
    const a = await execute('inspect', first, { show: false });
    if (!a) return;
    const b = await execute('inspect', second, { show: false, baseRunId: a.id });
    if (!b) return;
    showComparison(b, a);
  };

  const rerunWithPatch = async (arg?: unknown): Promise<Run | undefined> => {
    const base = runFromArg(arg) ?? session.runs.selected;
    if (!base) return undefined;
    if (!(await ensureModel())) return undefined;
    const patch = session.activePatch;
    if (!patch) {
      void vscode.window.showInformationMessage('Routescope: the routing patch is empty: right-click an expert in the Layers view, edit it in the routing panel, or run "Routescope: Edit Routing Patch" first.');
      return undefined;
    }
    const prompt = base.prompt;
    const kind = base.kind === 'generate' ? 'generate' : 'inspect';
    // The comparison is against the same prompt without the patch: reuse the base when it was unpatched.
    let unpatched = base.patch ? undefined : base;
    if (!unpatched) unpatched = await execute(kind, prompt, { patch: null, show: false });
    if (!unpatched) return undefined;
    const rerun = await execute(kind, prompt, { baseRunId: unpatched.id, show: false, patch });
    if (rerun) showComparison(rerun, unpatched);
    return rerun;
  };

  const runFromArg = (arg: unknown): Run | undefined => {
    if (typeof arg === 'number') return session.runs.get(arg);
    if (arg && typeof arg === 'object' && 'run' in arg) return (arg as RunItem).run;
    return undefined;
  };

  // ---- patch ----

  const editPatch = async (): Promise<void> => {
    const document = await vscode.workspace.openTextDocument(PATCH_URI);
    await vscode.languages.setTextDocumentLanguage(document, 'json');
    await vscode.window.showTextDocument(document, { preview: false });
  };

  const applyEdit = (edit: PatchEdit): void => {
    try {
      session.setPatch(applyPatchEdit(session.patch, edit));
    } catch (error) {
      void vscode.window.showErrorMessage(`Routescope: ${error instanceof PatchError ? error.message : errorText(error)}`);
    }
  };

  const expertFromArg = (arg: unknown): { layer: number; expert: number } | undefined => {
    if (arg && typeof arg === 'object' && 'ref' in arg) return (arg as ExpertItem).ref;
    if (arg && typeof arg === 'object' && typeof (arg as { layer?: unknown }).layer === 'number') return arg as { layer: number; expert: number };
    return undefined;
  };

  const biasExpert = async (arg: unknown): Promise<void> => {
    const ref = expertFromArg(arg);
    if (!ref) return;
    const layerPatch = session.patch.layers[String(ref.layer)];
    const current = Array.isArray(layerPatch?.bias) ? layerPatch.bias[ref.expert] : layerPatch?.bias?.[String(ref.expert)];
    const value = await vscode.window.showInputBox({
      title: `Routescope: bias for expert ${ref.expert} at layer ${ref.layer}`,
      prompt: 'Added to the router logit at every position (0 removes the bias)',
      value: String(current ?? 1),
      validateInput: (v) => (Number.isFinite(Number(v)) && v.trim() !== '' ? undefined : 'Enter a number'),
    });
    if (value === undefined) return;
    applyEdit({ op: 'bias', layer: ref.layer, expert: ref.expert, value: Number(value) });
  };

  // ---- export ----

  const exportTrace = async (arg?: unknown): Promise<vscode.Uri | undefined> => {
    const options = (arg && typeof arg === 'object' && !('run' in arg) ? arg : {}) as { runId?: number; uri?: string | vscode.Uri; format?: 'safetensors' | 'csv' };
    const run = (options.runId !== undefined ? session.runs.get(options.runId) : runFromArg(arg)) ?? session.runs.selected ?? (await pickRun('Routescope: Export Routing Trace — which run?'));
    if (!run) {
      void vscode.window.showInformationMessage('Routescope: no finished run to export yet.');
      return undefined;
    }
    if (run.finishedAt === undefined || run.error) {
      void vscode.window.showErrorMessage(`Routescope: run #${run.id} ${run.error ? `failed (${run.error})` : 'is still running'}; nothing to export.`);
      return undefined;
    }
    let target: vscode.Uri | undefined;
    if (options.uri) {
      target = typeof options.uri === 'string' ? vscode.Uri.file(options.uri) : options.uri;
      if (fs.existsSync(target.fsPath)) {
        const replace = await vscode.window.showWarningMessage(`${path.basename(target.fsPath)} already exists. Replace it?`, { modal: true }, 'Replace');
        if (replace !== 'Replace') return undefined;
      }
    } else {
      const folder = vscode.workspace.workspaceFolders?.[0]?.uri ?? vscode.Uri.file(path.dirname(run.model.dir));
      // The save dialog asks before replacing an existing file.
      target = await vscode.window.showSaveDialog({
        title: `Routescope: Export routing trace of run #${run.id}`,
        defaultUri: vscode.Uri.joinPath(folder, `routing-run${run.id}.${options.format === 'csv' ? 'csv' : 'safetensors'}`),
        filters: options.format === 'csv'
          ? { 'CSV': ['csv'], 'Routing trace (safetensors)': ['safetensors'] }
          : { 'Routing trace (safetensors)': ['safetensors'], 'CSV': ['csv'] },
        saveLabel: 'Export',
      });
      if (!target) return undefined;
    }
    const csv = target.fsPath.toLowerCase().endsWith('.csv');
    try {
      const bytes = csv ? Buffer.from(traceCsv(run), 'utf8') : traceSafetensors(run);
      await vscode.workspace.fs.writeFile(target, bytes);
      out.appendLine(`exported run #${run.id} to ${target.fsPath} (${bytes.length} bytes)`);
      void vscode.window.showInformationMessage(`Routescope: routing trace of run #${run.id} saved to ${path.basename(target.fsPath)}.`);
      return target;
    } catch (error) {
      report('Export Routing Trace', error);
      return undefined;
    }
  };

  // ---- test-time adaptation (the prompt lenses "Re-mix (C3PO)" and "Generate with rerouting") ----

  const adaptPanel = new AdaptPanel();
  const adaptSettings = () => readSettings((key) => vscode.workspace.getConfiguration().get(key));

  /** The configured reference set, or one the user picks now (saved to routescope.c3po.reference). */
  const referenceDir = async (): Promise<string | undefined> => {
    const configured = vscode.workspace.getConfiguration('routescope').get<string>('c3po.reference', '');
    if (configured) return configured;
    const choice = await vscode.window.showInformationMessage(
      'Routescope: Re-mix (C3PO) needs a reference set: a folder built for this model with `routescope reference build --model MODEL --data TASKS.jsonl --out REF`. Set routescope.c3po.reference, or choose the folder now.',
      'Choose Folder…',
    );
    if (choice !== 'Choose Folder…') return undefined;
    const uris = await vscode.window.showOpenDialog({ canSelectFolders: true, canSelectFiles: false, canSelectMany: false, openLabel: 'Use Reference Set', title: 'A C3PO reference set (built with routescope reference build)' });
    if (!uris?.length) return undefined;
    const dir = uris[0].fsPath;
    if (!fs.existsSync(path.join(dir, 'manifest.json'))) {
      void vscode.window.showErrorMessage(`Routescope: ${dir} is not a reference set (no manifest.json); build one with \`routescope reference build\`.`);
      return undefined;
    }
    const target = vscode.workspace.workspaceFolders?.length ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
    await vscode.workspace.getConfiguration('routescope').update('c3po.reference', dir, target);
    return dir;
  };

  const remixPrompt = async (arg?: unknown): Promise<unknown> => {
    if (!(await ensureModel())) return undefined;
    const text = await resolvePrompt(arg, 'Routescope: Re-mix (C3PO)');
    if (text === undefined) return undefined;
    const dir = await referenceDir();
    if (!dir) return undefined;
    try {
      const { c3po, embedding } = adaptSettings();
      const method = vscode.workspace.getConfiguration('routescope').get<Exclude<C3poMethod, 'oracle'>>('c3po.method', 'ngd');
      const input = toInput(text);
      const result = await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: `Routescope: re-mixing with C3PO (${method})`, cancellable: true },
        (_progress, token) =>
          session.host.request('remix', { ...input, referenceDir: dir, method, c3po, embedding, maxNewTokens: settings().maxNewTokens }, { token }),
      );
      const o = result.comparison.outcome;
      out.appendLine(`re-mix (${method}) with ${dir}: layers ${o.layers.join(',')}, ${result.neighbours.length} neighbours${o.skipped ? `, skipped: ${o.skipped}` : ''}`);
      adaptPanel.show({ kind: 'remix', prompt: text, method, result });
      return result;
    } catch (error) {
      report('Re-mix (C3PO)', error);
      return undefined;
    }
  };

  const reroutePrompt = async (arg?: unknown): Promise<unknown> => {
    if (!(await ensureModel())) return undefined;
    const text = await resolvePrompt(arg, 'Routescope: Generate with Rerouting');
    if (text === undefined) return undefined;
    try {
      const { reroute } = adaptSettings();
      const input = toInput(text);
      const rounds: NativeRerouteRound[] = [];
      const result = await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: 'Routescope: generating with rerouting', cancellable: true },
        (progress, token) =>
          session.host.request('reroute', { ...input, settings: reroute, maxNewTokens: settings().maxNewTokens }, {
            token,
            onEvent: (event) => {
              rounds.push(event.round);
              progress.report({ message: `round ${rounds.length} at position ${event.round.position}` });
              adaptPanel.show({ kind: 'reroute-progress', prompt: text, rounds: [...rounds] });
            },
          }),
      );
      out.appendLine(`rerouted generation: ${result.comparison.rounds.length} rounds, layers ${Object.keys(result.comparison.delta).join(',')}`);
      adaptPanel.show({ kind: 'reroute', prompt: text, result });
      return result;
    } catch (error) {
      report('Generate with Rerouting', error);
      return undefined;
    }
  };

  const register = (id: string, f: (...args: never[]) => unknown): vscode.Disposable => vscode.commands.registerCommand(id, f);

  return [
    adaptPanel,
    addPromptLenses((prompt) => [
      { title: '$(sparkle) Re-mix (C3PO)', command: 'routescope.remixC3po', arguments: [prompt], tooltip: 'Re-mix the routing of this prompt with C3PO and compare before/after' },
      { title: '$(sync) Generate with rerouting', command: 'routescope.generateRerouted', arguments: [prompt], tooltip: 'Generate with and without continuous rerouting, side by side' },
    ]),
    register('routescope.remixC3po', remixPrompt),
    register('routescope.generateRerouted', reroutePrompt),
    register('routescope.showEngineLog', () => out.show(true)),
    register('routescope.openModel', openModel),
    register('routescope.openDemoModel', openDemoModel),
    register('routescope.closeModel', async () => {
      try {
        await session.host.unload();
        out.appendLine('model closed');
      } catch (error) {
        report('Close Model', error);
      }
    }),
    register('routescope.restartEngine', async () => {
      await session.host.restart();
      if (session.model) {
        try {
          await session.host.request('info', {});
          void vscode.commands.executeCommand('setContext', 'routescope.engineRunning', true);
        } catch (error) {
          report('Restart Engine', error);
        }
      }
    }),
    register('routescope.inspectRouting', runCommand('inspect')),
    register('routescope.generate', runCommand('generate')),
    register('routescope.rerunWithPatch', rerunWithPatch),
    register('routescope.compareWithPrevious', compareWithPrevious),
    register('routescope.compareTwoPrompts', compareTwoPrompts),
    register('routescope.editPatch', editPatch),
    register('routescope.clearPatch', () => applyEdit({ op: 'clear' })),
    register('routescope.exportTrace', exportTrace),
    register('routescope.showRun', (arg: unknown) => {
      const run = runFromArg(arg);
      if (!run) return;
      session.runs.select(run.id);
      const base = run.baseRunId !== undefined ? session.runs.get(run.baseRunId) : undefined;
      c.display()?.show(run, base ? { compare: base } : undefined);
    }),
    register('routescope.maskExpert', (arg: unknown) => {
      const ref = expertFromArg(arg);
      if (ref) applyEdit({ op: 'mask', ...ref });
    }),
    register('routescope.forceExpert', (arg: unknown) => {
      const ref = expertFromArg(arg);
      if (ref) applyEdit({ op: 'force', ...ref });
    }),
    register('routescope.biasExpert', biasExpert),
    register('routescope.clearExpertEdits', (arg: unknown) => {
      const ref = expertFromArg(arg);
      if (!ref) return;
      try {
        session.setPatch(clearExpertEdits(session.patch, ref.layer, ref.expert));
      } catch (error) {
        report('Clear Expert Edits', error);
      }
    }),
  ];
}
