// `routescope headroom`: the routing-headroom analysis over labelled items (adapt/headroom.ts) — ANALYSIS ONLY, it
// searches every routing change with the item's label. Ctrl-C stops after the current item and prints what finished.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { formatHeadroom, runHeadroom } from '../adapt/headroom';
import { DEFAULT_HEADROOM, checkHeadroomSettings, type HeadroomSettings } from '../adapt/settings';
import { openLog, progress, readItems, withItemRunner } from './adapt';
import { CliError, UsageError, parseInteger, parseIntegerList } from './args';
import { jsonText } from './output';
import { action, commonOptions, itemByItem, out, type CommonOptions } from './setup';

interface HeadroomCliOptions extends CommonOptions {
  data: string;
  limit?: string;
  log?: string;
  layers?: string;
  candidates?: string;
  moves?: string;
  steps?: string;
  joint: boolean;
}

async function headroom(options: HeadroomCliOptions): Promise<void> {
  const settings: HeadroomSettings = { ...DEFAULT_HEADROOM, layers: [], joint: options.joint };
  if (options.layers !== undefined) settings.layers = parseIntegerList('--layers', options.layers);
  if (options.candidates !== undefined) settings.candidates = parseInteger('--candidates', options.candidates, 0);
  if (options.moves !== undefined) settings.moves = parseInteger('--moves', options.moves, 0);
  if (options.steps !== undefined) settings.steps = parseInteger('--steps', options.steps, 0);
  checkHeadroomSettings(settings);
  const items = readItems(options);
  await withItemRunner(options, async ({ info, session, runner }) => {
    const bad = settings.layers.find((l) => !info.moeLayers.includes(l));
    if (bad !== undefined) throw new UsageError(`--layers: layer ${bad} has no router (MoE layers: ${info.moeLayers.join(',')})`);
    const logFd = openLog(options.log);
    try {
      if (!options.json) out(`routing headroom (ANALYSIS ONLY: uses the labels) on ${items.length} items of ${options.data}\n`);
      const summary = await itemByItem(session, (shouldStop) =>
        runHeadroom({
          session,
          runner,
          items,
          settings,
          shouldStop,
          onRecord: (record) => {
            if (logFd !== undefined) fs.writeSync(logFd, jsonText(record) + '\n');
          },
          onProgress: (p) => progress(`[${p.done}/${p.total}] right ${p.right}, wrong fixed by routing ${p.fixed}`, p.done, p.total),
        }),
      );
      if (options.json) out(jsonText({ ...summary, ...(options.log ? { log: path.resolve(options.log) } : {}) }) + '\n');
      else out(formatHeadroom(summary) + (options.log ? `log: ${options.log}\n` : ''));
      if (summary.cancelled) {
        throw new CliError(`cancelled after ${summary.completed} of ${summary.items} items${options.log ? `; ${options.log} holds them` : ''}`, 130);
      }
    } finally {
      if (logFd !== undefined) fs.closeSync(logFd);
    }
  });
}

export function registerHeadroomCommand(program: Command): void {
  commonOptions(program.command('headroom').description('ANALYSIS ONLY: how far the routing of the last prompt position can move each labelled answer, per layer'))
    .requiredOption('--data <file>', 'labelled items (JSONL: multiple choice or generative)')
    .option('--limit <n>', 'only the first n items')
    .option('--log <file>', 'per-item JSONL log (the change found per layer and together)')
    .option('--layers <list>', 'MoE layers searched one by one (default: every MoE layer)')
    .option('--candidates <n>', `swaps run exactly per greedy move, ranked by their first-order effect (default ${DEFAULT_HEADROOM.candidates}; 0 = all)`)
    .option('--moves <n>', 'greedy moves per layer (default: top-k)')
    .option('--steps <n>', `Adam steps on log ω after the greedy search (default ${DEFAULT_HEADROOM.steps})`)
    .option('--no-joint', 'skip the search over every layer together')
    .action(action(headroom));
}
