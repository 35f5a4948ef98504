import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TokenizerError, loadTokenizer } from '../../extension/src/checkpoint/tokenizer';
import { tempDir } from '../helpers/cli';
import { tinyTokenizerJson } from '../helpers/tokenizer';

function folder(config?: object): string {
  const dir = tempDir();
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tinyTokenizerJson()));
  if (config) fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(config));
  return dir;
}

test('encodes and decodes with tokenizer.json, offline', () => {
  const dir = folder({ bos_token: '<s>', eos_token: '</s>' });
  const tok = loadTokenizer(dir);
  const ids = tok.encode('hi there');
  assert.deepEqual(ids, [11, 12, 3, 23, 11, 8, 21, 8]);
  assert.equal(tok.decode(ids), 'hi there');
  assert.equal(tok.tokenText(3), ' ');
  assert.equal(tok.tokenText(11), 'h');
  fs.rmSync(dir, { recursive: true });
});

test('a BOS is prepended only where tokenizer_config asks (add_bos_token), never an EOS', () => {
  const withBos = folder({ bos_token: { content: '<s>' }, eos_token: '</s>', add_bos_token: true, add_eos_token: true });
  assert.deepEqual(loadTokenizer(withBos).encode('hi'), [1, 11, 12]);
  const without = folder({ bos_token: '<s>' });
  assert.deepEqual(loadTokenizer(without).encode('hi'), [11, 12]);
  const noConfig = folder();
  assert.deepEqual(loadTokenizer(noConfig).encode('hi'), [11, 12]);
  for (const d of [withBos, without, noConfig]) fs.rmSync(d, { recursive: true });
});

test('clear errors when the files are missing or broken', () => {
  const dir = tempDir();
  assert.throws(() => loadTokenizer(dir), (e: unknown) => e instanceof TokenizerError && /tokenizer\.json: not found \(pass --tokens/.test(e.message));
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), '{nope');
  assert.throws(() => loadTokenizer(dir), /tokenizer\.json: invalid JSON/);
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tinyTokenizerJson()));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), '[]');
  assert.throws(() => loadTokenizer(dir), /tokenizer_config\.json: invalid JSON \(not a JSON object\)/);
  fs.rmSync(dir, { recursive: true });
});

test('decoding no tokens is the empty text (generation that stops at EOS first), not a library error', () => {
  const dir = folder();
  assert.equal(loadTokenizer(dir).decode([]), '');
  fs.rmSync(dir, { recursive: true });
});

test('a JSON error is one line even when the text around it has line breaks (found by fuzzing)', () => {
  const dir = tempDir();
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), '{\n  "version": "1.0",,\n  "model": {}\n}\n');
  assert.throws(() => loadTokenizer(dir), (e: Error) => /tokenizer\.json: invalid JSON/.test(e.message) && !e.message.includes('\n'));
  fs.rmSync(dir, { recursive: true });
});
