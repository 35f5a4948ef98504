// The host's comparison of two runs: the one run diff (common/src/runDiff.ts) and the line the notification and the
// output channel show. The routing panel words its summary with the same describeRunDiff, from the same rule.
import { describeNextTokenChange, describeRunDiff, diffRuns, type RunDiff } from '../../../common/src/runDiff';
import { routedRun, type Run } from './run';

/** Run `run` (A, the one shown) against `base` (B, the one it is compared with). */
export function compareRuns(run: Run, base: Run): { diff: RunDiff; summary: string } {
  const diff = diffRuns(routedRun(run), routedRun(base));
  const next = diff.nextToken ? `; ${describeNextTokenChange(diff.nextToken)}` : '';
  return { diff, summary: `run #${run.id} vs #${base.id}: ${describeRunDiff(diff)}${next}` };
}
