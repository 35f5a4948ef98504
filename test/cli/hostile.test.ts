// Hostile inputs through the real CLI: FIFOs and devices in place of files, files over their size limit, links out
// of the model folder, non-standard JSON, values beyond float32, results that would print NaN, input that used to
// surface as internal errors, and output folders that must not be written (weights truncated while in use:
// weights-truncated.test.ts).
// Each case: one line "routescope: <file or flag>: <problem>" on stderr, exit 1 (or the stated handling), the
// user's files untouched, and no hang (every run has a timeout).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PARITY_DIR, ROOT, copyDir, runCli, snapshot, tempDir, writeJson, type CliResult } from '../helpers/cli';
import { readSafetensorsRaw, writeSafetensorsRaw } from '../helpers/safetensors';
import { writeRandomOlmoe } from '../helpers/random-model';
import { mcItems, mcModel, writeJsonl } from '../helpers/adapt';

const DEMO = path.join(ROOT, 'media', 'demo-model');
const SINGLE = path.join(PARITY_DIR, 'mixtral-perexpert-f32', 'model');
const SHARDED = path.join(PARITY_DIR, 'mixtral-perexpert-f16-sharded', 'model');
const TIMEOUT_MS = 30_000;

function run(args: string[]): CliResult {
  return runCli(args, { timeoutMs: TIMEOUT_MS });
}

/** One line on stderr naming `names`, matching `problem`, exit 1, nothing on stdout, no signal (a hang is killed). */
function assertOneLine(r: CliResult, names: string | RegExp, problem: RegExp): string {
  assert.equal(r.signal, null, `killed by ${r.signal} (a hang past ${TIMEOUT_MS} ms, or a crash); stderr: ${r.stderr}`);
  assert.equal(r.code, 1, `exit ${r.code}; stdout: ${r.stdout.slice(0, 300)} stderr: ${r.stderr}`);
  assert.equal(r.stdout, '', 'nothing on stdout');
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  assert.equal(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
  const line = lines[0];
  if (process.env.ROUTESCOPE_SHOW_ERRORS) console.log(`    ${line}`);
  assert.match(line, /^routescope: /);
  assert.doesNotMatch(line, /\bat .*:\d+:\d+|internal error|TypeError|undefined/i, 'no stack trace or internal error');
  if (typeof names === 'string') assert.ok(line.includes(names), `"${line}" should name ${names}`);
  else assert.match(line, names);
  assert.match(line, problem);
  return line;
}

function withTemp(body: (tmp: string) => void | Promise<void>): Promise<void> {
  const tmp = tempDir();
  return Promise.resolve(body(tmp)).finally(() => fs.rmSync(tmp, { recursive: true, force: true }));
}

function mkfifo(file: string): void {
  fs.rmSync(file, { force: true });
  execFileSync('mkfifo', [file]);
}

function linkTo(file: string, target: string): void {
  fs.rmSync(file, { force: true });
  fs.symlinkSync(target, file);
}

// ---------------------------------------------------------------------------------------------------------------
// Item 2 and 3: only regular files, each kind within its limit, never a hang.

const MODEL_FILES: { source: string; file: string; args: (dir: string) => string[] }[] = [
  { source: DEMO, file: 'config.json', args: (d) => ['info', '--model', d] },
  { source: DEMO, file: 'generation_config.json', args: (d) => ['info', '--model', d] },
  { source: DEMO, file: 'model.safetensors', args: (d) => ['info', '--model', d] },
  { source: SHARDED, file: 'model.safetensors.index.json', args: (d) => ['info', '--model', d] },
  { source: SHARDED, file: 'model-00002-of-00002.safetensors', args: (d) => ['info', '--model', d] },
  { source: DEMO, file: 'tokenizer.json', args: (d) => ['inspect', '--model', d, '--prompt', 'Hi'] },
  { source: DEMO, file: 'tokenizer_config.json', args: (d) => ['inspect', '--model', d, '--prompt', 'Hi'] },
];

for (const { source, file, args } of MODEL_FILES) {
  test(`a FIFO, /dev/zero or /dev/urandom as ${file} is refused at once (no hang, no unbounded read)`, () =>
    withTemp((tmp) => {
      for (const kind of ['fifo', '/dev/zero', '/dev/urandom']) {
        const dir = path.join(tmp, kind.replace(/\W/g, ''));
        copyDir(source, dir);
        const target = path.join(dir, file);
        if (kind === 'fifo') mkfifo(target);
        else linkTo(target, kind);
        const what = kind === 'fifo' ? /a FIFO \(named pipe\), not a regular file/ : /a character device, not a regular file/;
        assertOneLine(run(args(dir)), `${target}: `, what);
      }
    }));
}

test('generation_config.json → /dev/zero is an error, not a silent success; a broken one too', () =>
  withTemp((tmp) => {
    const dir = path.join(tmp, 'model');
    copyDir(DEMO, dir);
    linkTo(path.join(dir, 'generation_config.json'), '/dev/zero');
    assertOneLine(run(['info', '--model', dir]), 'generation_config.json: ', /character device/);
    fs.rmSync(path.join(dir, 'generation_config.json'));
    fs.writeFileSync(path.join(dir, 'generation_config.json'), '{"eos_token_id": 260,');
    assertOneLine(run(['info', '--model', dir]), 'generation_config.json: ', /invalid JSON/);
  }));

test('each kind of input file has a size limit, said in the error', () =>
  withTemp((tmp) => {
    // Sparse files: the size is refused from fstat, before a byte is read.
    const sparse = (file: string, bytes: number): string => {
      fs.writeFileSync(file, '');
      fs.truncateSync(file, bytes);
      return file;
    };
    const dir = path.join(tmp, 'model');
    copyDir(DEMO, dir);
    sparse(path.join(dir, 'config.json'), 2 ** 20 + 1);
    assertOneLine(run(['info', '--model', dir]), 'config.json: ', /1048577 bytes, over the 1 MiB limit for config\.json/);
    copyDir(DEMO, path.join(tmp, 'tok'));
    sparse(path.join(tmp, 'tok', 'tokenizer.json'), 128 * 2 ** 20 + 1);
    assertOneLine(run(['inspect', '--model', path.join(tmp, 'tok'), '--prompt', 'Hi']), 'tokenizer.json: ', /over the 128 MiB limit for tokenizer\.json/);
    const patch = sparse(path.join(tmp, 'patch.json'), 64 * 2 ** 20 + 1);
    assertOneLine(run(['inspect', '--model', DEMO, '--tokens', '1,2', '--patch', patch]), 'patch.json: ', /over the 64 MiB limit for a routing patch/);
    const tasks = sparse(path.join(tmp, 'tasks.jsonl'), 256 * 2 ** 20 + 1);
    assertOneLine(run(['eval', '--model', DEMO, '--data', tasks]), 'tasks.jsonl: ', /over the 256 MiB limit for a task file/);
  }));

test('patch, task, --mix and reference files that are FIFOs or devices are refused at once', () =>
  withTemp((tmp) => {
    const fifo = path.join(tmp, 'fifo');
    mkfifo(fifo);
    assertOneLine(run(['inspect', '--model', DEMO, '--tokens', '1,2', '--patch', fifo]), `${fifo}: `, /FIFO/);
    assertOneLine(run(['inspect', '--model', DEMO, '--tokens', '1,2', '--patch', '/dev/urandom']), '/dev/urandom: ', /character device/);
    assertOneLine(run(['eval', '--model', DEMO, '--data', fifo]), `${fifo}: `, /FIFO/);
    assertOneLine(run(['eval', '--model', DEMO, '--data', '/dev/zero']), '/dev/zero: ', /character device/);
    assertOneLine(run(['grad', '--model', DEMO, '--tokens', '1,2,3', '--layers', '0', '--mix', fifo]), `${fifo}: `, /FIFO/);
    // A reference set whose manifest is a FIFO.
    const ref = path.join(tmp, 'ref');
    fs.mkdirSync(ref);
    mkfifo(path.join(ref, 'manifest.json'));
    assertOneLine(
      run(['eval', '--model', DEMO, '--data', path.join(ROOT, 'media', 'tasks', 'eval.jsonl'), '--limit', '1', '--method', 'c3po', '--reference', ref]),
      'manifest.json: ',
      /FIFO/,
    );
  }));

test('SIGTERM and SIGINT still work while the CLI runs (a long generate ends with exit 130)', () =>
  withTemp(async (tmp) => {
    writeRandomOlmoe(tmp);
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'routescope.js'), 'generate', '--model', tmp, '--tokens', '1,2,3', '--max-new-tokens', '4000', '--threads', '1'], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let sent = false;
      child.stdout.on('data', (d: Buffer) => {
        stdout += d.toString();
        if (!sent && /\|\s+\d+/.test(stdout)) {
          sent = true;
          child.kill(signal);
        }
      });
      const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
      assert.ok(sent, 'the generation ended before the signal');
      assert.equal(code, 130, `${signal}: exit ${code}`);
    }
  }));

// ---------------------------------------------------------------------------------------------------------------
// Item 4: values beyond float32 where they enter; NaN never printed as a figure.

test('grad --mix with logits of 1e300 is refused (it used to print "loss":NaN, exit 0)', () =>
  withTemp((tmp) => {
    const mix = path.join(tmp, 'mix.json');
    writeJson(mix, { layer: 0, position: 1, logits: [1e300, 0, 0, 0, 0, 0, 0, 0] });
    assertOneLine(run(['grad', '--model', DEMO, '--tokens', '1,2,3', '--layers', '0', '--mix', mix, '--json']), 'mix.json: ', /logits\[0\] = 1e\+300 is beyond float32 range/);
    writeJson(mix, { layer: 0, position: 1, logits: [-1e39, 0, 0, 0, 0, 0, 0, 0] });
    assertOneLine(run(['grad', '--model', DEMO, '--tokens', '1,2,3', '--layers', '0', '--mix', mix]), 'mix.json: ', /beyond float32 range/);
    // In range: a finite loss.
    writeJson(mix, { layer: 0, position: 1, logits: [3e38, 0, 0, 0, 0, 0, 0, -3e38] });
    const ok = run(['grad', '--model', DEMO, '--tokens', '1,2,3', '--layers', '0', '--mix', mix, '--json']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.ok(Number.isFinite(JSON.parse(ok.stdout).loss));
  }));

test('weights holding NaN: inspect, grad and generate --routing refuse to print NaN (JSON and text)', () =>
  withTemp((tmp) => {
    const dir = path.join(tmp, 'model');
    copyDir(SINGLE, dir);
    const st = readSafetensorsRaw(path.join(dir, 'model.safetensors'));
    st.data = Buffer.from(st.data);
    const [b] = st.header['model.norm.weight'].data_offsets;
    st.data.writeFloatLE(NaN, b);
    writeSafetensorsRaw(path.join(dir, 'model.safetensors'), st);
    const before = snapshot(dir);
    assertOneLine(run(['inspect', '--model', dir, '--tokens', '1,2,3', '--json']), `${dir}: the logits`, /include NaN \(row 0, column 0\); not printed/);
    assertOneLine(run(['inspect', '--model', dir, '--tokens', '1,2,3']), `${dir}: the logits`, /include NaN/);
    assertOneLine(run(['grad', '--model', dir, '--tokens', '1,2,3', '--layers', '0', '--json']), `${dir}: the loss`, /is NaN/);
    assertOneLine(run(['grad', '--model', dir, '--tokens', '1,2,3', '--layers', '0']), `${dir}: the loss`, /is NaN/);
    assert.deepEqual(snapshot(dir), before);
    // NaN before the first router: the routing of generated tokens is refused too.
    const st2 = readSafetensorsRaw(path.join(SINGLE, 'model.safetensors'));
    st2.data = Buffer.from(st2.data);
    st2.data.writeFloatLE(NaN, st2.header['model.layers.0.input_layernorm.weight'].data_offsets[0]);
    writeSafetensorsRaw(path.join(dir, 'model.safetensors'), st2);
    assertOneLine(
      run(['generate', '--model', dir, '--tokens', '1,2,3', '--max-new-tokens', '2', '--json', '--routing']),
      `${dir}: the router logits of layer 0 at position 3`,
      /include NaN/,
    );
  }));

// ---------------------------------------------------------------------------------------------------------------
// Item 5: links out of the model folder; JSON numbers with a leading zero.

test('model.safetensors or a shard linked to a file outside the model folder is refused', () =>
  withTemp((tmp) => {
    const dir = path.join(tmp, 'model');
    copyDir(SINGLE, dir);
    fs.renameSync(path.join(dir, 'model.safetensors'), path.join(tmp, 'weights.safetensors'));
    fs.symlinkSync(path.join(tmp, 'weights.safetensors'), path.join(dir, 'model.safetensors'));
    assertOneLine(run(['info', '--model', dir]), `${dir}/model.safetensors: links to `, /outside the model folder/);
    const sharded = path.join(tmp, 'sharded');
    copyDir(SHARDED, sharded);
    const shard = path.join(sharded, 'model-00001-of-00002.safetensors');
    fs.renameSync(shard, path.join(tmp, 'shard1'));
    fs.symlinkSync('../shard1', shard);
    assertOneLine(run(['info', '--model', sharded]), `${shard}: links to `, /outside the model folder/);
  }));

test('a JSON number with a leading zero is refused (config.json, index, safetensors header)', () =>
  withTemp((tmp) => {
    const dir = path.join(tmp, 'model');
    copyDir(SINGLE, dir);
    const config = path.join(dir, 'config.json');
    fs.writeFileSync(config, fs.readFileSync(config, 'utf8').replace(/"num_hidden_layers": (\d+)/, '"num_hidden_layers": 0$1'));
    assert.match(fs.readFileSync(config, 'utf8'), /"num_hidden_layers": 0\d/);
    assertOneLine(run(['info', '--model', dir]), 'config.json: ', /leading zero/);
  }));

// ---------------------------------------------------------------------------------------------------------------
// Item 6: input that used to surface as internal errors.

test('generate when the first generated token is EOS: an empty continuation, exit 0 (text and JSON)', () =>
  withTemp((tmp) => {
    const dir = path.join(tmp, 'model');
    copyDir(DEMO, dir);
    const prompt = 'Question: What is 2+2?\nAnswer:';
    const probe = run(['inspect', '--model', dir, '--prompt', prompt, '--json']);
    assert.equal(probe.code, 0, probe.stderr);
    const logits = JSON.parse(probe.stdout).logits[0] as number[];
    const next = logits.indexOf(Math.max(...logits));
    // Make that token the end of sequence.
    for (const f of ['config.json', 'generation_config.json']) {
      const file = path.join(dir, f);
      const v = JSON.parse(fs.readFileSync(file, 'utf8'));
      v.eos_token_id = next;
      fs.writeFileSync(file, JSON.stringify(v));
    }
    const json = run(['generate', '--model', dir, '--prompt', prompt, '--max-new-tokens', '4', '--json']);
    assert.equal(json.code, 0, json.stderr);
    const out = JSON.parse(json.stdout);
    assert.equal(out.text, '');
    assert.ok(out.tokens.length <= 1);
    const text = run(['generate', '--model', dir, '--prompt', prompt, '--max-new-tokens', '4']);
    assert.equal(text.code, 0, text.stderr);
    assert.equal(text.stderr, '');
    assert.equal(text.stdout, `${prompt}\n`);
  }));

test('eval --data with a null line, or an answer key like __proto__ / toString / constructor: one-line errors', () =>
  withTemp((tmp) => {
    const data = path.join(tmp, 'tasks.jsonl');
    const [item] = mcItems(1);
    fs.writeFileSync(data, `${JSON.stringify(item)}\nnull\n`);
    assertOneLine(run(['eval', '--model', DEMO, '--data', data]), 'tasks.jsonl:2: ', /expected a JSON object \(an item\), got null/);
    for (const line of ['[]', '3', '"text"']) {
      fs.writeFileSync(data, `${line}\n`);
      assertOneLine(run(['eval', '--model', DEMO, '--data', data]), 'tasks.jsonl:1: ', /expected a JSON object/);
    }
    for (const answer of ['__proto__', 'toString', 'constructor', 'hasOwnProperty']) {
      writeJsonl(data, [{ ...item, answer }]);
      assertOneLine(run(['eval', '--model', DEMO, '--data', data]), 'tasks.jsonl:1: ', new RegExp(`answer "${answer}" is not one of the options`));
    }
    writeJsonl(data, [{ ...item, options: { ...item.options, __proto__: 'x' } }]);
    const raw = fs.readFileSync(data, 'utf8').replace('"D":', '"__proto__":"x","D":');
    fs.writeFileSync(data, raw);
    assertOneLine(run(['eval', '--model', DEMO, '--data', data]), 'tasks.jsonl:1: ', /option keys must be single capital letters/);
  }));

test('a malformed reference set is refused when opened, with one line naming the file', () =>
  withTemp((tmp) => {
    const model = mcModel(path.join(tmp, 'model'));
    writeJsonl(path.join(tmp, 'ref.jsonl'), mcItems(24));
    const ref = path.join(tmp, 'ref');
    const built = run(['reference', 'build', '--model', model, '--data', path.join(tmp, 'ref.jsonl'), '--out', ref, '--threads', '2']);
    assert.equal(built.code, 0, built.stderr);
    const evalArgs = (r: string): string[] => ['eval', '--model', model, '--data', path.join(tmp, 'ref.jsonl'), '--limit', '1', '--method', 'c3po', '--reference', r, '--threads', '2'];
    const variant = (name: string, edit: (dir: string) => void): string => {
      const dir = path.join(tmp, name);
      copyDir(ref, dir);
      edit(dir);
      return dir;
    };
    const manifest = (dir: string, edit: (m: Record<string, unknown>) => void): void => {
      const file = path.join(dir, 'manifest.json');
      const m = JSON.parse(fs.readFileSync(file, 'utf8'));
      edit(m);
      fs.writeFileSync(file, JSON.stringify(m));
    };
    const st = (dir: string, file: string, edit: (s: ReturnType<typeof readSafetensorsRaw>) => void): void => {
      const s = readSafetensorsRaw(path.join(dir, file));
      s.data = Buffer.from(s.data);
      edit(s);
      writeSafetensorsRaw(path.join(dir, file), s);
    };
    const cases: [string, (dir: string) => void, string, RegExp][] = [
      ['num-experts-string', (d) => manifest(d, (m) => (m.num_experts = '8')), 'manifest.json: ', /num_experts must be an integer/],
      ['embedding-nan', (d) => st(d, 'embeddings.safetensors', (s) => s.data.writeFloatLE(NaN, 4)), 'embeddings.safetensors: ', /NaN is not finite/],
      ['embedding-inf', (d) => st(d, 'embeddings.safetensors', (s) => s.data.writeFloatLE(Infinity, 0)), 'embeddings.safetensors: ', /Infinity is not finite/],
      ['answer-token', (d) => fs.writeFileSync(path.join(d, 'index.jsonl'), fs.readFileSync(path.join(d, 'index.jsonl'), 'utf8').replace(/"answer_token":\d+/, '"answer_token":100000')), 'index.jsonl:1: ', /answer_token 100000 is outside the vocabulary/],
      ['offsets-minus-8', (d) => st(d, 'routing.safetensors', (s) => (s.header.routing.data_offsets = [-8, s.header.routing.data_offsets[1] - 8])), 'routing.safetensors: ', /invalid data_offsets/],
      ['routing-nan', (d) => st(d, 'routing.safetensors', (s) => s.data.writeFloatLE(NaN, 0)), 'routing.safetensors: ', /NaN is not a routing probability/],
      ['manifest-null', (d) => fs.writeFileSync(path.join(d, 'manifest.json'), 'null'), 'manifest.json: ', /not a JSON object/],
      ['model-missing', (d) => manifest(d, (m) => delete m.model), 'manifest.json: ', /"model" must be an object/],
      ['weights-not-list', (d) => manifest(d, (m) => ((m.model as Record<string, unknown>).weights = 3)), 'manifest.json: ', /model\.weights must be a list/],
      ['index-null-line', (d) => fs.appendFileSync(path.join(d, 'index.jsonl'), 'null\n'), 'index.jsonl:', /expected a JSON object, got null/],
    ];
    for (const [name, edit, names, problem] of cases) assertOneLine(run(evalArgs(variant(name, edit))), names, problem);
  }));

// ---------------------------------------------------------------------------------------------------------------
// Item 9: reference build never writes into a model folder or over an unrelated manifest.json.

test('reference build --out refuses model folders and folders with an unrelated manifest.json', () =>
  withTemp((tmp) => {
    const model = mcModel(path.join(tmp, 'model'));
    const data = path.join(tmp, 'ref.jsonl');
    writeJsonl(data, mcItems(4));
    const before = snapshot(model);
    assertOneLine(run(['reference', 'build', '--model', model, '--data', data, '--out', model]), `--out ${model}: `, /is a model folder \(it holds config\.json\)/);
    assert.deepEqual(snapshot(model), before, 'the model folder changed');
    // A folder holding only weights is a model folder too.
    const weights = path.join(tmp, 'weights');
    fs.mkdirSync(weights);
    fs.copyFileSync(path.join(model, 'model.safetensors'), path.join(weights, 'model.safetensors'));
    assertOneLine(run(['reference', 'build', '--model', model, '--data', data, '--out', weights]), `--out ${weights}: `, /is a model folder \(it holds model\.safetensors\)/);
    const other = path.join(tmp, 'other');
    fs.mkdirSync(other);
    writeJson(path.join(other, 'manifest.json'), { name: 'a web app manifest' });
    const otherBefore = snapshot(other);
    assertOneLine(run(['reference', 'build', '--model', model, '--data', data, '--out', other]), `--out ${other}: `, /holds a manifest\.json that is not a Routescope reference set/);
    assert.deepEqual(snapshot(other), otherBefore);
    // Rebuilding into an existing reference set is fine.
    const ref = path.join(tmp, 'ref');
    for (let i = 0; i < 2; i++) {
      const r = run(['reference', 'build', '--model', model, '--data', data, '--out', ref, '--threads', '2']);
      assert.equal(r.code, 0, r.stderr);
    }
  }));
