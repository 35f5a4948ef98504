// What one window works on: the engine process (EngineHost, serving the engine's and adaptation's requests), the open
// model, this session's runs, and the current routing patch (the one value type every edit produces; applied by
// the next Inspect / Generate / Re-run with Patch — the host holds it, views only send edits).
import * as vscode from 'vscode';
import { EngineHost } from './engine/host';
import type { CoreMethods, LoadResult } from './engine/protocol';
import type { AdaptMethods } from './adapt/protocol';
import type { StatsMethods } from './stats/protocol';
import { isEmptyPatch, validatePatch, type PatchModelShape, type RoutingPatch } from '../../common/src/patch';
import { applyPatchEdit, type PatchEdit } from '../../common/src/patchEdit';
import { RunStore } from './runs/store';

export type SessionMethods = CoreMethods & AdaptMethods & StatsMethods;

export class Session implements vscode.Disposable {
  readonly host: EngineHost<SessionMethods>;
  readonly runs = new RunStore();
  private currentPatch: RoutingPatch = { layers: {} };
  private readonly patchEmitter = new vscode.EventEmitter<RoutingPatch>();
  private readonly modelEmitter = new vscode.EventEmitter<LoadResult | undefined>();
  private readonly disposables: vscode.Disposable[] = [];
  /** Fired after the current patch changes. */
  readonly onDidChangePatch = this.patchEmitter.event;
  /** Fired when a model is opened or closed. */
  readonly onDidChangeModel = this.modelEmitter.event;

  constructor(readonly output: vscode.OutputChannel, workerPath: string) {
    this.host = new EngineHost<SessionMethods>({ workerPath, log: (line) => output.appendLine(line) });
    this.disposables.push(
      this.host.onDidChangeModel((loaded) => {
        void vscode.commands.executeCommand('setContext', 'routescope.modelLoaded', loaded !== undefined);
        this.modelEmitter.fire(loaded);
      }),
      this.host.onDidStart(() => void vscode.commands.executeCommand('setContext', 'routescope.engineRunning', true)),
      this.host.onDidExit((exit) => {
        void vscode.commands.executeCommand('setContext', 'routescope.engineRunning', false);
        if (!exit.expected) {
          void vscode.window.showErrorMessage(`Routescope: ${exit.message}.`, 'Show Engine Log').then((choice) => {
            if (choice) output.show(true);
          });
        }
      }),
      this.runs.onDidChange(() => {
        void vscode.commands.executeCommand('setContext', 'routescope.hasRuns', this.runs.size > 0);
        void vscode.commands.executeCommand('setContext', 'routescope.hasTwoRuns', this.runs.size > 1);
      }),
      this.patchEmitter,
      this.modelEmitter,
    );
    void vscode.commands.executeCommand('setContext', 'routescope.hasPatch', false);
  }

  get model(): LoadResult | undefined {
    return this.host.loaded;
  }

  /** What patches are validated against: the open model. */
  get modelShape(): PatchModelShape | undefined {
    return this.host.loaded?.info;
  }

  get patch(): RoutingPatch {
    return this.currentPatch;
  }

  /** The patch for the next run, or undefined when it has no edits. */
  get activePatch(): RoutingPatch | undefined {
    return isEmptyPatch(this.currentPatch) ? undefined : this.currentPatch;
  }

  /** Replaces the current patch after validating it against the open model (throws PatchError). */
  setPatch(patch: RoutingPatch, source = 'patch'): RoutingPatch {
    const valid = validatePatch(patch, source, this.modelShape);
    this.currentPatch = valid;
    void vscode.commands.executeCommand('setContext', 'routescope.hasPatch', !isEmptyPatch(valid));
    this.patchEmitter.fire(valid);
    return valid;
  }

  /** setPatch that returns the validator's message instead of throwing (undefined when the patch was taken). */
  trySetPatch(patch: RoutingPatch): string | undefined {
    try {
      this.setPatch(patch);
      return undefined;
    } catch (error) {
      return error instanceof Error ? error.message : String(error);
    }
  }

  /** One edit of the current patch (mask / force / bias an expert, …), validated like any patch. */
  editPatch(edit: PatchEdit): string | undefined {
    return this.trySetPatch(applyPatchEdit(this.currentPatch, edit));
  }

  dispose(): void {
    this.host.dispose();
    for (const d of this.disposables) d.dispose();
  }
}
