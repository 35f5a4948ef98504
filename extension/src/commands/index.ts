// The palette commands (category "Routescope") and the side panel's item commands, registered from one flat
// table: command id → handler, each handler made by its group (models, runs, patch, export, adapt, stats).
import * as vscode from 'vscode';
import { adaptCommands } from './adapt';
import type { CommandContext } from './context';
import { exportCommands } from './export';
import { modelCommands } from './models';
import { patchCommands } from './patch';
import { runCommands } from './runs';
import { statsCommands } from './stats';

export type { CommandContext, RoutingDisplay } from './context';
export { checkModelFolder, demoAvailable, demoModelDir } from './models';

type Handler = (...args: never[]) => unknown;

export function registerCommands(c: CommandContext): vscode.Disposable[] {
  const models = modelCommands(c);
  const runs = runCommands(c, models);
  const patch = patchCommands(c);
  const { exportTrace } = exportCommands(c, runs);
  const adapt = adaptCommands(c, models);
  const stats = statsCommands(c, models);
  const table: Record<string, Handler> = {
    'routescope.openModel': models.openModel,
    'routescope.openDemoModel': models.openDemoModel,
    'routescope.closeModel': models.closeModel,
    'routescope.restartEngine': models.restartEngine,
    'routescope.showEngineLog': models.showEngineLog,
    'routescope.inspectRouting': runs.inspectRouting,
    'routescope.generate': runs.generate,
    'routescope.rerunWithPatch': runs.rerunWithPatch,
    'routescope.compareWithPrevious': runs.compareWithPrevious,
    'routescope.compareTwoPrompts': runs.compareTwoPrompts,
    'routescope.showRun': runs.showRun,
    'routescope.editPatch': patch.editPatch,
    'routescope.clearPatch': patch.clearPatch,
    'routescope.maskExpert': patch.maskExpert,
    'routescope.forceExpert': patch.forceExpert,
    'routescope.biasExpert': patch.biasExpert,
    'routescope.clearExpertEdits': patch.clearExpertEdits,
    'routescope.exportTrace': exportTrace,
    'routescope.remixC3po': adapt.remixC3po,
    'routescope.generateRerouted': adapt.generateRerouted,
    'routescope.routingHeadroom': adapt.routingHeadroom,
    'routescope.routingStatistics': stats.routingStatistics,
  };
  return [...adapt.disposables, ...stats.disposables, ...Object.entries(table).map(([id, handler]) => vscode.commands.registerCommand(id, handler))];
}
