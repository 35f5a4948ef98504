// The test-time adaptation commands (also the prompt lenses "Re-mix (C3PO)" and "Generate with rerouting"): both
// run in the engine process (adapt/requests.ts), cancellable, and open the adaptation panel.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { NativeRerouteRound } from '../engine/native';
import { addPromptLenses } from '../prompts/codeLens';
import { adaptSettings, editorSettings, saveReferenceSetting } from '../editorConfig';
import { AdaptPanel } from '../views/adaptPanel';
import { report, type CommandContext } from './context';
import type { ModelCommands } from './models';
import { resolvePrompt, toInput } from './prompts';

export function adaptCommands(c: CommandContext, models: ModelCommands) {
  const { session } = c;
  const out = session.output;
  const panel = new AdaptPanel();

  /** The configured reference set, or one the user picks now (saved to routescope.c3po.reference). */
  const referenceDir = async (): Promise<string | undefined> => {
    const configured = editorSettings().c3poReference;
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
    await saveReferenceSetting(dir);
    return dir;
  };

  const remixC3po = async (arg?: unknown): Promise<unknown> => {
    if (!(await models.ensureModel())) return undefined;
    const text = await resolvePrompt(session, arg, 'Routescope: Re-mix (C3PO)');
    if (text === undefined) return undefined;
    const dir = await referenceDir();
    if (!dir) return undefined;
    try {
      const { c3po, embedding } = adaptSettings();
      const { c3poMethod: method, maxNewTokens } = editorSettings();
      const input = toInput(session, text);
      const result = await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: `Routescope: re-mixing with C3PO (${method})`, cancellable: true },
        (_progress, token) => session.host.request('remix', { ...input, referenceDir: dir, method, c3po, embedding, maxNewTokens }, { token }),
      );
      const o = result.comparison.outcome;
      out.appendLine(`re-mix (${method}) with ${dir}: layers ${o.layers.join(',')}, ${result.neighbours.length} neighbours${o.skipped ? `, skipped: ${o.skipped}` : ''}`);
      panel.show({ kind: 'remix', prompt: text, method, result });
      return result;
    } catch (error) {
      report(c, 'Re-mix (C3PO)', error);
      return undefined;
    }
  };

  const generateRerouted = async (arg?: unknown): Promise<unknown> => {
    if (!(await models.ensureModel())) return undefined;
    const text = await resolvePrompt(session, arg, 'Routescope: Generate with Rerouting');
    if (text === undefined) return undefined;
    try {
      const { reroute } = adaptSettings();
      const input = toInput(session, text);
      const rounds: NativeRerouteRound[] = [];
      const result = await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: 'Routescope: generating with rerouting', cancellable: true },
        (progress, token) =>
          session.host.request('reroute', { ...input, settings: reroute, maxNewTokens: editorSettings().maxNewTokens }, {
            token,
            onEvent: (event) => {
              rounds.push(event.round);
              progress.report({ message: `round ${rounds.length} at position ${event.round.position}` });
              panel.show({ kind: 'reroute-progress', prompt: text, rounds: [...rounds] });
            },
          }),
      );
      out.appendLine(`rerouted generation: ${result.comparison.rounds.length} rounds, layers ${Object.keys(result.comparison.delta).join(',')}`);
      panel.show({ kind: 'reroute', prompt: text, result });
      return result;
    } catch (error) {
      report(c, 'Generate with Rerouting', error);
      return undefined;
    }
  };

  const disposables: vscode.Disposable[] = [
    panel,
    addPromptLenses((prompt) => [
      { title: '$(sparkle) Re-mix (C3PO)', command: 'routescope.remixC3po', arguments: [prompt], tooltip: 'Re-mix the routing of this prompt with C3PO and compare before/after' },
      { title: '$(sync) Generate with rerouting', command: 'routescope.generateRerouted', arguments: [prompt], tooltip: 'Generate with and without continuous rerouting, side by side' },
    ]),
  ];
  return { remixC3po, generateRerouted, disposables };
}
