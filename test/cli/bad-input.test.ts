// Bad input: each test corrupts a COPY of a fixture checkpoint, runs the real CLI and expects one clear line on
// stderr naming the file and the problem, a non-zero exit, no stack trace, and the model folder left untouched.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PARITY_DIR, copyDir, runCli, tempDir, writeJson } from '../helpers/cli';
import { byOffset, editConfig, editSafetensors, expectRejected, TOKENS } from '../helpers/reject';

const SINGLE = path.join(PARITY_DIR, 'mixtral-perexpert-f32', 'model'); // one model.safetensors, F32
const SHARDED = path.join(PARITY_DIR, 'mixtral-perexpert-f16-sharded', 'model');

test('fixtures for the bad-input tests are present', () => {
  assert.ok(fs.existsSync(path.join(SINGLE, 'model.safetensors')), `${SINGLE}/model.safetensors missing`);
  assert.ok(fs.existsSync(path.join(SHARDED, 'model.safetensors.index.json')), `${SHARDED} index missing`);
});

test('the good copy works (control)', () => {
  const tmp = tempDir();
  try {
    copyDir(SINGLE, path.join(tmp, 'model'));
    const result = runCli(['inspect', '--model', path.join(tmp, 'model'), '--tokens', TOKENS, '--json']);
    assert.equal(result.code, 0, result.stderr);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('missing safetensors', () => {
  expectRejected(SINGLE, (dir) => fs.rmSync(path.join(dir, 'model.safetensors')), {
    names: 'model.safetensors',
    problem: /not found|missing|no such|\bno model\.safetensors/i,
  });
});

test('truncated safetensors', () => {
  expectRejected(
    SINGLE,
    (dir) => {
      const file = path.join(dir, 'model.safetensors');
      fs.truncateSync(file, Math.floor(fs.statSync(file).size / 2));
    },
    { names: 'model.safetensors', problem: /truncat|past the end|beyond|out of range|too short|exceed/i },
  );
});

test('header length past the end of the file', () => {
  expectRejected(
    SINGLE,
    (dir) => {
      const file = path.join(dir, 'model.safetensors');
      const bytes = fs.readFileSync(file);
      bytes.writeBigUInt64LE(BigInt(bytes.length) * 4n, 0);
      fs.writeFileSync(file, bytes);
    },
    { names: 'model.safetensors', problem: /header/i },
  );
});

test('tensor offsets overlapping', () => {
  expectRejected(
    SINGLE,
    (dir) =>
      editSafetensors(dir, (st) => {
        // Two neighbours of equal size: slide the second half-way into the first.
        const names = byOffset(st);
        const i = names.findIndex((n, j) => {
          const next = names[j + 1];
          if (!next) return false;
          const a = st.header[n].data_offsets;
          const b = st.header[next].data_offsets;
          return a[1] - a[0] === b[1] - b[0] && a[1] - a[0] >= 8;
        });
        assert.ok(i >= 0);
        const [a0, a1] = st.header[names[i]].data_offsets;
        const shift = (a1 - a0) / 2;
        const b = st.header[names[i + 1]].data_offsets;
        st.header[names[i + 1]].data_offsets = [b[0] - shift, b[1] - shift];
      }),
    { names: 'model.safetensors', problem: /overlap/i },
  );
});

test('tensor offsets out of range', () => {
  expectRejected(
    SINGLE,
    (dir) =>
      editSafetensors(dir, (st) => {
        const last = byOffset(st).at(-1)!;
        const [b, e] = st.header[last].data_offsets;
        st.header[last].data_offsets = [b + 64, e + 64];
      }),
    { names: 'model.safetensors', problem: /out of range|beyond|past the end|exceed|outside/i },
  );
});

test('tensor offsets not tiling the data (a hole)', () => {
  expectRejected(
    SINGLE,
    (dir) =>
      editSafetensors(dir, (st) => {
        // Insert 64 unused bytes after the first tensor; every later tensor moves along, sizes stay right.
        const names = byOffset(st);
        const gapAt = st.header[names[0]].data_offsets[1];
        for (const n of names.slice(1)) {
          const [b, e] = st.header[n].data_offsets;
          st.header[n].data_offsets = [b + 64, e + 64];
        }
        st.data = Buffer.concat([st.data.subarray(0, gapAt), Buffer.alloc(64), st.data.subarray(gapAt)]);
      }),
    { names: 'model.safetensors', problem: /hole|gap|tile|tiling|unused|not contiguous|cover/i },
  );
});

test('dtype disagreeing with config.json (a tensor declared I32)', () => {
  expectRejected(
    SINGLE,
    (dir) =>
      editSafetensors(dir, (st) => {
        st.header['model.layers.0.self_attn.q_proj.weight'].dtype = 'I32'; // same width as F32: only the dtype is wrong
      }),
    { names: /model\.safetensors|q_proj/, problem: /I32|dtype/i },
  );
});

test('shape disagreeing with config.json (hidden_size changed)', () => {
  expectRejected(SINGLE, (dir) => editConfig(dir, (c) => (c.hidden_size = 48)), {
    names: /config\.json|model\.safetensors/,
    problem: /shape|hidden_size|expected/i,
  });
});

test('missing tensor', () => {
  const missing = 'model.layers.1.block_sparse_moe.gate.weight';
  expectRejected(
    SINGLE,
    (dir) =>
      editSafetensors(dir, (st) => {
        // Remove the tensor and its bytes so that the rest still tiles the data.
        const [b, e] = st.header[missing].data_offsets;
        delete st.header[missing];
        for (const entry of Object.values(st.header)) {
          if (entry.data_offsets[0] >= e) entry.data_offsets = [entry.data_offsets[0] - (e - b), entry.data_offsets[1] - (e - b)];
        }
        st.data = Buffer.concat([st.data.subarray(0, b), st.data.subarray(e)]);
      }),
    // The engine may name the tensor by another spelling it accepts for the same weight (mlp.gate / block_sparse_moe.gate).
    { names: /model\.layers\.1\.[a-z_]+\.gate\.weight/, problem: /missing|not found|no tensor/i },
  );
});

test('a shard name in the index that leaves the model folder', () => {
  expectRejected(
    SHARDED,
    (dir) => {
      const file = path.join(dir, 'model.safetensors.index.json');
      const index = JSON.parse(fs.readFileSync(file, 'utf8')) as { weight_map: Record<string, string> };
      index.weight_map['lm_head.weight'] = '../x.safetensors';
      fs.writeFileSync(file, JSON.stringify(index, null, 2));
    },
    { names: /\.\.\/x\.safetensors|model\.safetensors\.index\.json/, problem: /\.\.|outside|leaves|escape|not allowed|invalid/i },
  );
});

test('unknown model_type', () => {
  expectRejected(SINGLE, (dir) => editConfig(dir, (c) => (c.model_type = 'llama')), {
    names: 'config.json',
    problem: /llama/,
  });
});

test('a token id outside the vocabulary', () => {
  expectRejected(SINGLE, () => {}, {
    names: '--tokens',
    problem: /token id 96 is outside the vocabulary.*vocab_size=96/,
    args: ['inspect', '--model', 'MODEL', '--tokens', '1,96'],
  });
});

test('a prompt longer than max_position_embeddings', () => {
  const tokens = Array.from({ length: 65 }, (_, i) => i % 90).join(',');
  expectRejected(SINGLE, () => {}, {
    names: '--tokens',
    problem: /65 tokens exceed max_position_embeddings=64/,
    args: ['inspect', '--model', 'MODEL', '--tokens', tokens],
  });
});

test('a patch file with an out-of-range expert', () => {
  const tmp = tempDir();
  try {
    const patch = path.join(tmp, 'patch.json');
    writeJson(patch, { layers: { '1': { mask: [2], force: [9] } } });
    expectRejected(SINGLE, () => {}, {
      names: 'patch.json',
      problem: /layer 1: force: expert 9 is out of range \(the model has 8 experts/,
      args: ['inspect', '--model', 'MODEL', '--tokens', TOKENS, '--patch', patch],
    });
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('a patch file with a bias beyond float32 (1e39 would become infinite in the engine)', () => {
  const tmp = tempDir();
  try {
    const patch = path.join(tmp, 'patch.json');
    fs.writeFileSync(patch, '{"layers": {"2": {"bias": {"5": 1e39}}}}');
    expectRejected(SINGLE, () => {}, {
      names: 'patch.json',
      problem: /layer 2: bias: expert 5: not a finite float32 value/,
      args: ['inspect', '--model', 'MODEL', '--tokens', TOKENS, '--patch', patch],
    });
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
