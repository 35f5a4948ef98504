// Fixtures for the adaptation tests: a parity checkpoint with a character-level tokenizer that has the option
// letters A–D, digits and a newline, and a small multiple-choice task file in the media/tasks format.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PARITY_DIR, copyDir, writeJson } from './cli';

export function mcTokenizerJson(): object {
  const chars = [' ', ...'abcdefghijklmnopqrstuvwxyz', ...'ABCD', ...'0123456789', ...'.,!?:+\n'];
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  const byteLevel = (c: string): string => (c === ' ' ? '\u0120' : c === '\n' ? '\u010a' : c);
  chars.forEach((c, i) => (vocab[byteLevel(c)] = i + 3)); // ids 0..50
  const special = (id: number, content: string) => ({ id, content, special: true, single_word: false, lstrip: false, rstrip: false, normalized: false });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: [] },
  };
}

/** Copies a parity fixture (vocab 96) to `dir` and adds the tokenizer. */
export function mcModel(dir: string, fixture = 'olmoe-perexpert-bf16'): string {
  copyDir(path.join(PARITY_DIR, fixture, 'model'), dir);
  writeJson(path.join(dir, 'tokenizer.json'), mcTokenizerJson());
  writeJson(path.join(dir, 'tokenizer_config.json'), { bos_token: '<s>', eos_token: '</s>' });
  return dir;
}

export interface McFixtureItem {
  id: string;
  skill: string;
  question: string;
  options: Record<string, string>;
  answer: string;
  prompt: string;
}

/** n multiple-choice items "what is a+b?" with answers spread over A–D. */
export function mcItems(n: number, offset = 0): McFixtureItem[] {
  const items: McFixtureItem[] = [];
  for (let j = 0; j < n; j++) {
    const i = j + offset;
    const a = i % 7;
    const b = (i * 3) % 5;
    const question = `what is ${a}+${b}?`;
    const options = { A: String(a + b), B: String(a + b + 1), C: String(a + b + 2), D: String(Math.abs(a - b) + 10) };
    items.push({
      id: `t${i}`,
      skill: i % 2 ? 'odd' : 'even',
      question,
      options,
      answer: 'ABCD'[i % 4],
      prompt: `q: ${question}\nA. ${options.A}\nB. ${options.B}\nC. ${options.C}\nD. ${options.D}\nanswer:`,
    });
  }
  return items;
}

export function writeJsonl(file: string, rows: unknown[]): void {
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
}
