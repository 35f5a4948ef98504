// "Routing Statistics over a Prompt Set…": a prompt file, a JSONL set or a folder (Explorer, palette on the active
// editor's file, or picked) runs through the engine process, which aggregates the routing as it streams
// (stats/requests.ts → stats/collect.ts, the code `routescope stats` runs), with progress and cancel; the statistics
// panel (views/statsPanel.ts) shows the aggregate. From the panel: a top context opened as its prompt, the paired-set
// steering re-run (stats/steer.ts in the engine process), exports in the CLI's formats (stats/export.ts).
import * as path from 'node:path';
import * as vscode from 'vscode';
import { serializePatch } from '../../../common/src/patch';
import { activationDifference, describeExperts, steeringPatch } from '../../../common/src/statsQueries';
import type { StatsPanelData, SteeringState } from '../../../common/src/statsProtocol';
import { statsCsv, statsSafetensors } from '../stats/export';
import { readPromptSet, type GroupBy, type PromptSet } from '../stats/promptSet';
import type { StatsPrompt } from '../stats/protocol';
import { StatsPanel } from '../views/statsPanel';
import { report, type CommandContext } from './context';
import type { ModelCommands } from './models';
import { withRunProgress } from './progress';

const PROMPT_SET = /\.(jsonl|md|txt)$/i;

const toRequest = (set: PromptSet, keep?: (group: number) => boolean): StatsPrompt[] =>
  set.prompts.filter((p) => !keep || keep(p.group)).map((p) => ({ text: p.text, group: p.group, ...(p.task ? { task: p.task } : {}) }));

export function statsCommands(c: CommandContext, models: ModelCommands) {
  const { session } = c;
  const out = session.output;

  /** The inputs the command names: Explorer selection (one or several), else the active editor's file, else picked. */
  const sourcesOf = async (arg?: unknown, args?: unknown): Promise<string[] | undefined> => {
    if (Array.isArray(args) && args.length > 0 && args.every((a) => a instanceof vscode.Uri)) return (args as vscode.Uri[]).map((u) => u.fsPath);
    if (arg instanceof vscode.Uri) return [arg.fsPath];
    if (Array.isArray(arg) && arg.every((a) => typeof a === 'string')) return arg as string[];
    if (typeof arg === 'string') return [arg];
    // The active editor's file; else the active tab's (the editor may not have reached the extension host yet).
    const tab = vscode.window.tabGroups.activeTabGroup.activeTab?.input;
    const uri = vscode.window.activeTextEditor?.document.uri ?? (tab instanceof vscode.TabInputText ? tab.uri : undefined);
    if (uri && uri.scheme === 'file' && PROMPT_SET.test(uri.fsPath)) {
      const doc = vscode.workspace.textDocuments.find((d) => d.uri.toString() === uri.toString());
      if (doc?.isDirty) await doc.save();
      return [uri.fsPath];
    }
    const uris = await vscode.window.showOpenDialog({
      canSelectFiles: true,
      canSelectFolders: true,
      canSelectMany: true,
      filters: { 'Prompt sets': ['jsonl', 'md', 'txt'] },
      openLabel: 'Run Statistics',
      title: 'Routing statistics: prompt files (*.prompts.md, *.jsonl), a labelled task set, or folders of .txt / .md files; pick two to compare them',
    });
    return uris?.length ? uris.map((u) => u.fsPath) : undefined;
  };

  const describe = (set: PromptSet): string => set.sources.map((s) => path.basename(s)).join(', ');

  const run = async (set: PromptSet, groupBy: GroupBy): Promise<StatsPanelData | undefined> => {
    const loaded = session.model;
    if (!loaded) return undefined;
    const info = loaded.info;
    const source = describe(set);
    const model = `${info.modelType} · ${info.moeLayers.length} MoE layers × ${info.numExperts} experts, top-${info.topK}`;
    panel.begin({ source, sources: set.sources, model, total: set.prompts.length, groups: set.groups, layers: info.moeLayers, numExperts: info.numExperts }, set);
    try {
      const outcome = await withRunProgress(`Routescope: routing statistics of ${source}`, async (progress) => {
        let reported = 0;
        return session.host.request('collectStats', { prompts: toRequest(set), groups: set.groups }, {
          token: progress.token,
          onEvent: (event) => {
            progress.report(`${event.done} of ${event.total} prompts`, (100 * (event.done - reported)) / event.total);
            reported = event.done;
            panel.report(event);
          },
        });
      });
      const data: StatsPanelData = {
        source, sources: set.sources, model, groupBy,
        result: outcome.result,
        tokenTexts: outcome.tokenTexts,
        promptIds: set.prompts.map((p) => p.id),
        labelled: set.labelled,
        completed: outcome.completed,
        total: set.prompts.length,
        cancelled: outcome.cancelled,
        seconds: outcome.seconds,
      };
      panel.finish(data);
      const r = outcome.result;
      out.appendLine(`routing statistics of ${set.sources.join(', ')}: ${r.prompts} prompts counted, ${r.skipped} skipped, ${outcome.seconds.toFixed(1)} s${outcome.cancelled ? ' (cancelled)' : ''}`);
      if (outcome.cancelled) void vscode.window.showInformationMessage(`Routescope: routing statistics cancelled; the panel shows the ${outcome.completed} of ${set.prompts.length} prompts that finished.`);
      return data;
    } catch (error) {
      panel.fail(error instanceof Error ? error.message : String(error));
      report(c, 'Routing Statistics', error);
      return undefined;
    }
  };

  const routingStatistics = async (arg?: unknown, args?: unknown): Promise<StatsPanelData | undefined> => {
    if (!(await models.ensureModel())) return undefined;
    try {
      const sources = await sourcesOf(arg, args);
      if (!sources) return undefined;
      // As the CLI: several inputs are compared file by file, one input by its "skill" field.
      const groupBy: GroupBy = sources.length > 1 ? 'file' : 'skill';
      return await run(readPromptSet(sources, groupBy), groupBy);
    } catch (error) {
      report(c, 'Routing Statistics', error);
      return undefined;
    }
  };

  const panel = new StatsPanel(c.context, {
    async openContext(set, request) {
      const prompt = set.prompts[request.prompt];
      if (!prompt) return;
      try {
        const { tokenText } = await session.host.request('tokenize', { text: prompt.text });
        panel.showContext({ prompt: request.prompt, id: prompt.id, group: set.groups[prompt.group], tokens: tokenText, position: request.position, layer: request.layer, expert: request.expert, weight: request.weight });
      } catch (error) {
        report(c, 'Open Context', error);
      }
    },
    async steer(data, set, request) {
      const info = session.model?.info;
      if (!info) return;
      const ia = set.groups.indexOf(request.a);
      const ib = set.groups.indexOf(request.b);
      let state: SteeringState | undefined;
      try {
        if (ia < 0 || ib < 0 || ia === ib) throw new Error(`steering needs two different groups of the set (groups: ${set.groups.join(', ')})`);
        const ranking = activationDifference(data.result, request.a, request.b);
        const plan = steeringPatch(ranking, request.side, request.n, request.mode, info);
        const sideName = request.side === 'A' ? request.a : request.b;
        if (plan.experts.length === 0) throw new Error(`no expert is more active in ${sideName} than in ${request.side === 'A' ? request.b : request.a}`);
        state = {
          status: 'running', a: request.a, b: request.b, side: request.side, mode: request.mode,
          experts: plan.experts, skipped: plan.skipped.map((s) => ({ layer: s.expert.layer, expert: s.expert.expert, reason: s.reason })), patch: plan.patch,
          done: 0, total: set.prompts.filter((p) => p.group === ia || p.group === ib).length,
        };
        panel.setSteering(state);
        const running = state;
        const outcome = await withRunProgress(
          `Routescope: ${request.mode === 'mask' ? 'masking' : 'forcing'} ${describeExperts(plan.experts)} and re-running ${request.a} and ${request.b}`,
          (progress) => session.host.request('steerStats', { prompts: toRequest(set, (g) => g === ia || g === ib), groups: set.groups, run: [ia, ib], patch: plan.patch }, {
            token: progress.token,
            onEvent: (event) => {
              progress.report(`${event.done} of ${event.total} prompts`, 100 / event.total);
              panel.setSteering({ ...running, done: event.done, total: event.total });
            },
          }),
        );
        panel.setSteering({ ...running, status: outcome.cancelled ? 'cancelled' : 'done', done: outcome.completed, total: outcome.total, outcome });
        out.appendLine(`steering (${request.mode} ${describeExperts(plan.experts)}): ${serializePatch(plan.patch)}; ${outcome.groups.map((g) => `${g.group}: ${g.accuracy ? `accuracy ${(100 * g.accuracy.before).toFixed(1)} % → ${(100 * g.accuracy.after).toFixed(1)} %` : g.nextToken ? `next-token TV ${g.nextToken.meanTotalVariation.toFixed(3)}` : `${g.prompts} prompts`}`).join('; ')}`);
      } catch (error) {
        if (state) panel.setSteering({ ...state, status: 'failed', error: error instanceof Error ? error.message : String(error) });
        report(c, 'Steering', error);
      }
    },
    applyPatch(state) {
      try {
        session.setPatch(state.patch, 'steering patch');
        void vscode.window.showInformationMessage(`Routescope: the routing patch now ${state.mode === 'mask' ? 'masks' : 'forces'} ${describeExperts(state.experts)}; Inspect Routing and Generate apply it.`);
      } catch (error) {
        report(c, 'Use Steering Patch', error);
      }
    },
    async exportStats(data, set, format, pair) {
      const info = session.model?.info;
      const folder = vscode.workspace.workspaceFolders?.[0]?.uri ?? vscode.Uri.file(path.dirname(set.sources[0]));
      const base = `routing-stats-${path.basename(set.sources[0]).replace(/\.[^.]+$/, '')}`;
      const target = await vscode.window.showSaveDialog({
        title: format === 'csv' ? 'Routescope: a folder for the statistics as CSV files' : 'Routescope: export the routing statistics',
        defaultUri: vscode.Uri.joinPath(folder, format === 'csv' ? `${base}-csv` : `${base}.safetensors`),
        ...(format === 'csv' ? {} : { filters: { 'Routing statistics (safetensors)': ['safetensors'] } }),
        saveLabel: 'Export',
      });
      if (!target) return;
      try {
        const ranking = pair ? activationDifference(data.result, pair[0], pair[1]) : undefined;
        const exportInfo = { model: { dir: info?.dir ?? '', modelType: info?.modelType ?? '' }, sources: set.sources, ...(pair && ranking ? { pair: { a: pair[0], b: pair[1], ranking } } : {}) };
        if (format === 'csv') {
          const texts = new Map<number, string>();
          data.tokenTexts.ids.forEach((id, i) => texts.set(id, data.tokenTexts.texts[i]));
          const files = statsCsv(data.result, exportInfo, (id) => texts.get(id) ?? `#${id}`);
          await vscode.workspace.fs.createDirectory(target);
          for (const [name, text] of Object.entries(files)) await vscode.workspace.fs.writeFile(vscode.Uri.joinPath(target, name), Buffer.from(text, 'utf8'));
          out.appendLine(`exported routing statistics to ${target.fsPath}: ${Object.keys(files).join(', ')}`);
          void vscode.window.showInformationMessage(`Routescope: routing statistics saved as ${Object.keys(files).length} CSV files in ${path.basename(target.fsPath)}.`);
        } else {
          const bytes = statsSafetensors(data.result, exportInfo);
          await vscode.workspace.fs.writeFile(target, bytes);
          out.appendLine(`exported routing statistics to ${target.fsPath} (${bytes.length} bytes)`);
          void vscode.window.showInformationMessage(`Routescope: routing statistics saved to ${path.basename(target.fsPath)}.`);
        }
      } catch (error) {
        report(c, 'Export Routing Statistics', error);
      }
    },
    inspectPrompt(text) {
      void vscode.commands.executeCommand('routescope.inspectRouting', text);
    },
    rerun(sources) {
      void routingStatistics(sources);
    },
  });

  return { routingStatistics, disposables: [panel] as vscode.Disposable[] };
}
