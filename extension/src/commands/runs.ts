// Run commands: Inspect Routing, Generate, Re-run with Patch, Compare with Previous Run, Compare Two Prompts, Show
// Run, Cancel Run. Engine work runs under withRunProgress (progress.ts): Cancel in its notification or in the routing
// panel reaches the engine process; a comparison's counts come from runs/compare.ts, the rule the routing panel draws.
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
import { resolvePrompt, toInput } from './prompts';
import { pickTwoPrompts } from './promptPairs';
import { withRunProgress } from './progress';
import { oneLineText, plural } from '../../../common/src/format';

export type RunKindRequested = 'inspect' | 'generate';

export function runCommands(c: CommandContext, models: ModelCommands) {
  const { session } = c;
  const out = session.output;
  /** Runs in progress: id → cancel. */
  const running = new Map<number, () => void>();

  /** Runs `text` (with the session's patch unless `patch` says otherwise: null = none), streaming to the panel. */
  const execute = async (kind: RunKindRequested, text: string, options: { baseRunId?: number; show?: boolean; label?: string; patch?: RoutingPatch | null } = {}): Promise<Run | undefined> => {
    const patch = options.patch === null ? undefined : (options.patch ?? session.activePatch);
    let run: Run | undefined;
    try {
      const input = toInput(session, text);
      const id = session.runs.nextId();
      return await withRunProgress(
        kind === 'inspect' ? 'Routescope: inspecting routing' : 'Routescope: generating',
        async (progress) => {
          const token = progress.token;
          const numLayers = session.model?.info.moeLayers.length ?? 0;
          const seen = new Set<number>();
          const request = {
            id,
            input,
            ...(patch ? { patch } : {}),
            ...(options.baseRunId !== undefined ? { baseRunId: options.baseRunId } : {}),
            ...(options.label ? { label: options.label } : {}),
            token,
            onUpdate: (r: Run, span?: RoutingSpan) => {
              if (span && !seen.has(span.layer)) {
                seen.add(span.layer);
                if (kind === 'inspect') progress.report(`layer ${seen.size}/${numLayers}`, 100 / Math.max(1, numLayers));
              } else if (!span) {
                progress.report(plural(r.tokens.length - r.promptTokens, 'token'));
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
          out.appendLine(`run #${done.id} (${kind}) finished: ${plural(done.tokens.length, 'token')} in ${((done.finishedAt! - done.startedAt) / 1000).toFixed(2)} s${done.patch ? ', patched' : ''}`);
          return done;
        },
        (cancelRun) => running.set(id, cancelRun),
      ).finally(() => running.delete(id));
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
    const run = await execute(kind, text);
    if (run && kind === 'generate') announceGenerated(run);
    return run;
  };

  /** The generated text as text: the output channel gets all of it, a notification the start (and a way to copy). */
  const announceGenerated = (run: Run): void => {
    const generated = run.generatedText ?? '';
    const count = run.tokens.length - run.promptTokens;
    out.appendLine(`run #${run.id} generated ${plural(count, 'token')}:\n${run.prompt}${generated}`);
    const shown = oneLineText(generated, 160);
    void vscode.window.showInformationMessage(`Routescope: generated ${plural(count, 'token')}: “${shown}”`, 'Copy Text', 'Show Output').then((choice) => {
      if (choice === 'Copy Text') void vscode.env.clipboard.writeText(generated);
      else if (choice === 'Show Output') out.show(true);
    });
  };

  /** Cancels a run still in progress (from the routing panel's Cancel). */
  const cancelRun = (id: unknown): void => {
    if (typeof id === 'number') running.get(id)?.();
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

  /** Shows run A (the earlier, or the unpatched one) against run B in the routing panel and reports the difference
   *  B − A (the panel counts the same). */
  const showComparison = (a: Run, b: Run): void => {
    c.display()?.show(a, { compare: b });
    try {
      const { summary } = compareRuns(a, b);
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
    showComparison(base, run);
  };

  /** Two prompts (from prompt files, an editor holding two "## " sections, or typed), inspected and compared. */
  const compareTwoPrompts = async (arg?: unknown): Promise<void> => {
    if (!(await models.ensureModel())) return;
    const pair = await pickTwoPrompts(session, arg);
    if (!pair) return;
    const [first, second] = pair;
    const a = await execute('inspect', first, { show: false });
    if (!a) return;
    const b = await execute('inspect', second, { show: false, baseRunId: a.id });
    if (!b) return;
    // A is the first prompt, B the second, in the panel as in the order they were given.
    showComparison(a, b);
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
    // A without the patch, B with it: Δ = B − A and "e3 → e5" say what the patch did.
    if (rerun) showComparison(unpatched, rerun);
    return rerun;
  };

  const showRun = (arg: unknown): void => {
    const run = runFromArg(c, arg);
    if (!run) return;
    session.runs.select(run.id);
    const base = run.baseRunId !== undefined ? session.runs.get(run.baseRunId) : undefined;
    // A run made against a base (a re-run with the patch, the second of two prompts) is B, as when it was made.
    if (base) c.display()?.show(base, { compare: run });
    else c.display()?.show(run);
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
    cancelRun,
  };
}

export type RunCommands = ReturnType<typeof runCommands>;
