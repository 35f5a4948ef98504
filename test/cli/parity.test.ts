// The real CLI against the reference fixtures from transformers' own code (test/fixtures/parity, see test/parity/README.md):
// inspect for every run (base and patched), grad for every gradient case.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parityCases, runCliJson, tempDir, writeJson } from '../helpers/cli';
import { readSafetensors, rows, type Tensor } from '../helpers/safetensors';

interface InspectJson {
  tokens: number[];
  logits: number[][];
  layers: { layer: number; router_logits: number[][]; experts: number[][]; weights: number[][] }[];
}
interface GradJson {
  loss: number;
  bias_grad: Record<string, number[]>;
  mix_grad?: number[];
}

function assertClose(actual: number[][], expected: number[][], tolerance: number, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: ${actual.length} rows, expected ${expected.length}`);
  let worst = 0;
  let where = '';
  expected.forEach((row, i) => {
    assert.equal(actual[i].length, row.length, `${what}[${i}]: ${actual[i].length} values, expected ${row.length}`);
    row.forEach((e, j) => {
      const d = Math.abs(actual[i][j] - e);
      if (!(d <= worst)) {
        worst = d;
        where = `[${i}][${j}] ${actual[i][j]} vs ${e}`;
      }
    });
  });
  assert.ok(worst <= tolerance, `${what}: max |diff| ${worst} > ${tolerance} at ${where}`);
}

/** Each element within 1e-3 relative, measured against max(|ref_i|, 1% of the largest |ref|). */
function assertRelClose(actual: number[], expected: ArrayLike<number>, what: string, rel = 1e-3): void {
  assert.equal(actual.length, expected.length, `${what}: ${actual.length} values, expected ${expected.length}`);
  let scale = 0;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]));
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    const bound = rel * Math.max(Math.abs(expected[i]), 0.01 * scale) + 1e-9;
    assert.ok(d <= bound, `${what}[${i}]: ${actual[i]} vs ${expected[i]} (|diff| ${d} > ${bound})`);
  }
}

function tensor(ref: Map<string, Tensor>, name: string): Tensor {
  const t = ref.get(name);
  assert.ok(t, `reference.safetensors has no ${name}`);
  return t;
}

const cases = parityCases();

test('parity fixtures are present', () => {
  assert.ok(cases.length > 0, 'no cases under test/fixtures/parity (regenerate: /usr/bin/python3 tools/hf-reference/generate.py)');
});

function patchArgs(dir: string, name: string, patch: unknown): string[] {
  if (patch === null || patch === undefined) return [];
  const file = path.join(dir, `${name}.patch.json`);
  writeJson(file, patch);
  return ['--patch', file];
}

for (const c of cases) {
  test(`inspect matches the reference: ${c.name}`, () => {
    const ref = readSafetensors(path.join(c.dir, 'reference.safetensors'));
    const moeLayers = [...ref.keys()]
      .map((k) => /^base\.layer(\d+)\.router_logits$/.exec(k))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
    assert.ok(moeLayers.length > 0, 'reference has no layers for run "base"');
    const tmp = tempDir();
    try {
      for (const run of c.cases.runs) {
        const what = `${c.name}/${run.name}`;
        const json = runCliJson<InspectJson>([
          'inspect', '--model', c.model, '--tokens', c.cases.tokens.join(','), '--logits', 'all', '--json',
          ...patchArgs(tmp, run.name, run.patch),
        ]);
        assert.deepEqual(json.tokens, c.cases.tokens);
        assertClose(json.logits, rows(tensor(ref, `${run.name}.logits`)), 1e-4, `${what} logits`);
        assert.deepEqual(json.layers.map((l) => l.layer), moeLayers, `${what}: layers`);
        for (const layer of json.layers) {
          const prefix = `${run.name}.layer${layer.layer}`;
          assertClose(layer.router_logits, rows(tensor(ref, `${prefix}.router_logits`)), 1e-4, `${what} L${layer.layer} router_logits`);
          assert.deepEqual(layer.experts, rows(tensor(ref, `${prefix}.experts`)), `${what} L${layer.layer} experts`);
          assertClose(layer.weights, rows(tensor(ref, `${prefix}.weights`)), 1e-4, `${what} L${layer.layer} weights`);
        }
      }
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });

  if (c.cases.prompt !== undefined) {
    test(`--prompt tokenises as the reference: ${c.name}`, () => {
      const json = runCliJson<InspectJson>(['inspect', '--model', c.model, '--prompt', c.cases.prompt!, '--logits', 'none', '--json']);
      // The reference tokenises without special tokens; the CLI adds those the tokenizer's template asks for.
      const at = json.tokens.findIndex((_, i) => c.cases.tokens.every((t, j) => json.tokens[i + j] === t));
      assert.ok(at >= 0 && json.tokens.length - c.cases.tokens.length <= 2, `CLI ${json.tokens} vs reference ${c.cases.tokens}`);
    });
  }

  test(`grad matches the reference: ${c.name}`, () => {
    const ref = readSafetensors(path.join(c.dir, 'reference.safetensors'));
    const tmp = tempDir();
    try {
      for (const g of c.cases.grads) {
        const what = `${c.name}/${g.name}`;
        const args = [
          'grad', '--model', c.model, '--tokens', c.cases.tokens.join(','), '--layers', g.layers.join(','), '--json',
          ...patchArgs(tmp, g.name, g.patch),
        ];
        if (g.target) args.push('--target', `${g.target[0]}:${g.target[1]}`);
        if (g.mix) {
          const file = path.join(tmp, `${g.name}.mix.json`);
          writeJson(file, g.mix);
          args.push('--mix', file);
        }
        const json = runCliJson<GradJson>(args);
        const loss = tensor(ref, `${g.name}.loss`).values[0];
        assertRelClose([json.loss], [loss], `${what} loss`);
        assert.deepEqual(Object.keys(json.bias_grad).sort(), g.layers.map(String).sort(), `${what}: bias_grad layers`);
        for (const layer of g.layers) {
          assertRelClose(json.bias_grad[String(layer)], tensor(ref, `${g.name}.bias.${layer}`).values, `${what} bias_grad[${layer}]`);
        }
        if (g.mix) {
          assert.ok(json.mix_grad, `${what}: no mix_grad`);
          assertRelClose(json.mix_grad, tensor(ref, `${g.name}.mix_grad`).values, `${what} mix_grad`);
        }
      }
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
}
