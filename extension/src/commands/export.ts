// Export Routing Trace…: the selected (or given, or picked) run as .safetensors or .csv (runs/trace.ts); the save
// dialog asks before replacing a file, and so does a target given by the caller.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { traceCsv, traceSafetensors } from '../runs/trace';
import { report, runFromArg, type CommandContext } from './context';
import type { RunCommands } from './runs';

export function exportCommands(c: CommandContext, runs: RunCommands) {
  const { session } = c;
  const out = session.output;

  const exportTrace = async (arg?: unknown): Promise<vscode.Uri | undefined> => {
    const options = (arg && typeof arg === 'object' && !('run' in arg) ? arg : {}) as { runId?: number; uri?: string | vscode.Uri; format?: 'safetensors' | 'csv' };
    const run = (options.runId !== undefined ? session.runs.get(options.runId) : runFromArg(c, arg)) ?? session.runs.selected ?? (await runs.pickRun('Routescope: Export Routing Trace — which run?'));
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
      report(c, 'Export Routing Trace', error);
      return undefined;
    }
  };

  return { exportTrace };
}
