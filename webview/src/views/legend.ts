// The legend above the grid: what the colours mean for the metric shown, with each metric's unit.
import type { Metric } from '../../../common/src/panelProtocol';
import { QUANTITY, quantityLabel } from '../../../common/src/quantities';
import { expertHex } from '../colors';
import { fixed } from '../format';
import type { RunRouting } from '../runData';
import type { Theme } from '../theme';

export const METRIC_LABELS: Record<Metric, string> = {
  expert: 'Top-1 expert',
  entropy: 'Router entropy (nats)',
  weight: 'Top-1 weight',
  change: 'Change vs compared run',
};

function observedRange(run: RunRouting, values: Float32Array[]): [number, number] | undefined {
  let min = Infinity;
  let max = -Infinity;
  values.forEach((row, r) => {
    for (let p = 0; p < Math.min(run.filled[r], run.T); p++) {
      min = Math.min(min, row[p]);
      max = Math.max(max, row[p]);
    }
  });
  return min <= max ? [min, max] : undefined;
}

export function renderLegend(legend: HTMLElement, o: { metric: Metric; primary: RunRouting | undefined; comparing: boolean; theme: Theme }): void {
  legend.replaceChildren();
  const add = (text: string, color?: string) => {
    const item = document.createElement('span');
    item.className = 'legend-item';
    if (color) {
      const sw = document.createElement('span');
      sw.className = 'swatch';
      sw.style.background = color;
      item.appendChild(sw);
    }
    item.appendChild(document.createTextNode(text));
    legend.appendChild(item);
  };
  const { metric, primary, theme } = o;
  if (metric === 'expert') {
    const E = primary?.E ?? 0;
    add('Colour = top-1 expert (the same colour in every run):');
    for (let e = 0; e < Math.min(E, 12); e++) add(String(e), expertHex(e));
    if (E > 12) add(`… ${E} experts`);
  } else if (metric === 'change') {
    add('Change against the compared run:');
    add('same experts', `var(--unchanged)`);
    add('some of the top-k replaced', theme.partial);
    add('top-1 expert changed', theme.changed);
  } else {
    const ramp = document.createElement('span');
    ramp.className = 'ramp';
    // Entropy is stored as a fraction of ln E (the colour position); it is written in nats.
    const E = primary?.E ?? 2;
    const scale = metric === 'entropy' ? Math.log(E) : 1;
    add(metric === 'entropy' ? `${quantityLabel(QUANTITY.routerEntropy)}: 0 (one expert)` : `${quantityLabel(QUANTITY.top1Weight)}: 0`);
    legend.appendChild(ramp);
    add(metric === 'entropy' ? `${fixed(scale, 2)} = ln ${E} (uniform)` : '1');
    if (primary) {
      const range = observedRange(primary, metric === 'entropy' ? primary.entropy : primary.top1Weight);
      if (range) add(`(this run: ${fixed(range[0] * scale, 3)} – ${fixed(range[1] * scale, 3)})`);
    }
  }
  if (o.comparing && metric !== 'change') add(' · bottom band Δ: red = top-1 changed, orange = other top-k changed');
}
