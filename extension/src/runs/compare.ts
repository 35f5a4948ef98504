// The host's comparison of two runs: the one run diff (common/src/runDiff.ts) and the line the notification and the
// output channel show. The routing panel words its summary with the same describeRunDiff, from the same rule.
import { describeNextTokenChange, describeRunDiff, diffRuns, type RunDiff } from '../../../common/src/runDiff';
import { routedRun, type Run } from './run';

/** Run B against run A (the panel's first band; the earlier or unpatched run when one was made from the other). */
export function compareRuns(a: Run, b: Run): { diff: RunDiff; summary: string } {
  const diff = diffRuns(routedRun(a), routedRun(b));
  const next = diff.nextToken ? `; ${describeNextTokenChange(diff.nextToken)}` : '';
  return { diff, summary: `run #${a.id} vs #${b.id}: ${describeRunDiff(diff)}${next}` };
}
