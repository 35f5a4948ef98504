// The extension host entry: only wiring. The engine runs in its own process (engine/host.ts → engineProcess.ts).
import * as path from 'node:path';
import * as vscode from 'vscode';
import { Session } from './session';
import { registerCommands, demoAvailable, type RoutingDisplay } from './commands';
import { registerSidePanel } from './views/sidePanel';
import { PatchFileSystem } from './views/patchDocument';
import { PromptCodeLensProvider, promptSelector } from './prompts/codeLens';
import { registerRoutingPanel } from './views/routingPanel';
import { editorSettings, onDidChangeSettings } from './editorConfig';

let session: Session | undefined;

export function activate(context: vscode.ExtensionContext): { session: Session } {
  const output = vscode.window.createOutputChannel('Routescope');
  context.subscriptions.push(output);
  const s = new Session(output, path.join(context.extensionPath, 'dist', 'engine-worker.js'));
  session = s;
  context.subscriptions.push(s);

  const panels = registerRoutingPanel(context, {
    getRun: (id) => s.runs.get(id),
    listRuns: () => s.runs.all(),
    getPatch: () => s.patch,
    editPatch: (edit) => s.editPatch(edit),
    onDidChangePatch: s.onDidChangePatch,
  });
  const display: RoutingDisplay = {
    show: (run, options) => void panels.show(run, options?.compare ? { compare: options.compare } : {}),
    update: (run, span) => panels.update(run, span),
  };
  context.subscriptions.push(
    ...registerCommands({ context, session: s, display: () => display }),
    // Re-runs use the session's patch: the panel only asks.
    panels.onDidRequestRerun((e) => {
      if (e.run) void vscode.commands.executeCommand('routescope.rerunWithPatch', e.run.id);
      else void vscode.commands.executeCommand('routescope.inspectRouting', e.prompt);
    }),
    panels.onDidRequestExport((e) => void vscode.commands.executeCommand('routescope.exportTrace', { runId: e.run.id, format: e.format })),
    panels.onDidRequestCancel((runId) => void vscode.commands.executeCommand('routescope.cancelRun', runId)),
  );
  const { disposables } = registerSidePanel(s);
  context.subscriptions.push(...disposables);
  context.subscriptions.push(vscode.workspace.registerFileSystemProvider('routescope-patch', new PatchFileSystem(s), { isCaseSensitive: true }));

  const lenses = new PromptCodeLensProvider();
  let lensRegistration = vscode.languages.registerCodeLensProvider(promptSelector(editorSettings().promptFiles), lenses);
  context.subscriptions.push(
    { dispose: () => lensRegistration.dispose() },
    onDidChangeSettings(['promptFiles'], () => {
      lensRegistration.dispose();
      lensRegistration = vscode.languages.registerCodeLensProvider(promptSelector(editorSettings().promptFiles), lenses);
    }),
  );

  void vscode.commands.executeCommand('setContext', 'routescope.demoAvailable', demoAvailable(context));

  // Nothing is loaded on its own in a restricted (untrusted) workspace.
  if (editorSettings().openDemoOnStartup && vscode.workspace.isTrusted) void openDemoOnStartup();
  return { session: s };
}

/** npm start: the workspace's first prompt file in an editor (when none is open), the side panel, the demo model. */
async function openDemoOnStartup(): Promise<void> {
  if (vscode.window.visibleTextEditors.length === 0) {
    for (const glob of editorSettings().promptFiles) {
      const [file] = await vscode.workspace.findFiles(glob, '**/node_modules/**', 1);
      if (file) {
        await vscode.window.showTextDocument(file, { preview: false });
        break;
      }
    }
  }
  await vscode.commands.executeCommand('workbench.view.extension.routescope');
  await vscode.commands.executeCommand('routescope.openDemoModel');
}

export function deactivate(): void {
  session?.dispose();
  session = undefined;
}
