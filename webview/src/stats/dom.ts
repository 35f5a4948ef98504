// Small DOM helpers of the statistics panel's page (elements without innerHTML, numbers as the views print them).
export type Child = Node | string | undefined | false;
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string | number | boolean | undefined> = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (k === 'class') el.className = String(v);
    else if (k === 'text') el.textContent = String(v);
    // Through the CSSOM: the Content-Security-Policy refuses style attributes.
    else if (k === 'style') for (const decl of String(v).split(';')) {
      const [name, value] = decl.split(':');
      if (name && value) el.style.setProperty(name.trim(), value.trim());
    }
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== undefined && c !== false) el.append(c);
  return el;
}
export const byId = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;
export const pct = (x: number, d = 1): string => `${(100 * x).toFixed(d)} %`;
export const points = (x: number, d = 1): string => `${x > 0 ? '+' : x < 0 ? '−' : ''}${Math.abs(100 * x).toFixed(d)}`;
export const count = (n: number): string => n.toLocaleString('en-US');
export const num = (td: HTMLTableCellElement, value: number): HTMLTableCellElement => {
  td.dataset.value = String(value);
  td.className = 'num';
  return td;
};
export function option(value: string, label: string, selected: boolean): HTMLOptionElement {
  const o = h('option', { value, text: label });
  o.selected = selected;
  return o;
}

