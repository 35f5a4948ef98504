// `eval --expert-load`: the plain model's expert load per skill and MoE layer, over every prompt position of the
// multiple-choice items and at their last position alone (the one whose routing C3PO re-mixes).
import type { RoutingSpan } from '../../../common/src/routing';

/** Share of the top-k routing slots that go to each expert, per skill and MoE layer: over every prompt position,
 *  and at the last prompt position alone (the one whose routing C3PO re-mixes). */
export interface ExpertLoadJSON {
  layers: number[];
  experts: number;
  per_skill: Record<string, { tokens: number; items: number; share: number[][]; last: number[][] }>;  // [layer row][expert], rows sum to 1
}

export class ExpertLoad {
  private readonly counts = new Map<string, { tokens: number; items: number; all: Float64Array[]; last: Float64Array[] }>();
  private readonly row: Map<number, number>;
  constructor(readonly layers: number[], readonly experts: number) {
    this.row = new Map(layers.map((l, i) => [l, i]));
  }

  add(skill: string, r: RoutingSpan, lastPosition: number): void {
    const i = this.row.get(r.layer);
    if (i === undefined) return;
    let c = this.counts.get(skill);
    if (!c) {
      const rows = (): Float64Array[] => this.layers.map(() => new Float64Array(this.experts));
      this.counts.set(skill, (c = { tokens: 0, items: 0, all: rows(), last: rows() }));
    }
    if (i === 0) c.tokens += r.count;
    const k = r.topK;
    for (let t = 0; t < r.count; t++) {
      for (let j = 0; j < k; j++) {
        const e = r.experts[t * k + j];
        if (e < 0 || e >= this.experts) continue;
        c.all[i][e]++;
        if (r.start + t === lastPosition) c.last[i][e]++;
      }
      if (i === 0 && r.start + t === lastPosition) c.items++;
    }
  }

  toJSON(): ExpertLoadJSON {
    const norm = (rows: Float64Array[]): number[][] =>
      rows.map((s) => {
        const total = s.reduce((a, b) => a + b, 0);
        return Array.from(s, (v) => (total ? v / total : 0));
      });
    const perSkill: ExpertLoadJSON['per_skill'] = Object.create(null); // skills are user text ("__proto__" too)
    for (const skill of [...this.counts.keys()].sort()) {
      const c = this.counts.get(skill)!;
      perSkill[skill] = { tokens: c.tokens, items: c.items, share: norm(c.all), last: norm(c.last) };
    }
    return { layers: this.layers, experts: this.experts, per_skill: perSkill };
  }
}

/** Per MoE layer: skills × experts, percent of the routing slots over all prompt tokens | at the last prompt token;
 *  the largest share of each row in brackets. */
export function formatExpertLoad(load: ExpertLoadJSON): string {
  const skills = Object.keys(load.per_skill);
  if (skills.length === 0) return 'expert load: no multiple-choice items\n';
  const w = Math.max(5, ...skills.map((s) => s.length));
  const cells = (row: number[]): string => {
    const max = Math.max(...row);
    return row.map((v) => (v === max ? `[${(100 * v).toFixed(0)}]` : (100 * v).toFixed(0)).padStart(6)).join('');
  };
  const head = Array.from({ length: load.experts }, (_, e) => `e${e}`.padStart(6)).join('');
  const lines = ['', 'expert load, % of the top-k routing slots of the multiple-choice prompts ([max] per row):',
    'all prompt tokens | the last prompt token'];
  load.layers.forEach((layer, i) => {
    lines.push(`layer ${layer}`);
    lines.push(`${'skill'.padEnd(w)} ${head}  | ${head}`);
    for (const skill of skills) lines.push(`${skill.padEnd(w)} ${cells(load.per_skill[skill].share[i])}  | ${cells(load.per_skill[skill].last[i])}`);
  });
  return lines.join('\n') + '\n';
}
