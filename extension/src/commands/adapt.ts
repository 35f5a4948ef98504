// The test-time adaptation commands (also the prompt lenses "Re-mix (C3PO)" and "Generate with rerouting") and the
// routing-headroom analysis of a task file (analysis only): all run in the engine process (adapt/requests.ts),
// cancellable, and open their panel.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { NativeRerouteRound } from '../engine/native';
import { addPromptLenses } from '../prompts/codeLens';
import { adaptSettings, editorSettings, saveReferenceSetting } from '../editorConfig';
import { AdaptPanel } from '../views/adaptPanel';
import { HeadroomPanel } from '../views/headroomPanel';
import { summariseHeadroom, type HeadroomItemRecord } from '../adapt/headroom';
import { parseTasks } from '../adapt/tasks';
import { FILE_KINDS, readTextFile } from '../io/files';
import { report, type CommandContext } from './context';
import { pickPath } from './pickPath';
import { withRunProgress } from './progress';
import { plural } from '../../../common/src/format';
import type { ModelCommands } from './models';
import { resolvePrompt, toInput } from './prompts';

export function adaptCommands(c: CommandContext, models: ModelCommands) {
  const { session } = c;
  const out = session.output;
  const panel = new AdaptPanel();
  const headroomPanel = new HeadroomPanel();

  /** The configured reference set, or one the user picks now (saved to routescope.c3po.reference): a set found in
   *  the workspace, a typed path, or Browse… (the folder, or its manifest.json). The typed path comes first: the dialog
   *  of a browser-served VS Code fills its default path in after it opens, over what the user has started typing. */
  const referenceDir = async (): Promise<string | undefined> => {
    const configured = editorSettings().c3poReference;
    if (configured) return configured;
    const isReference = (dir: string): boolean => fs.existsSync(path.join(dir, 'manifest.json')) && fs.existsSync(path.join(dir, 'routing.safetensors'));
    const found = (await vscode.workspace.findFiles('**/manifest.json', '**/node_modules/**', 50)).map((u) => path.dirname(u.fsPath)).filter(isReference);
    const workspace = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
    const dir = await pickPath({
      title: 'Routescope: Re-mix (C3PO) needs a reference set (routescope reference build --model MODEL --data TASKS.jsonl --out REF)',
      placeHolder: 'The folder is saved to routescope.c3po.reference',
      found: found.map((d) => ({ label: `$(database) ${path.basename(d)}`, description: vscode.workspace.asRelativePath(d), path: d })),
      type: {
        label: '$(edit) Type the folder\'s path…',
        prompt: 'The folder `routescope reference build --out` wrote (it holds manifest.json and routing.safetensors)',
        value: workspace ? `${workspace}${path.sep}` : '',
        validate: (v) => (isReference(v) ? undefined : `${v} is not a reference set (no manifest.json and routing.safetensors)`),
      },
      // The folder, or the manifest.json in it (a file is what every file dialog can pick).
      browse: {
        description: 'the folder or its manifest.json',
        options: { canSelectFolders: true, canSelectFiles: true, filters: { 'Reference set manifest': ['json'] }, openLabel: 'Use Reference Set' },
      },
      fromDialog: (picked) => (path.basename(picked) === 'manifest.json' ? path.dirname(picked) : picked),
    });
    if (!dir) return undefined;
    if (!isReference(dir)) {
      void vscode.window.showErrorMessage(`Routescope: ${dir} is not a reference set (no manifest.json and routing.safetensors); build one with \`routescope reference build\`.`);
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
      const result = await withRunProgress(`Routescope: re-mixing with C3PO (${method})`, ({ token }) =>
        session.host.request('remix', { ...input, referenceDir: dir, method, c3po, embedding, maxNewTokens }, { token }));
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
      const result = await withRunProgress('Routescope: generating with rerouting', (progress) =>
          session.host.request('reroute', { ...input, settings: reroute, maxNewTokens: editorSettings().maxNewTokens }, {
            token: progress.token,
            onEvent: (event) => {
              rounds.push(event.round);
              progress.report(`round ${rounds.length} at position ${event.round.position}`);
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

  /** The labelled items to analyse: the file the command names (Explorer), else the active editor's JSONL, else one
   *  the user picks (the workspace's .jsonl files, or Browse…). */
  const taskSource = async (arg?: unknown): Promise<{ name: string; text: string } | undefined> => {
    if (arg instanceof vscode.Uri) return { name: arg.fsPath, text: readTextFile(arg.fsPath, FILE_KINDS.tasks) };
    const doc = vscode.window.activeTextEditor?.document;
    if (doc && /\.jsonl$/i.test(doc.fileName)) return { name: doc.fileName, text: doc.getText() };
    const found = await vscode.workspace.findFiles('**/*.jsonl', '**/node_modules/**', 50);
    const file = await pickPath({
      title: 'Routing headroom: a task file with answers (the format of media/tasks/*.jsonl)',
      placeHolder: 'Labelled items (JSONL) to analyse',
      found: found.map((u) => ({ label: `$(file) ${path.basename(u.fsPath)}`, description: vscode.workspace.asRelativePath(u), path: u.fsPath })),
      browse: { description: 'a .jsonl file', options: { canSelectFiles: true, canSelectFolders: false, filters: { 'Labelled items (JSONL)': ['jsonl'] }, openLabel: 'Analyse' } },
    });
    return file ? { name: file, text: readTextFile(file, FILE_KINDS.tasks) } : undefined;
  };

  const routingHeadroom = async (arg?: unknown): Promise<unknown> => {
    if (!(await models.ensureModel())) return undefined;
    try {
      const source = await taskSource(arg);
      if (!source) return undefined;
      const items = parseTasks(source.text, source.name);
      const { headroom } = adaptSettings();
      const records: HeadroomItemRecord[] = [];
      const name = path.basename(source.name);
      const result = await withRunProgress(`Routescope: routing headroom of ${name} (analysis only: uses the labels)`, (progress) =>
        session.host.request('headroom', { items, settings: headroom }, {
          token: progress.token,
          onEvent: (event) => {
            records.push(event.record);
            progress.report(`${event.done} of ${plural(event.total, 'item')}`, 100 / event.total);
            const summary = summariseHeadroom(records, event.total, false, headroom);
            headroomPanel.show({ kind: 'running', source: name, done: event.done, total: event.total, records: [...records], summary });
          },
        }));
      const s = result.summary;
      out.appendLine(`routing headroom of ${source.name} (analysis only): ${s.completed} of ${s.items} items, ${s.wrong} wrong, fixed by routing ${s.fixedItems.length}`);
      headroomPanel.show({ kind: 'done', source: name, records: result.records, summary: s });
      if (s.cancelled) void vscode.window.showInformationMessage(`Routescope: routing headroom cancelled; the panel shows the ${s.completed} items that finished.`);
      return s;
    } catch (error) {
      report(c, 'Routing Headroom', error);
      return undefined;
    }
  };

  const disposables: vscode.Disposable[] = [
    panel,
    headroomPanel,
    addPromptLenses((prompt) => [
      { title: '$(sparkle) Re-mix (C3PO)', command: 'routescope.remixC3po', arguments: [prompt], tooltip: 'Re-mix the routing of this prompt with C3PO and compare before/after' },
      { title: '$(sync) Generate with rerouting', command: 'routescope.generateRerouted', arguments: [prompt], tooltip: 'Generate with and without continuous rerouting, side by side' },
    ]),
  ];
  return { remixC3po, generateRerouted, routingHeadroom, disposables };
}
