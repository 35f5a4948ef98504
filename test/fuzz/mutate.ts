// The JS fuzzer's inputs and mutations (test/fuzz/js-fuzz.ts): an input is a map of file name -> bytes, stored as
// JSON with base64 values; mutations are byte-level and JSON-aware, driven by a seeded generator (mulberry32).
// ---------------------------------------------------------------------------------------------------------------
// Inputs: a map of file name -> bytes (one entry for single-file targets); stored as JSON with base64 values.

export type Input = Map<string, Buffer>;

export function encodeInput(input: Input): Buffer {
  const o: Record<string, string> = {};
  for (const [k, v] of input) o[k] = v.toString('base64');
  return Buffer.from(JSON.stringify(o));
}

export function decodeInput(bytes: Buffer): Input | undefined {
  try {
    const o = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
    if (typeof o !== 'object' || o === null || Array.isArray(o)) return undefined;
    const input: Input = new Map();
    for (const [k, v] of Object.entries(o)) if (typeof v === 'string') input.set(k, Buffer.from(v, 'base64'));
    return input;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Mutations (mulberry32, so a seed reproduces a run).

export class Rng {
  constructor(private state: number) {}
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
}

const TOKENS = ['{', '}', '[', ']', ',', ':', '"', '\\', '\\u0000', '\\ud800', 'null', 'true', '-8', '-1', '0', '01', '1e300',
  '-1e300', '3.5e38', '1e999', 'NaN', 'Infinity', '"8"', '"__proto__"', '"constructor"', '"toString"', '\n', '\r\n', '##', '###',
  ' '.repeat(64), '```', '~~~', '#', '\t', '\u00a0', '\u2028', '\ud83d\ude00', '{"prompt":"x"}', '"prompt"', '"question"'];

const VALUES: unknown[] = [null, '8', '', -8, -1, 0, 1, 1.5, 1e300, -1e300, 2 ** 53 + 2, true, [], {}, [1, 2], '__proto__',
  'toString', { __proto__: null, a: 1 }, 'x'.repeat(300), [null], [-8, 0], [0, -8]];

function mutateBytes(rng: Rng, b: Buffer, other?: Buffer): Buffer {
  const pos = (): number => (b.length ? rng.int(b.length + 1) : 0);
  switch (rng.int(9)) {
    case 0: {
      if (!b.length) return Buffer.from(rng.pick(TOKENS));
      const c = Buffer.from(b);
      c[rng.int(c.length)] ^= 1 << rng.int(8);
      return c;
    }
    case 1: {
      const c = Buffer.from(b);
      if (c.length) c[rng.int(c.length)] = rng.pick([0, 0xff, 0x7f, 0x80, 0x30, 0x2d, 0x22, 0x7b, 0x7d, 0x5b, 0x5d, 0x2c, 0x3a, 0x0a, 0x20]);
      return c;
    }
    case 2: {
      const s = pos();
      const e = Math.min(b.length, s + 1 + rng.int(Math.max(1, b.length >> 3)));
      return Buffer.concat([b.subarray(0, s), b.subarray(e)]);
    }
    case 3: {
      const s = pos();
      const e = Math.min(b.length, s + 1 + rng.int(64));
      const at = pos();
      return Buffer.concat([b.subarray(0, at), b.subarray(s, e), b.subarray(at)]);
    }
    case 4: {
      const at = pos();
      return Buffer.concat([b.subarray(0, at), Buffer.from(rng.pick(TOKENS)), b.subarray(at)]);
    }
    case 5:
      return b.subarray(0, pos());
    case 6: {
      // A number as little-endian bytes: float32 NaN/Inf/-8, or a huge u64 (lengths, offsets).
      const c = Buffer.from(b);
      if (c.length < 8) return c;
      const at = rng.int(c.length - 7);
      const kind = rng.int(5);
      if (kind === 0) c.writeFloatLE(NaN, at);
      else if (kind === 1) c.writeFloatLE(rng.pick([Infinity, -Infinity]), at);
      else if (kind === 2) c.writeFloatLE(-8, at);
      else if (kind === 3) c.writeBigUInt64LE(rng.pick([0n, 1n << 40n, (1n << 64n) - 1n, 7n]), at);
      else c.writeFloatLE(rng.next() * 2, at);
      return c;
    }
    case 7: {
      if (!other || !other.length) return b;
      const s = rng.int(other.length);
      const piece = other.subarray(s, Math.min(other.length, s + 1 + rng.int(256)));
      const at = pos();
      return Buffer.concat([b.subarray(0, at), piece, b.subarray(at)]);
    }
    default:
      return mutateJsonText(rng, b) ?? b;
  }
}

/** Parses JSON (a whole text, or each line of JSONL), changes one node, writes it back. */
function mutateJsonText(rng: Rng, b: Buffer): Buffer | undefined {
  const text = b.toString('utf8');
  const lines = text.split('\n');
  const candidates = lines.map((l, i) => [l, i] as const).filter(([l]) => l.trim().startsWith('{') || l.trim().startsWith('['));
  let whole: unknown;
  try {
    whole = JSON.parse(text);
  } catch {
    whole = undefined;
  }
  if (whole !== undefined) return Buffer.from(JSON.stringify(mutateJson(rng, whole)));
  if (!candidates.length) return undefined;
  const [line, i] = rng.pick(candidates);
  try {
    lines[i] = JSON.stringify(mutateJson(rng, JSON.parse(line)));
  } catch {
    return undefined;
  }
  return Buffer.from(lines.join('\n'));
}

function mutateJson(rng: Rng, root: unknown): unknown {
  // Collect containers, pick one, change one of its members.
  const containers: (unknown[] | Record<string, unknown>)[] = [];
  const walk = (v: unknown, depth: number): void => {
    if (depth > 8 || typeof v !== 'object' || v === null) return;
    containers.push(v as unknown[] | Record<string, unknown>);
    for (const x of Object.values(v)) walk(x, depth + 1);
  };
  walk(root, 0);
  if (!containers.length) return rng.pick(VALUES);
  const c = rng.pick(containers);
  const keys = Array.isArray(c) ? c.map((_, i) => i) : Object.keys(c);
  const op = rng.int(6);
  if (keys.length && op < 3) {
    const k = rng.pick(keys as (string | number)[]);
    const old = (c as Record<string | number, unknown>)[k];
    (c as Record<string | number, unknown>)[k] =
      op === 0 ? rng.pick(VALUES) : op === 1 && typeof old === 'number' ? rng.pick([old + 1, old - 1, -old, old * 2 ** 31, old / 3]) : structuredClone(rng.pick(VALUES));
  } else if (keys.length && op === 3) {
    if (Array.isArray(c)) c.splice(rng.int(c.length), 1);
    else delete c[rng.pick(keys as string[])];
  } else if (op === 4) {
    if (Array.isArray(c)) c.push(c.length ? structuredClone(rng.pick(c)) : rng.pick(VALUES));
    else Object.defineProperty(c, rng.pick(['__proto__', 'constructor', 'toString', 'extra', '']), { value: rng.pick(VALUES), enumerable: true, configurable: true, writable: true });
  } else if (keys.length && Array.isArray(c)) {
    c.reverse();
  }
  return root;
}

/** Changes one file of the input (a safetensors header is re-framed with its true length half of the time). */
export function mutate(rng: Rng, input: Input, corpus: Input[]): Input {
  const out = new Map(input);
  const names = [...out.keys()];
  const rounds = 1 + rng.int(3);
  for (let r = 0; r < rounds; r++) {
    const name = rng.pick(names);
    const b = out.get(name)!;
    const other = rng.pick(corpus).get(name);
    if (name.endsWith('.safetensors') && b.length >= 8 && rng.int(2) === 0) {
      const n = Number(b.readBigUInt64LE(0));
      if (n <= b.length - 8) {
        const header = mutateJsonText(rng, b.subarray(8, 8 + n)) ?? mutateBytes(rng, b.subarray(8, 8 + n));
        const len = Buffer.alloc(8);
        len.writeBigUInt64LE(BigInt(header.length));
        out.set(name, Buffer.concat([len, header, b.subarray(8 + n)]));
        continue;
      }
    }
    out.set(name, mutateBytes(rng, b, other));
  }
  return out;
}

