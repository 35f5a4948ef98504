// Text formatting every front end shows the same way: token text with its whitespace made visible, counts and sizes.

/** A token's text made visible in one line: spaces as ·, newlines as ⏎, carriage returns as ↵, tabs as ⇥, other
 *  control characters as �; the empty string as ∅. */
export function visibleToken(text: string): string {
  let out = '';
  for (const ch of text) {
    if (ch === ' ') out += '·';
    else if (ch === '\n') out += '⏎';
    else if (ch === '\r') out += '↵';
    else if (ch === '\t') out += '⇥';
    else if (/\p{Cc}/u.test(ch)) out += '�';
    else out += ch;
  }
  return out === '' ? '∅' : out;
}

/** 1.9M, 692.9K, 2.09B. */
export function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}

/** Binary sizes: 3.8 MiB, 2.09 GiB. */
export function formatBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}

/** "1 token", "2 tokens", "0 prompts": a count with its noun in the right number. */
export function plural(n: number, noun: string, pluralNoun = `${noun}s`): string {
  return `${n.toLocaleString('en-US')} ${n === 1 ? noun : pluralNoun}`;
}

/** Text on one line (runs of whitespace become one space), cut to `max` characters with an ellipsis. */
export function oneLineText(text: string, max = 40): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}
