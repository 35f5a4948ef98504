// The CLI's commands end to end on a fixture checkpoint: usage errors, human output, generate, bench, info.
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PARITY_DIR, copyDir, runCli, tempDir, writeJson } from '../helpers/cli';
import { TINY_TOKENIZER_CONFIG, tinyTokenizerJson } from '../helpers/tokenizer';

const FIXTURE = path.join(PARITY_DIR, 'olmoe-perexpert-bf16', 'model');
let tmp = '';
let model = ''; // a copy of the fixture with a tokenizer added

before(() => {
  tmp = tempDir();
  model = path.join(tmp, 'model');
  copyDir(FIXTURE, model);
  writeJson(path.join(model, 'tokenizer.json'), tinyTokenizerJson());
  writeJson(path.join(model, 'tokenizer_config.json'), TINY_TOKENIZER_CONFIG);
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function oneErrorLine(stderr: string): string {
  const lines = stderr.split('\n').filter((l) => l !== '');
  assert.equal(lines.length, 1, `one line on stderr, got:\n${stderr}`);
  assert.match(lines[0], /^routescope: /);
  assert.doesNotMatch(lines[0], /\bat .*:\d+:\d+/);
  return lines[0];
}

test('--help and --version exit 0', () => {
  const help = runCli(['--help']);
  assert.equal(help.code, 0);
  for (const command of ['inspect', 'grad', 'generate', 'bench']) assert.match(help.stdout, new RegExp(`\\b${command}\\b`));
  const inspectHelp = runCli(['inspect', '--help']);
  assert.equal(inspectHelp.code, 0);
  for (const flag of ['--model', '--prompt', '--tokens', '--patch', '--logits', '--json', '--threads']) assert.ok(inspectHelp.stdout.includes(flag), flag);
  const version = runCli(['--version']);
  assert.equal(version.code, 0);
  assert.match(version.stdout, /^\d+\.\d+\.\d+/);
});

test('usage errors exit 2 with one line', () => {
  const cases: [string[], RegExp][] = [
    [['inspect', '--model', FIXTURE, '--bogus'], /unknown option '--bogus'/],
    [['frobnicate'], /unknown command/],
    [['inspect', '--model', FIXTURE], /exactly one of --prompt TEXT or --tokens/],
    [['inspect', '--model', FIXTURE, '--tokens', '1', '--prompt', 'a'], /exactly one of --prompt/],
    [['inspect', '--model', FIXTURE, '--tokens', '1,x'], /--tokens: "x" is not an integer/],
    [['inspect', '--model', FIXTURE, '--tokens', '1', '--logits', 'some'], /--logits/],
    [['grad', '--model', FIXTURE, '--tokens', '1,2'], /required option '--layers/],
    [['grad', '--model', FIXTURE, '--tokens', '1,2,3', '--layers', '0', '--target', '3:1'], /--target/],
    [['generate', '--model', FIXTURE, '--tokens', '1', '--temperature', 'hot'], /--temperature: "hot" is not a number/],
    [['bench', '--model', FIXTURE, '--prompt-tokens', '0'], /--prompt-tokens/],
    [['inspect', '--model', FIXTURE, '--tokens', '1', '--threads', '0'], /--threads/],
  ];
  for (const [args, pattern] of cases) {
    const r = runCli(args);
    assert.equal(r.code, 2, `${args.join(' ')}: exit ${r.code}, stderr ${r.stderr}`);
    assert.match(oneErrorLine(r.stderr), pattern);
  }
});

test('input errors exit 1 with one line naming the file or flag', () => {
  const cases: [string[], RegExp][] = [
    [['inspect', '--model', path.join(tmp, 'nope'), '--tokens', '1'], /nope: model folder not found/],
    [['inspect', '--model', FIXTURE, '--prompt', 'hi'], /tokenizer\.json: not found \(pass --tokens/],
    [['inspect', '--model', FIXTURE, '--tokens', '1', '--patch', path.join(tmp, 'missing.json')], /missing\.json: patch file not found/],
    [['inspect', '--model', FIXTURE, '--tokens', '-1'], /--tokens: token id -1 is outside the vocabulary/],
    [['grad', '--model', FIXTURE, '--tokens', '1,2,3', '--layers', '9'], /--layers: layer 9 is out of range/],
    [['grad', '--model', FIXTURE, '--tokens', '1', '--layers', '0'], /at least 2 tokens/],
    [['generate', '--model', FIXTURE, '--tokens', '1,2', '--max-new-tokens', '63'], /2 tokens \+ 63 new tokens exceed max_position_embeddings=64/],
    [['bench', '--model', FIXTURE, '--prompt-tokens', '60', '--decode-tokens', '10'], /exceed max_position_embeddings=64/],
  ];
  for (const [args, pattern] of cases) {
    const r = runCli(args);
    assert.equal(r.code, 1, `${args.join(' ')}: exit ${r.code}, stderr ${r.stderr}`);
    assert.match(oneErrorLine(r.stderr), pattern);
  }
});

test('inspect for people: a routing table with decoded tokens and the next-token guess', () => {
  const r = runCli(['inspect', '--model', model, '--prompt', 'hello world']);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.split('\n');
  assert.match(lines[0], /^olmoe · \d+ layers/);
  assert.ok(lines.some((l) => /^token\s+h\s+e\s+l\s+l\s+o\s+·\s+w/.test(l)), r.stdout);
  assert.ok(lines.some((l) => /^L0\s+(\d+ (\.\d\d|1\.0)\s*)+$/.test(l)), r.stdout);
  assert.match(r.stdout, /next token: /);
});

test('inspect --json --logits selects rows: last → 1, all → T, none → 0', () => {
  for (const [mode, rows] of [['last', 1], ['all', 5], ['none', 0]] as const) {
    const r = runCli(['inspect', '--model', model, '--tokens', '3,1,4,1,5', '--logits', mode, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const json = JSON.parse(r.stdout) as { tokens: number[]; logits: number[][]; layers: { layer: number; experts: number[][] }[] };
    assert.deepEqual(json.tokens, [3, 1, 4, 1, 5]);
    assert.equal(json.logits.length, rows, mode);
    for (const row of json.logits) assert.equal(row.length, 96);
    assert.ok(json.layers.length > 0);
    for (const layer of json.layers) assert.equal(layer.experts.length, 5);
  }
});

test('--prompt and the equivalent --tokens give the same result', () => {
  const byPrompt = JSON.parse(runCli(['inspect', '--model', model, '--prompt', 'hi', '--json']).stdout) as { tokens: number[] };
  assert.deepEqual(byPrompt.tokens, [11, 12]);
  const byTokens = runCli(['inspect', '--model', model, '--tokens', '11,12', '--json']).stdout;
  assert.equal(JSON.stringify(JSON.parse(byTokens)), JSON.stringify(byPrompt));
});

test('generate streams text; --json reports prompt, tokens, text and routing', () => {
  const text = runCli(['generate', '--model', model, '--prompt', 'hello', '--max-new-tokens', '6']);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /^hello.*\n$/s);
  const r = runCli(['generate', '--model', model, '--prompt', 'hello', '--max-new-tokens', '6', '--json', '--routing']);
  assert.equal(r.code, 0, r.stderr);
  const json = JSON.parse(r.stdout) as {
    prompt_tokens: number[];
    tokens: number[];
    text: string;
    layers: { layer: number; positions: number[]; experts: number[][] }[];
  };
  assert.deepEqual(json.prompt_tokens, [11, 8, 15, 15, 18]);
  assert.ok(json.tokens.length >= 1 && json.tokens.length <= 6);
  assert.equal(typeof json.text, 'string');
  assert.equal(text.stdout, `hello${json.text}\n`); // the same greedy continuation, streamed
  for (const layer of json.layers) {
    assert.ok(layer.positions.every((p) => p >= json.prompt_tokens.length));
    assert.equal(layer.experts.length, layer.positions.length);
  }
  // Same seed, same sample.
  const sample = (seed: string) => runCli(['generate', '--model', model, '--tokens', '5,6,7', '--max-new-tokens', '8', '--temperature', '1', '--top-p', '0.9', '--seed', seed, '--json']).stdout;
  assert.equal(sample('7'), sample('7'));
});

test('generate without --max-new-tokens stops at the end of the context', () => {
  const r = runCli(['generate', '--model', model, '--tokens', Array.from({ length: 60 }, (_, i) => i % 90).join(','), '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.ok((JSON.parse(r.stdout) as { tokens: number[] }).tokens.length <= 4);
});

test('bench --json reports throughput, peak memory and the model', () => {
  const r = runCli(['bench', '--model', model, '--prompt-tokens', '16', '--decode-tokens', '4', '--threads', '1', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const json = JSON.parse(r.stdout) as Record<string, unknown> & { model: Record<string, unknown> };
  assert.equal(json.prompt_tokens, 16);
  assert.equal(json.decode_tokens, 4);
  assert.equal(json.generated_tokens, 4, 'decode generates every token asked for: no stop token ends it early');
  assert.ok((json.prefill_tokens_per_s as number) > 0);
  assert.ok((json.decode_tokens_per_s as number) > 0);
  assert.ok((json.peak_rss_bytes as number) > 1e6);
  assert.equal(json.model.model_type, 'olmoe');
  assert.equal(json.model.threads, 1);
});

test('grad for people and --json agree on the loss', () => {
  const human = runCli(['grad', '--model', model, '--tokens', '1,2,3,4,5', '--layers', '0,1']);
  assert.equal(human.code, 0, human.stderr);
  const loss = /^loss (\S+)/.exec(human.stdout);
  assert.ok(loss, human.stdout);
  const json = JSON.parse(runCli(['grad', '--model', model, '--tokens', '1,2,3,4,5', '--layers', '0,1', '--json']).stdout) as { loss: number; bias_grad: Record<string, number[]> };
  assert.ok(Math.abs(Number(loss[1]) - json.loss) < 1e-5);
  assert.deepEqual(Object.keys(json.bias_grad), ['0', '1']);
});

test('info prints what the engine read', () => {
  const r = runCli(['info', '--model', model, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const json = JSON.parse(r.stdout) as Record<string, unknown>;
  assert.equal(json.model_type, 'olmoe');
  assert.equal(json.dtype, 'BF16');
  assert.equal(json.weights, 'resident', 'auto keeps a model this small in memory');
  const mapped = runCli(['info', '--model', model, '--weights', 'mapped', '--json']);
  assert.equal(mapped.code, 0, mapped.stderr);
  assert.equal((JSON.parse(mapped.stdout) as Record<string, unknown>).weights, 'mapped');
  const bad = runCli(['info', '--model', model, '--weights', 'disk']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /--weights/);
  // The thread count in the model line takes the noun's right number ("cpu, 1 threads" was printed before).
  assert.match(runCli(['info', '--model', model, '--threads', '1']).stdout, / cpu, 1 thread\n/);
  assert.match(runCli(['info', '--model', model, '--threads', '2']).stdout, / cpu, 2 threads\n/);
});

test('--kv-cache: info says what the KV cache holds; an unknown dtype is refused naming the flag', () => {
  assert.equal((JSON.parse(runCli(['info', '--model', model, '--json']).stdout) as Record<string, unknown>).kv_cache, 'fp32');
  const r = runCli(['info', '--model', model, '--kv-cache', 'bf16', '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal((JSON.parse(r.stdout) as Record<string, unknown>).kv_cache, 'bf16');
  const human = runCli(['info', '--model', model, '--kv-cache', 'bf16']);
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, /, bf16 KV cache\n/);
  assert.match(human.stdout, /; KV cache bf16\n/);
  // Another command takes it too, and its logits move (by the rounding of the cached keys and values).
  const logits = (kv: string) => {
    const r = runCli(['inspect', '--model', model, '--tokens', '1,2,3,4,5,6,7,8', '--kv-cache', kv, '--logits', 'last', '--json']);
    assert.equal(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as { logits: number[][] }).logits[0];
  };
  const [a, b] = [logits('fp32'), logits('bf16')];
  const worst = Math.max(...a.map((x, i) => Math.abs(x - b[i])));
  assert.ok(worst > 0 && worst < 0.05, `bf16 keys and values moved the logits by ${worst}`);
  const bad = runCli(['info', '--model', model, '--kv-cache', 'fp16']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /--kv-cache/);
});
