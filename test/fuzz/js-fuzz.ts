// Seeded mutation fuzzer for the TypeScript readers: reference sets (adapt/reference.ts + adapt/safetensors.ts),
// prompt files (prompts/parse.ts) and tokenizers (checkpoint/tokenizer.ts over @huggingface/tokenizers).
// Run by tools/fuzz.mjs, one target per process:
//   node js-fuzz.js --target NAME --seconds S --seed N --work DIR [--corpus DIR]... [--regressions DIR]
// Each input is first written to DIR/current (so a hang or an out-of-memory death can be reproduced), then run.
// An outcome outside the target's contract (an exception of the wrong kind, an error that is not one line naming
// the file, a result breaking an invariant) is a crash: the input goes to DIR/crash-<hash> and the process exits
// with status 70. Inputs with a new outcome (the error message with numbers and paths blanked) join the corpus.
// At the end one line "FUZZ-STATS {json}" gives executions, outcomes and the V8 block coverage of the target's
// source files.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as inspector from 'node:inspector';
import * as os from 'node:os';
import * as path from 'node:path';
import type { NativeModelInfo } from '../../extension/src/engine/native';
import { ReferenceError, loadReference, writeReference, makeManifest } from '../../extension/src/adapt/reference';
import { parsePromptFile, promptAt } from '../../extension/src/prompts/parse';
import { TokenizerError, loadTokenizer } from '../../extension/src/checkpoint/tokenizer';

// ---------------------------------------------------------------------------------------------------------------
// Inputs: a map of file name -> bytes (one entry for single-file targets); stored as JSON with base64 values.

type Input = Map<string, Buffer>;

function encodeInput(input: Input): Buffer {
  const o: Record<string, string> = {};
  for (const [k, v] of input) o[k] = v.toString('base64');
  return Buffer.from(JSON.stringify(o));
}

function decodeInput(bytes: Buffer): Input | undefined {
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

class Rng {
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
function mutate(rng: Rng, input: Input, corpus: Input[]): Input {
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

// ---------------------------------------------------------------------------------------------------------------
// Targets: seeds, and one execution returning an outcome signature (or throwing Crash).

class Crash extends Error {}

interface Target {
  sources: string[]; // source files whose coverage is reported
  seeds(): Input[];
  run(input: Input): string;
}

/** An error message as an outcome class: paths, numbers and quoted values blanked. */
function signature(message: string, dir: string): string {
  return message.split(dir).join('<dir>').replace(/"[^"]*"/g, '""').replace(/-?\d+(\.\d+)?(e[+-]?\d+)?/gi, '#').slice(0, 160);
}

function oneLineNaming(e: Error, dir: string): void {
  if (e.message.includes('\n')) throw new Crash(`a message of several lines: ${e.message}`);
  if (!e.message.startsWith(dir)) throw new Crash(`a message that does not name a file of the set: ${e.message}`);
}

function referenceTarget(work: string): Target {
  const modelDir = path.join(work, 'model');
  const refDir = path.join(work, 'ref');
  fs.mkdirSync(modelDir, { recursive: true });
  fs.writeFileSync(path.join(modelDir, 'config.json'), '{"model_type":"olmoe"}');
  const st = Buffer.from('{}      ');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(st.length));
  fs.writeFileSync(path.join(modelDir, 'model.safetensors'), Buffer.concat([len, st]));
  const E = 8;
  const info = { modelType: 'olmoe', dir: modelDir, numLayers: 4, moeLayers: [1, 3], numExperts: E, vocabSize: 64 } as unknown as NativeModelInfo;
  return {
    sources: ['extension/src/adapt/reference.ts', 'extension/src/adapt/safetensors.ts', 'extension/src/adapt/identity.ts', 'extension/src/common/files.ts'],
    seeds() {
      const seeds: Input[] = [];
      for (const [N, D] of [[3, 5], [1, 2]]) {
        const rng = new Rng(N * 7 + D);
        const row = (): Float32Array => {
          const v = Float32Array.from({ length: E }, () => rng.next() + 0.01);
          const s = v.reduce((a, b) => a + b, 0);
          return v.map((x) => x / s);
        };
        const entries = Array.from({ length: N }, (_, i) => ({ id: `r${i}`, skill: i % 2 ? 'odd' : 'even', question: `q${i}?`, prompt: `Q: q${i}?\nA:`, answer: 'A', answer_token: 5 + i }));
        const embeddings = entries.map(() => {
          const v = Float32Array.from({ length: D }, () => rng.next() - 0.5);
          const n = Math.hypot(...v);
          return v.map((x) => x / n);
        });
        const manifest = makeManifest(info, modelDir, { kind: 'self', layer: 4 }, D, N, { file: 'ref.jsonl', items: N + 2, correct: N });
        fs.rmSync(refDir, { recursive: true, force: true });
        writeReference(refDir, { manifest, entries, routing: entries.map(() => [row(), row()]), embeddings });
        seeds.push(new Map(['manifest.json', 'index.jsonl', 'routing.safetensors', 'embeddings.safetensors'].map((f) => [f, fs.readFileSync(path.join(refDir, f))])));
      }
      return seeds;
    },
    run(input) {
      fs.rmSync(refDir, { recursive: true, force: true });
      fs.mkdirSync(refDir);
      for (const [name, bytes] of input) if (!name.includes('/')) fs.writeFileSync(path.join(refDir, name), bytes);
      try {
        const set = loadReference(refDir, info, modelDir);
        if (!set.entries.length || set.routing.some((r) => r.length !== 2 || r.some((w) => w.length !== E))) throw new Crash('a loaded set breaks its shape');
        for (const e of set.embeddings) if (e.some((x) => !Number.isFinite(x))) throw new Crash('a loaded set holds a non-finite embedding');
        return 'ok';
      } catch (error) {
        if (error instanceof Crash) throw error;
        if (!(error instanceof ReferenceError)) throw new Crash(`${(error as Error)?.constructor?.name}: ${(error as Error)?.message}`);
        oneLineNaming(error, refDir);
        return signature(error.message, refDir);
      }
    },
  };
}

function promptsTarget(): Target {
  return {
    sources: ['extension/src/prompts/parse.ts'],
    seeds() {
      const md = fs.readFileSync(path.join(ROOT, 'media', 'demo.prompts.md'));
      return [
        new Map([['x.prompts.md', md]]),
        new Map([['x.prompts.md', Buffer.from('# T\n\n## One ##\n\nQ: 1+1?\nA:\n\n```\nfenced\n```\n~~~~\nx\n~~~\n## \n')]]),
        new Map([['x.prompts.jsonl', Buffer.from('{"id":1,"prompt":"a"}\n{"question":"b"}\nnull\n[1]\n{"prompt":""}\n')]]),
      ];
    },
    run(input) {
      const [name, bytes] = [...input][0];
      const text = bytes.toString('utf8');
      const parsed = parsePromptFile(name, text);
      const lines = text.split(/\r?\n/);
      for (const p of parsed.prompts) {
        const r = p.range;
        if (typeof p.title !== 'string' || typeof p.text !== 'string' || p.text === '') throw new Crash('a prompt without text');
        if (!(r.startLine >= 0 && r.endLine < lines.length && r.startLine <= r.endLine && r.endCharacter <= lines[r.endLine].length)) throw new Crash(`a range outside the text: ${JSON.stringify(r)}`);
        if (p.line < 0 || p.line >= lines.length) throw new Crash('a lens line outside the text');
        if (promptAt(parsed, p.line) === undefined) throw new Crash('promptAt misses a prompt line');
      }
      for (const q of parsed.problems) if (q.line < 0 || q.line >= lines.length || !q.message) throw new Crash('a problem outside the text');
      return `${parsed.prompts.length > 0}:${parsed.problems.map((q) => signature(q.message, '\0')).sort().join('|')}`;
    },
  };
}

function tokenizerTarget(work: string): Target {
  const dir = path.join(work, 'tok');
  fs.mkdirSync(dir, { recursive: true });
  const texts = ['Hello world', '', ' ü 123\n\tx ', 'A. 87\nAnswer:', '\u{1F600}'];
  return {
    sources: ['extension/src/checkpoint/tokenizer.ts'],
    seeds() {
      const seeds: Input[] = [];
      const demo = path.join(ROOT, 'media', 'demo-model');
      seeds.push(new Map([['tokenizer.json', fs.readFileSync(path.join(demo, 'tokenizer.json'))], ['tokenizer_config.json', fs.readFileSync(path.join(demo, 'tokenizer_config.json'))]]));
      const embedder = path.join(ROOT, 'test', 'fixtures', 'embedder', 'tokenizer.json');
      if (fs.existsSync(embedder) && fs.statSync(embedder).size < 64 * 1024) seeds.push(new Map([['tokenizer.json', fs.readFileSync(embedder)]]));
      return seeds;
    },
    run(input) {
      fs.rmSync(path.join(dir, 'tokenizer_config.json'), { force: true });
      for (const [name, bytes] of input) fs.writeFileSync(path.join(dir, name), bytes);
      let tok;
      try {
        tok = loadTokenizer(dir);
      } catch (error) {
        if (!(error instanceof TokenizerError)) throw new Crash(`${(error as Error)?.constructor?.name}: ${(error as Error)?.message}`);
        oneLineNaming(error, dir);
        return signature(error.message, dir);
      }
      try {
        for (const t of texts) {
          const ids = tok.encode(t);
          if (!ids.every((id) => Number.isInteger(id) && id >= 0)) throw new Crash(`encode gave ids that are not token ids: ${ids.slice(0, 8)}`);
          tok.decode(ids);
          for (const id of ids.slice(0, 4)) tok.tokenText(id);
        }
      } catch (error) {
        if (error instanceof Crash) throw error;
        if (!(error instanceof TokenizerError)) throw new Crash(`encode/decode: ${(error as Error)?.constructor?.name}: ${(error as Error)?.message}`);
        oneLineNaming(error, dir);
        return signature(error.message, dir);
      }
      return 'ok';
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Coverage: V8 block coverage of the bundle, split into source files by esbuild's "// path" module markers.

function coverageOf(session: inspector.Session, sources: string[]): Promise<Record<string, number>> {
  return new Promise((resolve, reject) => {
    session.post('Profiler.takePreciseCoverage', (err, result) => {
      if (err) return reject(err);
      const script = result.result.find((s) => s.url.endsWith(path.basename(__filename)));
      const code = fs.readFileSync(__filename, 'utf8');
      const counts = new Int32Array(code.length).fill(-1);
      if (script) {
        for (const fn of script.functions) for (const r of fn.ranges) counts.fill(r.count > 0 ? 1 : 0, r.startOffset, Math.min(code.length, r.endOffset));
      }
      // Module regions: from each "// <path>" marker line to the next one.
      const markers = [...code.matchAll(/^\/\/ ([\w./@-]+\.[cm]?[jt]s)$/gm)].map((m) => ({ file: m[1], at: m.index! }));
      const out: Record<string, number> = {};
      markers.forEach((m, i) => {
        if (!sources.includes(m.file)) return;
        const end = i + 1 < markers.length ? markers[i + 1].at : code.length;
        let total = 0;
        let hit = 0;
        for (let x = m.at; x < end; x++) {
          const ch = code.charCodeAt(x);
          if (ch <= 32) continue;
          total++;
          if (counts[x] > 0) hit++;
        }
        out[m.file] = total ? Math.round((1000 * hit) / total) / 10 : 0;
      });
      resolve(out);
    });
  });
}

// ---------------------------------------------------------------------------------------------------------------

const ROOT = (() => {
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'fuzz'))) return dir;
    dir = path.dirname(dir);
  }
  return process.cwd();
})();

function arg(name: string, fallback?: string): string {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 || i + 1 >= process.argv.length) {
    if (fallback === undefined) throw new Error(`--${name} is required`);
    return fallback;
  }
  return process.argv[i + 1];
}

function args(name: string): string[] {
  return process.argv.flatMap((a, i) => (a === `--${name}` && i + 1 < process.argv.length ? [process.argv[i + 1]] : []));
}

async function main(): Promise<void> {
  const targetName = arg('target');
  const seconds = Number(arg('seconds', '10'));
  const rng = new Rng(Number(arg('seed', '1')));
  const work = arg('work', fs.mkdtempSync(path.join(os.tmpdir(), 'routescope-js-fuzz-')));
  fs.mkdirSync(work, { recursive: true });
  const scratch = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), `routescope-${targetName}-`));
  const session = new inspector.Session();
  session.connect();
  await new Promise<void>((resolve) => session.post('Profiler.enable', () => session.post('Profiler.startPreciseCoverage', { callCount: false, detailed: true }, () => resolve())));

  const target = targetName === 'reference' ? referenceTarget(scratch) : targetName === 'prompts' ? promptsTarget() : targetName === 'tokenizer' ? tokenizerTarget(scratch) : undefined;
  if (!target) throw new Error(`unknown target ${targetName} (reference, prompts, tokenizer)`);
  const current = path.join(work, 'current');
  const corpus: Input[] = target.seeds();
  const replay: Input[] = [];
  for (const dir of [...args('regressions'), ...args('corpus')]) {
    if (!fs.existsSync(dir)) continue;
    for (const f of fs.readdirSync(dir).sort()) {
      const input = decodeInput(fs.readFileSync(path.join(dir, f)));
      if (input) replay.push(input);
    }
  }
  const outcomes = new Set<string>();
  let execs = 0;
  const exec = (input: Input): boolean => {
    const bytes = encodeInput(input);
    fs.writeFileSync(current, bytes);
    execs++;
    try {
      const outcome = target.run(input);
      if (outcomes.has(outcome)) return false;
      outcomes.add(outcome);
      return true;
    } catch (error) {
      const hash = crypto.createHash('sha1').update(bytes).digest('hex');
      const file = path.join(work, `crash-${hash}`);
      fs.writeFileSync(file, bytes);
      const message = error instanceof Crash ? error.message : `uncaught ${(error as Error)?.stack ?? error}`;
      console.log(`FUZZ-CRASH ${JSON.stringify({ target: targetName, file, message: message.split('\n').slice(0, 6).join(' | ') })}`);
      fs.rmSync(scratch, { recursive: true, force: true });
      process.exit(70);
    }
  };
  for (const input of [...corpus, ...replay]) if (exec(input)) corpus.push(input);
  const started = Date.now();
  let lastBeat = started;
  while (Date.now() - started < seconds * 1000) {
    const input = mutate(rng, rng.pick(corpus), corpus);
    if (exec(input) && corpus.length < 4000) {
      corpus.push(input);
      fs.writeFileSync(path.join(work, `new-${crypto.createHash('sha1').update(encodeInput(input)).digest('hex')}`), encodeInput(input));
    }
    if (Date.now() - lastBeat > 1000) {
      lastBeat = Date.now();
      console.log(`FUZZ-BEAT ${execs}`);
    }
  }
  const coverage = await coverageOf(session, target.sources);
  fs.rmSync(scratch, { recursive: true, force: true });
  console.log(`FUZZ-STATS ${JSON.stringify({ target: targetName, execs, seconds: (Date.now() - started) / 1000, outcomes: outcomes.size, corpus: corpus.length, coverage })}`);
}

void main();
