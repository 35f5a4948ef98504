// The bench's GGUF writer (bench/gguf.mjs), on tiny checkpoints of each architecture it knows, read back: the tensor
// table (llama.cpp's names and ggml shapes, innermost first), the metadata keys llama.cpp's loader reads for
// `olmoe`, `deepseek2` and `gpt-oss`, and the data: MLA's kv_b split into attn_k_b (per-head transposed) and attn_v_b,
// gpt-oss's interleaved gate/up experts and biases, MXFP4 blocks repacked into ggml's nibble order with their E8M0
// scale, norms widened to F32. The llama.cpp run of the same files is the bench's same-model check (npm run bench).
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
// @ts-expect-error the bench writers are plain ESM JavaScript
import { deepseekV2LiteConfig, gptOss20bConfig, moonlightConfig, olmoeConfig, tensorList, writeSafetensors } from '../../bench/checkpoint.mjs';
// @ts-expect-error the bench writers are plain ESM JavaScript
import { GGML, readGgufHeader, readSafetensorsIndex, writeGguf } from '../../bench/gguf.mjs';
import { tempDir } from '../helpers/cli';

type Config = Record<string, unknown>;
interface TensorInfo {
  name: string;
  ne: number[];
  type: number;
  offset: number;
}
interface Header {
  version: number;
  metadata: Record<string, unknown>;
  tensors: TensorInfo[];
  dataStart: number;
}

const MLA = { hidden_size: 64, num_attention_heads: 2, num_key_value_heads: 2, qk_nope_head_dim: 32, qk_rope_head_dim: 16, v_head_dim: 32, kv_lora_rank: 64, n_routed_experts: 4, num_experts_per_tok: 2, moe_intermediate_size: 32, n_shared_experts: 2, intermediate_size: 96, vocab_size: 300 };
const TINY: Record<string, Config> = {
  olmoe: { ...olmoeConfig(2), hidden_size: 64, intermediate_size: 32, num_attention_heads: 2, num_key_value_heads: 2, num_experts: 4, num_experts_per_tok: 2, vocab_size: 300, eos_token_id: 299 },
  deepseek_v2: { ...deepseekV2LiteConfig(2), ...MLA, bos_token_id: 0, eos_token_id: 1 },
  deepseek_v3: { ...moonlightConfig(2), ...MLA, bos_token_id: 0, eos_token_id: 1 },
  gpt_oss: { ...gptOss20bConfig(2), hidden_size: 64, intermediate_size: 32, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 32, num_local_experts: 4, num_experts_per_tok: 2, experts_per_token: 2, vocab_size: 300, sliding_window: 8, eos_token_id: 1, pad_token_id: 2 },
};

const made: string[] = [];
after(() => {
  for (const d of made) fs.rmSync(d, { recursive: true, force: true });
});
const scratch = (): string => {
  const d = tempDir('routescope-gguf-');
  made.push(d);
  return d;
};

/** A tiny checkpoint of cfg and its BF16 GGUF, read back. */
function build(name: string, cfg: Config): { dir: string; gguf: string; header: Header; index: Map<string, { dtype: string; shape: number[]; file: string; offset: number; bytes: number }> } {
  const dir = path.join(scratch(), name);
  fs.mkdirSync(dir);
  writeSafetensors(path.join(dir, 'model.safetensors'), tensorList(cfg), 7);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
  const gguf = path.join(dir, '..', `${name}.gguf`);
  writeGguf(dir, gguf, 'bf16');
  return { dir, gguf, header: readGgufHeader(gguf) as Header, index: readSafetensorsIndex(dir) };
}

/** Raw bytes of a GGUF tensor. */
function ggufBytes(file: string, header: Header, name: string, bytes: number): Buffer {
  const t = header.tensors.find((x) => x.name === name);
  assert.ok(t, `${name} is in the GGUF`);
  const buf = Buffer.alloc(bytes);
  const fd = fs.openSync(file, 'r');
  fs.readSync(fd, buf, 0, bytes, header.dataStart + t.offset);
  fs.closeSync(fd);
  return buf;
}

function hfBytes(index: ReturnType<typeof build>['index'], name: string): Buffer {
  const t = index.get(name);
  assert.ok(t, `${name} is in the checkpoint`);
  const buf = Buffer.alloc(t.bytes);
  const fd = fs.openSync(t.file, 'r');
  fs.readSync(fd, buf, 0, t.bytes, t.offset);
  fs.closeSync(fd);
  return buf;
}

const u16 = (b: Buffer): Uint16Array => new Uint16Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
const f32 = (b: Buffer): Float32Array => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
const widen = (bits: Uint16Array): Float32Array => new Float32Array(new Uint32Array(Array.from(bits, (x) => x << 16)).buffer);
const table = (h: Header, layer: number): string[] =>
  h.tensors.filter((t) => t.name.startsWith(`blk.${layer}.`)).map((t) => `${t.name.slice(`blk.${layer}.`.length)} ${t.ne.join('x')} ${t.type}`).sort();

test('olmoe GGUF: llama.cpp olmoe names, BF16 matrices, F32 norms and router, the synthetic vocabulary', () => {
  const { gguf, header, index } = build('olmoe', TINY.olmoe!);
  assert.equal(header.version, 3);
  assert.equal(header.metadata['general.architecture'], 'olmoe');
  assert.equal(header.metadata['olmoe.expert_count'], 4);
  assert.equal(header.metadata['olmoe.attention.key_length'], 32);
  assert.equal((header.metadata['tokenizer.ggml.tokens'] as string[]).length, 300);
  const F = GGML.F32;
  const B = GGML.BF16;
  assert.deepEqual(table(header, 1), [
    `attn_k.weight 64x64 ${B}`, `attn_k_norm.weight 64 ${F}`, `attn_norm.weight 64 ${F}`, `attn_output.weight 64x64 ${B}`,
    `attn_q.weight 64x64 ${B}`, `attn_q_norm.weight 64 ${F}`, `attn_v.weight 64x64 ${B}`, `ffn_down_exps.weight 32x64x4 ${B}`,
    `ffn_gate_exps.weight 64x32x4 ${B}`, `ffn_gate_inp.weight 64x4 ${F}`, `ffn_norm.weight 64 ${F}`, `ffn_up_exps.weight 64x32x4 ${B}`,
  ]);
  // Experts concatenated in order: expert 3's up_proj is the last quarter.
  const up = u16(ggufBytes(gguf, header, 'blk.1.ffn_up_exps.weight', 4 * 32 * 64 * 2));
  assert.deepEqual(up.subarray(3 * 32 * 64), u16(hfBytes(index, 'model.layers.1.mlp.experts.3.up_proj.weight')));
  const router = f32(ggufBytes(gguf, header, 'blk.1.ffn_gate_inp.weight', 4 * 64 * 4));
  assert.deepEqual(router, widen(u16(hfBytes(index, 'model.layers.1.mlp.gate.weight'))));
  const file = fs.statSync(gguf).size;
  const last = header.tensors[header.tensors.length - 1]!;
  assert.ok(header.tensors.every((t) => t.offset % 32 === 0) && header.dataStart % 32 === 0);
  assert.ok(file >= header.dataStart + last.offset + last.ne.reduce((a, b) => a * b, 1) * 2);
});

test('deepseek2 GGUF: MLA split into attn_k_b / attn_v_b, a dense leading layer, shared experts, YaRN keys', () => {
  const cfg = TINY.deepseek_v2!;
  const { gguf, header, index } = build('deepseek_v2', cfg);
  const m = header.metadata;
  const expect: Record<string, unknown> = {
    'general.architecture': 'deepseek2',
    'deepseek2.block_count': 2,
    'deepseek2.vocab_size': 300,
    'deepseek2.attention.head_count': 2,
    'deepseek2.attention.head_count_kv': 1,
    'deepseek2.attention.key_length': 64 + 16,
    'deepseek2.attention.value_length': 64,
    'deepseek2.attention.key_length_mla': 32 + 16,
    'deepseek2.attention.value_length_mla': 32,
    'deepseek2.attention.kv_lora_rank': 64,
    'deepseek2.attention.q_lora_rank': 0,
    'deepseek2.leading_dense_block_count': 1,
    'deepseek2.feed_forward_length': 96,
    'deepseek2.expert_feed_forward_length': 32,
    'deepseek2.expert_count': 4,
    'deepseek2.expert_used_count': 2,
    'deepseek2.expert_shared_count': 2,
    'deepseek2.expert_weights_scale': 1,
    'deepseek2.expert_weights_norm': false,
    'deepseek2.expert_gating_func': 1,
    'deepseek2.rope.dimension_count': 16,
    'deepseek2.rope.freq_base': 10000,
    'deepseek2.rope.scaling.type': 'yarn',
    'deepseek2.rope.scaling.factor': 40,
    'deepseek2.rope.scaling.original_context_length': 4096,
  };
  for (const [k, v] of Object.entries(expect)) assert.equal(m[k], v, k);
  assert.ok(Math.abs((m['deepseek2.rope.scaling.yarn_log_multiplier'] as number) - 0.0707) < 1e-6);
  assert.ok(Math.abs((m['deepseek2.attention.layer_norm_rms_epsilon'] as number) - 1e-6) < 1e-12);
  const F = GGML.F32;
  const B = GGML.BF16;
  const attention = [
    `attn_k_b.weight 32x64x2 ${B}`, `attn_kv_a_mqa.weight 64x80 ${B}`, `attn_kv_a_norm.weight 64 ${F}`, `attn_norm.weight 64 ${F}`,
    `attn_output.weight 64x64 ${B}`, `attn_q.weight 64x96 ${B}`, `attn_v_b.weight 64x32x2 ${B}`, `ffn_norm.weight 64 ${F}`,
  ];
  assert.deepEqual(table(header, 0), [...attention, `ffn_down.weight 96x64 ${B}`, `ffn_gate.weight 64x96 ${B}`, `ffn_up.weight 64x96 ${B}`].sort());
  assert.deepEqual(table(header, 1), [
    ...attention, `ffn_down_exps.weight 32x64x4 ${B}`, `ffn_down_shexp.weight 64x64 ${B}`, `ffn_gate_exps.weight 64x32x4 ${B}`,
    `ffn_gate_inp.weight 64x4 ${F}`, `ffn_gate_shexp.weight 64x64 ${B}`, `ffn_up_exps.weight 64x32x4 ${B}`, `ffn_up_shexp.weight 64x64 ${B}`,
  ].sort());
  // kv_b_proj [heads * (nope + v), rank]: k_b[h][r][d] = kv_b[h * (nope + v) + d][r]; v_b[h][d][r] = kv_b[h * (nope + v) + nope + d][r].
  const kvb = u16(hfBytes(index, 'model.layers.1.self_attn.kv_b_proj.weight'));
  const kb = u16(ggufBytes(gguf, header, 'blk.1.attn_k_b.weight', 2 * 64 * 32 * 2));
  const vb = u16(ggufBytes(gguf, header, 'blk.1.attn_v_b.weight', 2 * 32 * 64 * 2));
  for (let h = 0; h < 2; h++) {
    for (let r = 0; r < 64; r++) {
      for (let d = 0; d < 32; d++) {
        assert.equal(kb[(h * 64 + r) * 32 + d], kvb[(h * 64 + d) * 64 + r]);
        assert.equal(vb[(h * 32 + d) * 64 + r], kvb[(h * 64 + 32 + d) * 64 + r]);
      }
    }
  }
  assert.ok(!header.tensors.some((t) => t.name.includes('exp_probs_b')), 'DeepSeek-V2 has no selection bias');
});

test('deepseek2 GGUF of a DeepSeek-V3 (Moonlight) checkpoint: sigmoid gating, renormalised and scaled, the selection bias', () => {
  const { gguf, header, index } = build('deepseek_v3', TINY.deepseek_v3!);
  const m = header.metadata;
  assert.equal(m['deepseek2.expert_gating_func'], 2);
  assert.equal(m['deepseek2.expert_weights_norm'], true);
  assert.ok(Math.abs((m['deepseek2.expert_weights_scale'] as number) - 2.446) < 1e-6);
  assert.equal(m['deepseek2.rope.scaling.type'], undefined);
  const bias = header.tensors.find((t) => t.name === 'blk.1.exp_probs_b.bias');
  assert.deepEqual(bias && [bias.ne, bias.type], [[4], GGML.F32]);
  assert.deepEqual(f32(ggufBytes(gguf, header, 'blk.1.exp_probs_b.bias', 16)), f32(hfBytes(index, 'model.layers.1.mlp.gate.e_score_correction_bias')));
});

/** The 32 FP4 codes of an HF MXFP4 block (element 2j in the low nibble of byte j, 2j + 1 in the high one). */
const hfCodes = (b: Buffer, at: number): number[] => Array.from({ length: 32 }, (_, k) => (b[at + (k >> 1)]! >> ((k & 1) * 4)) & 15);
/** The 32 FP4 codes of a ggml block_mxfp4's qs (element j low nibble, j + 16 high). */
const ggmlCodes = (b: Buffer, at: number): number[] => Array.from({ length: 32 }, (_, k) => (b[at + (k & 15)]! >> (k < 16 ? 0 : 4)) & 15);

test('gpt-oss GGUF: sinks, biases, post-attention norm, MXFP4 experts with gate and up de-interleaved', () => {
  const { gguf, header, index } = build('gpt_oss', TINY.gpt_oss!);
  const m = header.metadata;
  const expect: Record<string, unknown> = {
    'general.architecture': 'gpt-oss',
    'gpt-oss.attention.head_count': 2,
    'gpt-oss.attention.head_count_kv': 1,
    'gpt-oss.attention.key_length': 32,
    'gpt-oss.rope.dimension_count': 32,
    'gpt-oss.attention.sliding_window': 8,
    'gpt-oss.expert_count': 4,
    'gpt-oss.expert_used_count': 2,
    'gpt-oss.expert_feed_forward_length': 32,
    'gpt-oss.rope.freq_base': 150000,
    'gpt-oss.rope.scaling.type': 'yarn',
    'gpt-oss.rope.scaling.factor': 32,
    'gpt-oss.rope.scaling.original_context_length': 4096,
  };
  for (const [k, v] of Object.entries(expect)) assert.equal(m[k], v, k);
  const F = GGML.F32;
  const B = GGML.BF16;
  const X = GGML.MXFP4;
  assert.deepEqual(table(header, 1), [
    `attn_k.bias 32 ${F}`, `attn_k.weight 64x32 ${B}`, `attn_norm.weight 64 ${F}`, `attn_output.bias 64 ${F}`, `attn_output.weight 64x64 ${B}`,
    `attn_q.bias 64 ${F}`, `attn_q.weight 64x64 ${B}`, `attn_sinks.weight 2 ${F}`, `attn_v.bias 32 ${F}`, `attn_v.weight 64x32 ${B}`,
    `ffn_down_exps.bias 64x4 ${F}`, `ffn_down_exps.weight 32x64x4 ${X}`, `ffn_gate_exps.bias 32x4 ${F}`, `ffn_gate_exps.weight 64x32x4 ${X}`,
    `ffn_gate_inp.bias 4 ${F}`, `ffn_gate_inp.weight 64x4 ${F}`, `ffn_up_exps.bias 32x4 ${F}`, `ffn_up_exps.weight 64x32x4 ${X}`,
    `post_attention_norm.weight 64 ${F}`,
  ]);
  // gate_up_proj rows interleave gate (even) and up (odd): [E=4, 2I=64, nb=2, 16] blocks, [4, 64, 2] scales.
  const blocks = hfBytes(index, 'model.layers.1.mlp.experts.gate_up_proj_blocks');
  const scales = hfBytes(index, 'model.layers.1.mlp.experts.gate_up_proj_scales');
  const bytes = 4 * 32 * 2 * 17;
  for (const [name, parity] of [['ffn_gate_exps', 0], ['ffn_up_exps', 1]] as const) {
    const out = ggufBytes(gguf, header, `blk.1.${name}.weight`, bytes);
    for (let e = 0; e < 4; e++) {
      for (let r = 0; r < 32; r++) {
        for (let b = 0; b < 2; b++) {
          const from = (e * 64 + 2 * r + parity) * 2 + b;
          const to = ((e * 32 + r) * 2 + b) * 17;
          assert.equal(out[to], scales[from], `${name} scale ${e}/${r}/${b}`);
          assert.deepEqual(ggmlCodes(out, to + 1), hfCodes(blocks, from * 16), `${name} codes ${e}/${r}/${b}`);
        }
      }
    }
  }
  const downBlocks = hfBytes(index, 'model.layers.0.mlp.experts.down_proj_blocks');
  const down = ggufBytes(gguf, header, 'blk.0.ffn_down_exps.weight', 4 * 64 * 1 * 17);
  for (let row = 0; row < 4 * 64; row++) assert.deepEqual(ggmlCodes(down, row * 17 + 1), hfCodes(downBlocks, row * 16));
  const bias = widen(u16(hfBytes(index, 'model.layers.1.mlp.experts.gate_up_proj_bias')));
  const upBias = f32(ggufBytes(gguf, header, 'blk.1.ffn_up_exps.bias', 4 * 32 * 4));
  assert.deepEqual(upBias, bias.filter((_, i) => i % 2 === 1));
  assert.deepEqual(f32(ggufBytes(gguf, header, 'blk.1.attn_sinks.weight', 8)), widen(u16(hfBytes(index, 'model.layers.1.self_attn.sinks'))));
});

test('gpt-oss GGUF with the MXFP4 experts dequantized: BF16 tensors holding exactly FP4 value x 2^(scale - 127)', () => {
  const { dir, index } = build('gpt_oss_dequantized', TINY.gpt_oss!);
  const gguf = path.join(dir, '..', 'dequantized.gguf');
  writeGguf(dir, gguf, 'bf16', () => {}, { dequantizeMxfp4: true });
  const header = readGgufHeader(gguf) as Header;
  const down = header.tensors.find((t) => t.name === 'blk.1.ffn_down_exps.weight');
  assert.deepEqual(down && [down.ne, down.type], [[32, 64, 4], GGML.BF16]);
  const fp4 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];
  const blocks = hfBytes(index, 'model.layers.1.mlp.experts.gate_up_proj_blocks');
  const scales = hfBytes(index, 'model.layers.1.mlp.experts.gate_up_proj_scales');
  const up = widen(u16(ggufBytes(gguf, header, 'blk.1.ffn_up_exps.weight', 4 * 32 * 64 * 2)));
  for (let e = 0; e < 4; e++) {
    for (let r = 0; r < 32; r++) {
      for (let b = 0; b < 2; b++) {
        const from = (e * 64 + 2 * r + 1) * 2 + b;
        const codes = hfCodes(blocks, from * 16);
        for (let k = 0; k < 32; k++) assert.equal(up[(e * 32 + r) * 64 + b * 32 + k], fp4[codes[k]!]! * 2 ** (scales[from]! - 127));
      }
    }
  }
});

test('the GGUF writer names what it cannot write', () => {
  const dir = scratch();
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...TINY.olmoe, model_type: 'mixtral' }));
  fs.writeFileSync(path.join(dir, 'model.safetensors'), Buffer.from([2, 0, 0, 0, 0, 0, 0, 0, 0x7b, 0x7d]));
  assert.throws(() => writeGguf(dir, path.join(dir, 'x.gguf'), 'bf16'), /supports model_type olmoe, deepseek_v2, deepseek_v3 and gpt_oss, not mixtral/);
  const swa = { ...TINY.gpt_oss, layer_types: ['full_attention', 'sliding_attention'] };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(swa));
  assert.throws(() => writeGguf(dir, path.join(dir, 'x.gguf'), 'bf16'), /alternates sliding \(even\) and full \(odd\) layers; layer 0 is full_attention/);
  assert.ok(!fs.existsSync(path.join(dir, 'x.gguf')) && !fs.existsSync(path.join(dir, 'x.gguf.partial')));
});
