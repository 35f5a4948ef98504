// Number formatting of the webview's views (pure; no DOM). Token text is made visible by common/src/format.ts.

export function percent(v: number, digits = 1): string {
  return `${(v * 100).toFixed(digits)}%`;
}

export function fixed(v: number, digits = 2): string {
  return Number.isFinite(v) ? v.toFixed(digits) : '–';
}
