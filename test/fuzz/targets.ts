// The JS fuzzer's targets (test/fuzz/js-fuzz.ts): seeds, and one execution returning an outcome signature, or
// throwing Crash when the outcome breaks the target's contract.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { NativeModelInfo } from '../../extension/src/engine/native';
import { ReferenceError, loadReference, writeReference, makeManifest } from '../../extension/src/adapt/reference';
import { parsePromptFile, promptAt } from '../../extension/src/prompts/parse';
import { TokenizerError, loadTokenizer } from '../../extension/src/checkpoint/tokenizer';
import { Rng, type Input } from './mutate';

// ---------------------------------------------------------------------------------------------------------------
// Targets: seeds, and one execution returning an outcome signature (or throwing Crash).

export class Crash extends Error {}

export interface Target {
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

export function referenceTarget(work: string): Target {
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
    sources: ['extension/src/adapt/reference.ts', 'extension/src/adapt/safetensors.ts', 'extension/src/adapt/identity.ts', 'extension/src/io/files.ts'],
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
        const manifest = makeManifest(info, modelDir, { kind: 'self', layer: 4, pooled: 'prompt' }, D, N, { file: 'ref.jsonl', items: N + 2, correct: N });
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

export function promptsTarget(root: string): Target {
  return {
    sources: ['extension/src/prompts/parse.ts'],
    seeds() {
      const md = fs.readFileSync(path.join(root, 'media', 'demo.prompts.md'));
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

export function tokenizerTarget(work: string, root: string): Target {
  const dir = path.join(work, 'tok');
  fs.mkdirSync(dir, { recursive: true });
  const texts = ['Hello world', '', ' ü 123\n\tx ', 'A. 87\nAnswer:', '\u{1F600}'];
  return {
    sources: ['extension/src/checkpoint/tokenizer.ts'],
    seeds() {
      const seeds: Input[] = [];
      const demo = path.join(root, 'media', 'demo-model');
      seeds.push(new Map([['tokenizer.json', fs.readFileSync(path.join(demo, 'tokenizer.json'))], ['tokenizer_config.json', fs.readFileSync(path.join(demo, 'tokenizer_config.json'))]]));
      const embedder = path.join(root, 'test', 'fixtures', 'embedder', 'tokenizer.json');
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
