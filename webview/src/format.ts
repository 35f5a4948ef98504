// Small text formatting shared by the webview's views (pure; no DOM).

/** Token text with whitespace made visible: space ·, newline ↵, tab →; empty → ∅. */
export function visibleToken(text: string): string {
  if (!text) return '∅';
  return text.replace(/ /g, '·').replace(/\r?\n/g, '↵').replace(/\t/g, '→');
}

export function percent(v: number, digits = 1): string {
  return `${(v * 100).toFixed(digits)}%`;
}

export function fixed(v: number, digits = 2): string {
  return Number.isFinite(v) ? v.toFixed(digits) : '–';
}
