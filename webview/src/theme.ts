// Canvas colours come from the --vscode-* CSS variables VS Code sets on the webview, read from the computed style
// and re-read when VS Code switches theme (it changes the body's vscode-light / vscode-dark / vscode-high-contrast
// class). High-contrast themes get cell borders and thicker outlines.
import { packRgba, parseCssColor, rgbaCss } from './colors';
import type { Rgba } from './colors';

export interface Theme {
  kind: 'light' | 'dark' | 'high-contrast' | 'high-contrast-light';
  highContrast: boolean;
  background: string;
  foreground: string;
  muted: string;
  focus: string;
  border: string | undefined;       // contrastBorder (high contrast only)
  activeBorder: string | undefined; // contrastActiveBorder (high contrast only)
  widget: string;
  changed: string;   // top-1 expert changed
  partial: string;   // some of the top-k changed
  accent: string;    // prompt/generation boundary
  masked: string;
  fontFamily: string;
  monoFamily: string;
  fontSize: number;
  /** Packed colours for ImageData. */
  packed: { background: number; unchanged: number; changed: number; partial: number; missing: number };
}

function cssVar(style: CSSStyleDeclaration, name: string, fallback: string): string {
  const v = style.getPropertyValue(name).trim();
  return v || fallback;
}

function mix(a: Rgba, b: Rgba, t: number): Rgba {
  return [0, 1, 2, 3].map((i) => Math.round(a[i] * (1 - t) + b[i] * t)) as Rgba;
}

export function readTheme(): Theme {
  const style = getComputedStyle(document.body);
  const cls = document.body.classList;
  const kind: Theme['kind'] = cls.contains('vscode-high-contrast-light')
    ? 'high-contrast-light'
    : cls.contains('vscode-high-contrast')
      ? 'high-contrast'
      : cls.contains('vscode-light')
        ? 'light'
        : 'dark';
  const dark = kind === 'dark' || kind === 'high-contrast';
  const highContrast = kind.startsWith('high-contrast');
  const background = cssVar(style, '--vscode-editor-background', dark ? '#1e1e1e' : '#ffffff');
  const foreground = cssVar(style, '--vscode-editor-foreground', dark ? '#cccccc' : '#333333');
  const border = highContrast ? cssVar(style, '--vscode-contrastBorder', dark ? '#6fc3df' : '#0f4a85') : undefined;
  const activeBorder = highContrast ? cssVar(style, '--vscode-contrastActiveBorder', dark ? '#f38518' : '#0f4a85') : undefined;
  const changed = cssVar(style, '--vscode-charts-red', dark ? '#f14c4c' : '#e51400');
  const partial = cssVar(style, '--vscode-charts-orange', dark ? '#d18616' : '#d18616');
  const bg = parseCssColor(background) ?? [30, 30, 30, 255];
  const fg = parseCssColor(foreground) ?? [204, 204, 204, 255];
  const unchanged = mix(bg, fg, highContrast ? 0.25 : 0.12);
  const missing = mix(bg, fg, 0.05);
  return {
    kind,
    highContrast,
    background,
    foreground,
    muted: cssVar(style, '--vscode-descriptionForeground', rgbaCss(mix(bg, fg, 0.7))),
    focus: cssVar(style, '--vscode-focusBorder', dark ? '#007fd4' : '#0090f1'),
    border,
    activeBorder,
    widget: cssVar(style, '--vscode-editorWidget-background', rgbaCss(mix(bg, fg, 0.06))),
    changed,
    partial,
    accent: cssVar(style, '--vscode-charts-blue', dark ? '#3794ff' : '#1a85ff'),
    masked: cssVar(style, '--vscode-errorForeground', changed),
    fontFamily: cssVar(style, '--vscode-font-family', 'system-ui, sans-serif'),
    monoFamily: cssVar(style, '--vscode-editor-font-family', 'monospace'),
    fontSize: parseFloat(cssVar(style, '--vscode-font-size', '13')) || 13,
    packed: {
      background: packRgba([...bg.slice(0, 3), 255] as Rgba),
      unchanged: packRgba([...unchanged.slice(0, 3), 255] as Rgba),
      changed: packRgba(parseCssColor(changed) ?? [229, 20, 0, 255]),
      partial: packRgba(parseCssColor(partial) ?? [209, 134, 22, 255]),
      missing: packRgba([...missing.slice(0, 3), 255] as Rgba),
    },
  };
}

/** Calls `onChange` whenever VS Code switches theme (body class changes). */
export function watchTheme(onChange: () => void): void {
  new MutationObserver(onChange).observe(document.body, { attributes: true, attributeFilter: ['class'] });
}
