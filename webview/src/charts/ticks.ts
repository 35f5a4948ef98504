// Axis ticks (pure; no DOM): "nice" values at 1–2–5 steps, the digits that tell them apart, and how many labels
// to skip so they do not overlap.

/** Tick values covering [min, max] at a 1–2–5 step, about `count` of them. */
export function niceTicks(min: number, max: number, count = 5): number[] {
  if (!Number.isFinite(min) || !Number.isFinite(max)) return [];
  if (max < min) [min, max] = [max, min];
  if (max === min) return [min];
  const raw = (max - min) / Math.max(1, count);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? 10 * magnitude;
  const ticks: number[] = [];
  for (let v = Math.ceil(min / step - 1e-9) * step; v <= max + step * 1e-9; v += step) ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return ticks;
}

/** Decimal places that show the difference between neighbouring ticks. */
export function tickDigits(ticks: number[]): number {
  if (ticks.length < 2) return 2;
  const step = Math.abs(ticks[1] - ticks[0]);
  return Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9)));
}

/** Every n-th label fits: the step that keeps labels `labelWidth` wide from overlapping in cells `cell` wide. */
export function labelStep(cell: number, labelWidth: number): number {
  if (cell <= 0) return 1;
  const step = Math.ceil((labelWidth + 4) / cell);
  for (const nice of [1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100]) if (nice >= step) return nice;
  return step;
}
