// Model commands: Open Model… (recent models or a folder), Open Demo Model, Close Model, Restart Engine, Show
// Engine Log, and the offer to open a model when an action needs one.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { FILE_KINDS, readTextFile } from '../io/files';
import { EngineError } from '../engine/protocol';
import { editorSettings } from '../editorConfig';
import { withRunProgress } from './progress';
import { report, type CommandContext } from './context';
import { jsonErrorText } from '../../../common/src/jsonError';

const RECENT_KEY = 'routescope.recentModels';
const RECENT_LIMIT = 8;

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

export function demoAvailable(context: vscode.ExtensionContext): boolean {
  return fs.existsSync(path.join(demoModelDir(context), 'config.json'));
}

export function modelCommands(c: CommandContext) {
  const { context, session } = c;
  const out = session.output;

  const remember = async (dir: string): Promise<void> => {
    const recent = context.globalState.get<string[]>(RECENT_KEY, []).filter((d) => d !== dir);
    await context.globalState.update(RECENT_KEY, [dir, ...recent].slice(0, RECENT_LIMIT));
  };

  // The open in flight, if any: an action asked for meanwhile waits for it instead of offering to open another.
  let opening: Promise<boolean> | undefined;

  const openModelDir = (dir: string, options: { remembered?: boolean } = {}): Promise<boolean> => {
    const attempt = openModelDirNow(dir, options);
    opening = attempt;
    void attempt.finally(() => {
      if (opening === attempt) opening = undefined;
    });
    return attempt;
  };

  const openModelDirNow = async (dir: string, { remembered = true } = {}): Promise<boolean> => {
    const problem = checkModelFolder(dir);
    if (problem) {
      void vscode.window.showErrorMessage(`Routescope: ${problem}`);
      return false;
    }
    const { threads, backend, activations, weights, kvCache } = editorSettings();
    try {
      const loaded = await withRunProgress(
        `Routescope: opening ${path.basename(dir)}`,
        async ({ token }) => {
          // Loading is one native call; Cancel stops the engine process (which frees whatever it mapped).
          const sub = token.onCancellationRequested(() => void session.host.restart());
          try {
            return await session.host.load({ dir, backend, activations, weights, kvCache, ...(threads > 0 ? { threads } : {}) });
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
      report(c, `opening ${dir}`, error);
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
    if (!demoAvailable(context)) {
      void vscode.window.showErrorMessage(`Routescope: the demo model is not part of this installation (${dir} has no config.json). Open a model folder with "Routescope: Open Model…".`);
      return false;
    }
    return openModelDir(dir, { remembered: false });
  };

  /** True when a model is open, after offering to open one. */
  const ensureModel = async (): Promise<boolean> => {
    if (session.model) return true;
    if (opening && (await opening) && session.model) return true;
    const choice = await vscode.window.showWarningMessage('Routescope: no model is open.', ...(demoAvailable(context) ? ['Open Demo Model'] : []), 'Open Model…');
    if (choice === 'Open Demo Model') return openDemoModel();
    if (choice === 'Open Model…') return openModel();
    return false;
  };

  const closeModel = async (): Promise<void> => {
    try {
      await session.host.unload();
      out.appendLine('model closed');
    } catch (error) {
      report(c, 'Close Model', error);
    }
  };

  const restartEngine = async (): Promise<void> => {
    await session.host.restart();
    if (!session.model) return;
    try {
      await session.host.request('info', {});
      void vscode.commands.executeCommand('setContext', 'routescope.engineRunning', true);
    } catch (error) {
      report(c, 'Restart Engine', error);
    }
  };

  return { openModel, openDemoModel, ensureModel, closeModel, restartEngine, showEngineLog: () => out.show(true) };
}

export type ModelCommands = ReturnType<typeof modelCommands>;
