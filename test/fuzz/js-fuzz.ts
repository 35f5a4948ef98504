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
import { Rng, decodeInput, encodeInput, mutate, type Input } from './mutate';
import { Crash, promptsTarget, referenceTarget, tokenizerTarget } from './targets';

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

  const target = targetName === 'reference' ? referenceTarget(scratch) : targetName === 'prompts' ? promptsTarget(ROOT) : targetName === 'tokenizer' ? tokenizerTarget(scratch, ROOT) : undefined;
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
