// Run commands: Inspect Routing, Generate, Re-run with Patch, Compare with Previous Run, Compare Two Prompts, Show
// Run. Engine work runs under a cancellable progress notification whose Cancel reaches the engine process; a
// comparison's counts come from runs/compare.ts, the same rule the routing panel draws.
import * as vscode from 'vscode';
import type { RoutingPatch } from '../../../common/src/patch';
import type { RoutingSpan } from '../../../common/src/routing';
import { isCancelled } from '../engine/protocol';
import { compareRuns } from '../runs/compare';
import type { Run } from '../runs/run';
import { inspectRun, generateRun } from '../runs/runner';
import { editorSettings } from '../editorConfig';
import { errorText, report, runFromArg, type CommandContext } from './context';
import type { ModelCommands } from './models';
import { askPrompt, resolvePrompt, toInput } from './prompts';

export type RunKindRequested = 'inspect' | 'generate';

export function runCommands(c: CommandContext, models: ModelCommands) {
  const { session } = c;
  const out = session.output;

  /** Runs `text` (with the session's patch unless `patch` says otherwise: null = none), streaming to the panel. */
  const execute = async (kind: RunKindRequested, text: string, options: { baseRunId?: number; show?: boolean; label?: string; patch?: RoutingPatch | null } = {}): Promise<Run | undefined> => {
    const patch = options.patch === null ? undefined : (options.patch ?? session.activePatch);
    let run: Run | undefined;
    try {
      const input = toInput(session, text);
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
            onUpdate: (r: Run, span?: RoutingSpan) => {
              if (span && !seen.has(span.layer)) {
                seen.add(span.layer);
                if (kind === 'inspect') progress.report({ message: `layer ${seen.size}/${numLayers}`, increment: 100 / Math.max(1, numLayers) });
              } else if (!span) {
                progress.report({ message: `${r.tokens.length - r.promptTokens} tokens` });
              }
              session.runs.updated(r);
              c.display()?.update(r, span);
            },
          };
          const onStart = (r: Run): void => {
            run = r;
            session.runs.add(r);
            if (options.show !== false) c.display()?.show(r);
          };
          const done = kind === 'inspect'
            ? await inspectRun(session.host, request, onStart)
            : await generateRun(session.host, { ...request, maxNewTokens: editorSettings().maxNewTokens }, onStart);
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
      report(c, kind === 'inspect' ? 'Inspect Routing' : 'Generate', error);
      return undefined;
    }
  };

  const runCommand = (kind: RunKindRequested) => async (arg?: unknown): Promise<Run | undefined> => {
    if (!(await models.ensureModel())) return undefined;
    const text = await resolvePrompt(session, arg, kind === 'inspect' ? 'Routescope: Inspect Routing' : 'Routescope: Generate');
    if (text === undefined) return undefined;
    return execute(kind, text);
  };

  /** A finished run picked from a quick pick (newest first). */
  const pickRun = async (title: string, exclude?: Run): Promise<Run | undefined> => {
    const runs = [...session.runs.all()].reverse().filter((r) => r !== exclude && r.finishedAt !== undefined && !r.error);
    if (runs.length === 0) return undefined;
    const picked = await vscode.window.showQuickPick(
      runs.map((r) => ({ label: r.label, description: `#${r.id} · ${r.tokens.length} tokens${r.patch ? ' · patched' : ''}`, run: r })),
      { title },
    );
    return picked?.run;
  };

  /** Shows `run` against `base` in the routing panel and reports the difference (the panel counts the same). */
  const showComparison = (run: Run, base: Run): void => {
    c.display()?.show(run, { compare: base });
    try {
      const { summary } = compareRuns(run, base);
      out.appendLine(summary);
      void vscode.window.showInformationMessage(`Routescope: ${summary}.`);
    } catch (error) {
      report(c, 'Compare', error);
    }
  };

  const compareWithPrevious = async (arg?: unknown): Promise<void> => {
    const run = runFromArg(c, arg) ?? session.runs.selected ?? session.runs.all().at(-1);
    if (!run) return;
    const base = (run.baseRunId !== undefined ? session.runs.get(run.baseRunId) : undefined) ?? session.runs.previous(run);
    if (!base) {
      void vscode.window.showInformationMessage('Routescope: there is no earlier run on this model to compare with.');
      return;
    }
    showComparison(run, base);
  };

  const compareTwoPrompts = async (): Promise<void> => {
    if (!(await models.ensureModel())) return;
    const first = await askPrompt(session, 'Routescope: Compare Two Prompts (1/2)');
    if (first === undefined) return;
    const second = await askPrompt(session, 'Routescope: Compare Two Prompts (2/2)', first);
    if (second === undefined) return;
    const a = await execute('inspect', first, { show: false });
    if (!a) return;
    const b = await execute('inspect', second, { show: false, baseRunId: a.id });
    if (!b) return;
    showComparison(b, a);
  };

  /** The run's prompt without and with the session's patch, compared (the patch is the one the host holds). */
  const rerunWithPatch = async (arg?: unknown): Promise<Run | undefined> => {
    const base = runFromArg(c, arg) ?? session.runs.selected;
    if (!base) return undefined;
    if (!(await models.ensureModel())) return undefined;
    const patch = session.activePatch;
    if (!patch) {
      void vscode.window.showInformationMessage('Routescope: the routing patch is empty: right-click an expert in the Layers view, edit it in the routing panel, or run "Routescope: Edit Routing Patch" first.');
      return undefined;
    }
    const kind = base.kind === 'generate' ? 'generate' : 'inspect';
    // The comparison is against the same prompt without the patch: reuse the base when it was unpatched.
    const unpatched = base.patch ? await execute(kind, base.prompt, { patch: null, show: false }) : base;
    if (!unpatched) return undefined;
    const rerun = await execute(kind, base.prompt, { baseRunId: unpatched.id, show: false, patch });
    if (rerun) showComparison(rerun, unpatched);
    return rerun;
  };

  const showRun = (arg: unknown): void => {
    const run = runFromArg(c, arg);
    if (!run) return;
    session.runs.select(run.id);
    const base = run.baseRunId !== undefined ? session.runs.get(run.baseRunId) : undefined;
    c.display()?.show(run, base ? { compare: base } : undefined);
  };

  return {
    execute,
    pickRun,
    inspectRouting: runCommand('inspect'),
    generate: runCommand('generate'),
    rerunWithPatch,
    compareWithPrevious,
    compareTwoPrompts,
    showRun,
  };
}

export type RunCommands = ReturnType<typeof runCommands>;
