// The extension host entry: only wiring. The UI (panels, views) arrives with a later issue.
import * as vscode from 'vscode';
import { loadAddon } from './engine/addon';

let output: vscode.OutputChannel | undefined;

export function activate(context: vscode.ExtensionContext): void {
  output = vscode.window.createOutputChannel('Routescope');
  context.subscriptions.push(output);
  context.subscriptions.push(
    vscode.commands.registerCommand('routescope.showEngineLog', () => {
      output?.show(true);
    }),
  );
  try {
    const addon = loadAddon();
    output.appendLine(`engine ${addon.version} loaded (CUDA backend ${addon.cudaCompiled ? 'compiled' : 'not compiled'})`);
  } catch (error) {
    // Not fatal for activation: the log says what to do.
    output.appendLine(error instanceof Error ? error.message : String(error));
  }
}

export function deactivate(): void {
  output = undefined;
}
