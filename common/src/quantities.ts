// The quantities Routescope shows, each with ONE name and ONE unit, used by every view (routing panel, side panel,
// statistics panel), the notifications, the CLI and the exports' column names: a number never appears under two
// names or in two units.

export interface Quantity {
  /** What it is called everywhere ("router entropy"). */
  name: string;
  /** Its unit as written after the name ("nats", "% of tokens"); '' for a plain number. */
  unit: string;
  /** One sentence for tooltips and the README. */
  meaning: string;
}

export const QUANTITY = {
  routerEntropy: {
    name: 'router entropy',
    unit: 'nats',
    meaning: 'H = −Σ p·ln p of the router softmax over all E experts: 0 = one expert takes everything, ln E = uniform',
  },
  top1Weight: { name: 'top-1 weight', unit: '', meaning: 'the mixing weight applied to the highest-weighted selected expert (0–1)' },
  routerLogit: { name: 'router logit', unit: '', meaning: 'the raw router output W_r·h of an expert, before any patch or softmax' },
  activationRate: {
    name: 'activation rate',
    unit: '% of tokens',
    meaning: 'the share of tokens whose top-k selection includes the expert (SteerMoE p = A / N)',
  },
  activationDifference: {
    name: 'activation-rate difference',
    unit: 'percentage points',
    meaning: 'activation rate in set A minus activation rate in set B (SteerMoE risk difference Δ)',
  },
  coActivation: {
    name: 'co-activation',
    unit: '% of tokens',
    meaning: 'the share of tokens whose top-k selection includes both experts',
  },
  routingFlow: {
    name: 'routing flow',
    unit: 'tokens',
    meaning: 'tokens whose top-1 expert is i in one MoE layer and j in the next',
  },
  probability: { name: 'probability', unit: '%', meaning: 'a next-token probability' },
} as const satisfies Record<string, Quantity>;

/** "router entropy (nats)", "top-1 weight". */
export function quantityLabel(q: Quantity): string {
  return q.unit ? `${q.name} (${q.unit})` : q.name;
}

/** Router entropy with its unit and the uniform maximum for E experts: "1.33 nats (uniform: ln 8 = 2.08 nats)". */
export function describeEntropy(nats: number, numExperts: number, digits = 2): string {
  return `${nats.toFixed(digits)} nats (uniform: ln ${numExperts} = ${Math.log(numExperts).toFixed(digits)} nats)`;
}
