// Fixtures for the adaptation tests: a parity checkpoint with a character-level tokenizer that has the option
// letters A–D, digits and a newline, and a small multiple-choice task file in the media/tasks format.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { McItem } from '../../extension/src/adapt/tasks';
import { PARITY_DIR, copyDir, writeJson } from './cli';
import { charTokenizerJson } from './tokenizer';

/** Ids 0..50: space, a–z, the option letters A–D, digits, punctuation and a newline. */
export function mcTokenizerJson(): object {
  return charTokenizerJson([' ', ...'abcdefghijklmnopqrstuvwxyz', ...'ABCD', ...'0123456789', ...'.,!?:+\n']);
}

/** Copies a parity fixture (vocab 96) to `dir` and adds the tokenizer. */
export function mcModel(dir: string, fixture = 'olmoe-perexpert-bf16'): string {
  copyDir(path.join(PARITY_DIR, fixture, 'model'), dir);
  writeJson(path.join(dir, 'tokenizer.json'), mcTokenizerJson());
  writeJson(path.join(dir, 'tokenizer_config.json'), { bos_token: '<s>', eos_token: '</s>' });
  return dir;
}

/** A task-file row: the harness's multiple-choice item without its `kind` (readTasks adds it). */
export type McFixtureItem = Omit<McItem, 'kind'>;

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
