// config.json that contradicts itself or its weights: every case is refused with one line naming the field (or,
// for tensors a real checkpoint family ships beside the model, opens with a warning naming them).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PARITY_DIR, ROOT, copyDir, runCli, runCliJson, tempDir } from '../helpers/cli';
import { editConfig, editSafetensors, expectRejected } from '../helpers/reject';

const DEMO = path.join(ROOT, 'media', 'demo-model');
const OLMOE_F16 = path.join(PARITY_DIR, 'olmoe-fused-f16', 'model');
const OLMOE_BF16 = path.join(PARITY_DIR, 'olmoe-perexpert-bf16', 'model');
const QWEN3_V5 = path.join(PARITY_DIR, 'qwen3_moe-fused-f32', 'model');
const DEEPSEEK_V3 = path.join(PARITY_DIR, 'deepseek_v3-fused-f16-onegroup', 'model');
const DEEPSEEK_V3_GROUPED = path.join(PARITY_DIR, 'deepseek_v3-perexpert-bf16-sharded', 'model');
const DEEPSEEK_V2 = path.join(PARITY_DIR, 'deepseek_v2-perexpert-bf16', 'model');
const GLM = path.join(PARITY_DIR, 'glm4_moe-perexpert-f32', 'model');

/** Replaces `"key": <value>` in config.json's text (for values JSON.stringify cannot write, such as NaN). */
function setRaw(dir: string, key: string, raw: string): void {
  const file = path.join(dir, 'config.json');
  const config = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  config[key] = '__RAW__';
  fs.writeFileSync(file, JSON.stringify(config, null, 2).replace('"__RAW__"', raw));
}

test('heads × head_dim overflowing 32 bits (the demo model, 1073741856 heads of 4): refused, no crash', () => {
  expectRejected(
    DEMO,
    (dir) =>
      editConfig(dir, (c) => {
        c.num_attention_heads = 1073741856;
        c.num_key_value_heads = 1073741856;
        c.head_dim = 4;
      }),
    { names: 'config.json', problem: /num_attention_heads.*1073741856.*out of range/, args: ['inspect', '--model', 'MODEL', '--tokens', '1,2,3', '--json'] },
  );
});

for (const [key, raw] of [
  ['rms_norm_eps', '0'],
  ['rms_norm_eps', '-1e-06'],
  ['rms_norm_eps', 'NaN'],
  ['rope_theta', '-10000.0'],
  ['rope_theta', 'NaN'],
  ['rope_theta', 'Infinity'],
] as const) {
  test(`config ${key} = ${raw}: refused naming the field`, () => {
    expectRejected(DEMO, (dir) => setRaw(dir, key, raw), { names: 'config.json', problem: new RegExp(`"${key}" = ${raw.replace("Infinity", "inf")}.*out of range`, "i") });
  });
}

test('DeepSeek float fields (routed_scaling_factor NaN, a YaRN factor below 1) and GLM partial_rotary_factor 0: refused', () => {
  expectRejected(DEEPSEEK_V3, (dir) => setRaw(dir, 'routed_scaling_factor', 'NaN'), { names: 'config.json', problem: /"routed_scaling_factor" = NaN/i });
  expectRejected(
    DEEPSEEK_V2,
    (dir) => editConfig(dir, (c) => ((c.rope_scaling as Record<string, unknown>).factor = 0.5)),
    { names: 'config.json', problem: /"factor" = 0\.5 is out of range/ },
  );
  expectRejected(GLM, (dir) => editConfig(dir, (c) => (c.partial_rotary_factor = 0)), { names: 'config.json', problem: /"partial_rotary_factor" = 0/ });
});

test('model_type mixtral over OLMoE tensors: refused, naming tensors the config does not use', () => {
  expectRejected(OLMOE_BF16, (dir) => editConfig(dir, (c) => (c.model_type = 'mixtral')), {
    names: /model\.layers\.\d+\.self_attn\.[qk]_norm\.weight/,
    problem: /tensors? that config\.json \(model_type mixtral\) does not use/,
  });
});

test('every tensor F16 while config.json says bfloat16: refused, naming both', () => {
  expectRejected(OLMOE_F16, (dir) => editConfig(dir, (c) => (c.torch_dtype = 'bfloat16')), {
    names: 'config.json',
    problem: /torch_dtype is bfloat16 but every weight is F16/,
  });
});

test('group limits that contradict the expert count: n_group not dividing it, topk_group > n_group, too few kept', () => {
  expectRejected(DEEPSEEK_V3_GROUPED, (dir) => editConfig(dir, (c) => (c.n_group = 3)), {
    names: 'config.json',
    problem: /n_group \(3\) does not divide the 8 routed experts/,
  });
  expectRejected(DEEPSEEK_V3_GROUPED, (dir) => editConfig(dir, (c) => (c.topk_group = 5)), {
    names: 'config.json',
    problem: /topk_group \(5\) is larger than n_group \(4\)/,
  });
  expectRejected(DEEPSEEK_V3_GROUPED, (dir) => editConfig(dir, (c) => (c.topk_group = 1)), {
    names: 'config.json',
    problem: /topk_group \(1\) groups of 2 experts hold fewer than num_experts_per_tok \(3\)/,
  });
  expectRejected(DEEPSEEK_V2, (dir) => editConfig(dir, (c) => (c.topk_method = 'noaux_tc')), {
    names: 'config.json',
    problem: /"topk_method" "noaux_tc" is not supported for deepseek_v2/,
  });
});

test('expert counts under both names that disagree (num_experts vs num_local_experts): refused', () => {
  expectRejected(QWEN3_V5, (dir) => editConfig(dir, (c) => (c.num_experts = 6)), {
    names: 'config.json',
    problem: /"num_experts" and "num_local_experts" disagree/,
  });
});

test('FP8 weights: missing block scales, no quantization_config, an unsupported method: refused naming the tensor or field', () => {
  const FP8 = path.join(PARITY_DIR, 'qwen3_moe-perexpert-fp8', 'model');
  const scale = 'model.layers.1.mlp.experts.3.down_proj.weight_scale_inv';
  expectRejected(
    FP8,
    (dir) =>
      editSafetensors(dir, (st) => {
        const [b, e] = st.header[scale].data_offsets;
        delete st.header[scale];
        for (const entry of Object.values(st.header))
          if (entry.data_offsets[0] >= e) entry.data_offsets = [entry.data_offsets[0] - (e - b), entry.data_offsets[1] - (e - b)];
        st.data = Buffer.concat([st.data.subarray(0, b), st.data.subarray(e)]);
      }),
    { names: 'model.layers.1.mlp.experts.3.down_proj.weight', problem: /is F8_E4M3 but its block scales .*_scale_inv" are missing/ },
  );
  expectRejected(FP8, (dir) => editConfig(dir, (c) => delete c.quantization_config), {
    names: /F8_E4M3/,
    problem: /config\.json has no quantization_config with weight_block_size/,
  });
  expectRejected(FP8, (dir) => editConfig(dir, (c) => ((c.quantization_config as Record<string, unknown>).quant_method = 'gptq')), {
    names: 'config.json',
    problem: /quant_method "gptq" is not supported/,
  });
  expectRejected(FP8, (dir) => editConfig(dir, (c) => ((c.quantization_config as Record<string, unknown>).weight_block_size = [16, 32])), {
    names: 'weight_scale_inv',
    problem: /has shape \[\d+, \d+\] but config\.json implies/,
  });
});

test('hybrid and unknown model types name what is supported', () => {
  expectRejected(OLMOE_F16, (dir) => editConfig(dir, (c) => (c.model_type = 'qwen3_next')), {
    names: 'config.json',
    problem: /qwen3_next" is not supported: a hybrid .*\(supported: .*deepseek_v3.*\)/,
  });
  expectRejected(OLMOE_F16, (dir) => editConfig(dir, (c) => (c.model_type = 'jamba')), {
    names: 'config.json',
    problem: /jamba" is not supported: a hybrid of Mamba/,
  });
  expectRejected(OLMOE_F16, (dir) => editConfig(dir, (c) => (c.model_type = 'gpt_neox')), {
    names: 'config.json',
    problem: /unknown model_type "gpt_neox" \(supported: mixtral, olmoe, qwen2_moe, qwen3_moe, deepseek_v2, deepseek_v3, glm4_moe/,
  });
});

test("DeepSeek-V3's multi-token prediction layer and RoPE buffers open with a warning naming them", () => {
  const tmp = tempDir();
  try {
    const dir = path.join(tmp, 'model');
    copyDir(DEEPSEEK_V3, dir);
    editSafetensors(dir, (st) => {
      const end = st.data.length;
      st.header['model.layers.3.eh_proj.weight'] = { dtype: 'F16', shape: [2, 2], data_offsets: [end, end + 8] };
      st.header['model.layers.0.self_attn.rotary_emb.inv_freq'] = { dtype: 'F16', shape: [4], data_offsets: [end + 8, end + 16] };
      st.data = Buffer.concat([st.data, Buffer.alloc(16)]);
    });
    const info = runCliJson<{ warnings: string[]; routing_rule: string }>(['info', '--model', dir, '--json']);
    assert.equal(info.warnings.length, 2, JSON.stringify(info.warnings));
    assert.ok(info.warnings.some((w) => /multi-token prediction.*model\.layers\.3\.eh_proj\.weight/.test(w)), info.warnings.join('\n'));
    assert.ok(info.warnings.some((w) => /RoPE frequency buffers.*rotary_emb\.inv_freq/.test(w)), info.warnings.join('\n'));
    const human = runCli(['info', '--model', dir]);
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /warning: 1 tensor not used: multi-token prediction/);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('info shows the routing rule in one line', () => {
  const rule = (dir: string) => runCliJson<{ routing_rule: string }>(['info', '--model', dir, '--json']).routing_rule;
  assert.equal(rule(DEEPSEEK_V3_GROUPED), 'sigmoid + selection bias, group-limited top-3 of 8 (4 groups, 2 kept, group score sum of top-2), renormalised, ×2.5');
  assert.equal(rule(DEEPSEEK_V2), 'softmax, top-3 of 8, not renormalised, ×1.25');
  assert.equal(rule(OLMOE_F16), 'softmax, top-2 of 8, not renormalised');
  assert.equal(rule(path.join(PARITY_DIR, 'mixtral-perexpert-f32', 'model')), 'softmax, top-2 of 8, renormalised');
  assert.equal(rule(path.join(PARITY_DIR, 'phimoe-perexpert-f32', 'model')),
    'sparsemixer top-2 of 8 (each slot: best remaining logit, softmax over the logits within 2×0.2 relative of it), not renormalised');
  assert.equal(rule(path.join(PARITY_DIR, 'granitemoe-fused-f32', 'model')), 'softmax, top-2 of 8, renormalised');
  assert.equal(rule(path.join(PARITY_DIR, 'gpt_oss-mxfp4-sharded', 'model')), 'softmax, top-4 of 8, renormalised');
  assert.equal(rule(path.join(PARITY_DIR, 'llama4_text-fused-f32', 'model')),
    "sigmoid, top-1 of 8 by logit, not renormalised, the weight scales the expert's input");
  assert.equal(rule(path.join(PARITY_DIR, 'llama4-fused-bf16-sharded', 'model')),
    "sigmoid, top-2 of 8 by logit, not renormalised, the weight scales the expert's input");
  const human = runCli(['info', '--model', DEEPSEEK_V2]);
  assert.match(human.stdout, /^routing: softmax, top-3 of 8, not renormalised, ×1\.25$/m);
});

test('gpt-oss MXFP4 experts: missing scales, misshapen blocks, the NaN scale, no quantization_config: refused naming the tensor or field', () => {
  const MXFP4 = path.join(PARITY_DIR, 'gpt_oss-mxfp4-sharded', 'model');
  const shard = 'model-00001-of-00002.safetensors';
  const scales = 'model.layers.1.mlp.experts.down_proj_scales';
  const blocks = 'model.layers.1.mlp.experts.down_proj_blocks';
  expectRejected(
    MXFP4,
    (dir) => {
      editSafetensors(dir, (st) => {
        const [b, e] = st.header[scales].data_offsets;
        delete st.header[scales];
        for (const entry of Object.values(st.header))
          if (entry.data_offsets[0] >= e) entry.data_offsets = [entry.data_offsets[0] - (e - b), entry.data_offsets[1] - (e - b)];
        st.data = Buffer.concat([st.data.subarray(0, b), st.data.subarray(e)]);
      }, shard);
      const index = path.join(dir, 'model.safetensors.index.json');
      const idx = JSON.parse(fs.readFileSync(index, 'utf8')) as { weight_map: Record<string, string> };
      delete idx.weight_map[scales];
      fs.writeFileSync(index, JSON.stringify(idx, null, 2));
    },
    { names: blocks, problem: /is MXFP4 but its scales ".*down_proj_scales" are missing/ },
  );
  // Same bytes, other shape: [E, 2I, H/32, 16] read as [E, I, 2·H/32, 16].
  expectRejected(MXFP4, (dir) => editSafetensors(dir, (st) => {
    const [E, rows, groups, b] = st.header[blocks].shape;
    st.header[blocks].shape = [E, rows / 2, groups * 2, b];
  }, shard), { names: blocks, problem: /has shape \[8, 16, 2, 16\] but config\.json implies \[8, 32, 1, 16\]/ });
  expectRejected(MXFP4, (dir) => editSafetensors(dir, (st) => st.data.fill(0xff, st.header[scales].data_offsets[0], st.header[scales].data_offsets[0] + 1), shard), {
    names: scales,
    problem: /holds the E8M0 NaN scale 0xFF/,
  });
  expectRejected(MXFP4, (dir) => editConfig(dir, (c) => delete c.quantization_config), {
    names: /_blocks/,
    problem: /is MXFP4 but config\.json has no quantization_config with quant_method "mxfp4"/,
  });
  expectRejected(OLMOE_F16, (dir) => editConfig(dir, (c) => (c.quantization_config = { quant_method: 'mxfp4' })), {
    names: 'config.json',
    problem: /quant_method "mxfp4" is read for gpt_oss experts only/,
  });
});

test('gpt-oss layer_types and sliding_window that contradict each other: refused naming the field', () => {
  const GPT_OSS = path.join(PARITY_DIR, 'gpt_oss-fused-f32', 'model');
  expectRejected(GPT_OSS, (dir) => editConfig(dir, (c) => (c.layer_types = ['sliding_attention', 'full_attention'])), {
    names: 'config.json',
    problem: /"layer_types" must list sliding_attention or full_attention once per layer \(3, num_hidden_layers\)/,
  });
  expectRejected(GPT_OSS, (dir) => editConfig(dir, (c) => (c.layer_types = ['sliding_attention', 'chunked_attention', 'full_attention'])), {
    names: 'config.json',
    problem: /"layer_types"\[1\] is "chunked_attention"/,
  });
  expectRejected(GPT_OSS, (dir) => editConfig(dir, (c) => (c.sliding_window = null)), {
    names: 'config.json',
    problem: /layer 0 is sliding_attention but "sliding_window" is missing/,
  });
});

test('llama4 configs that contradict themselves: refused in one line naming the field', () => {
  const TEXT = path.join(PARITY_DIR, 'llama4_text-fused-f32', 'model');
  const NESTED = path.join(PARITY_DIR, 'llama4-fused-bf16-sharded', 'model');
  expectRejected(TEXT, (dir) => editConfig(dir, (c) => (c.num_experts_per_tok = 9)), {
    names: 'config.json',
    problem: /num_experts_per_tok \(9\) must be between 1 and the number of experts \(8\)/,
  });
  expectRejected(TEXT, (dir) => editConfig(dir, (c) => (c.no_rope_layers = [1, 0, 1])), {
    names: 'config.json',
    problem: /"no_rope_layers" has 3 entries; it needs one per layer \(4, num_hidden_layers\)/,
  });
  expectRejected(TEXT, (dir) => editConfig(dir, (c) => (c.attention_chunk_size = 0)), {
    names: 'config.json',
    problem: /"attention_chunk_size" = 0 must be positive/,
  });
  expectRejected(TEXT, (dir) => editConfig(dir, (c) => (c.layer_types = ['chunked_attention', 'sliding_attention', 'full_attention', 'chunked_attention'])), {
    names: 'config.json',
    problem: /"layer_types"\[1\] is "sliding_attention" \(chunked_attention or full_attention\)/,
  });
  expectRejected(TEXT, (dir) => editConfig(dir, (c) => (c.moe_layers = [0, 4])), {
    names: 'config.json',
    problem: /"moe_layers" holds 4, not a layer number below num_hidden_layers \(4\)/,
  });
  // The vision-language checkpoint: the nested text config's fields, named with their place.
  expectRejected(NESTED, (dir) => editConfig(dir, (c) => ((c.text_config as Record<string, unknown>).num_experts_per_tok = 9)), {
    names: 'config.json',
    problem: /text_config: num_experts_per_tok \(9\) must be between 1 and the number of experts \(8\)/,
  });
  expectRejected(NESTED, (dir) => editConfig(dir, (c) => ((c.text_config as Record<string, unknown>).attention_chunk_size = -4)), {
    names: 'config.json',
    problem: /text_config: "attention_chunk_size" = -4 must be positive/,
  });
  expectRejected(NESTED, (dir) => editConfig(dir, (c) => delete c.text_config), {
    names: 'config.json',
    problem: /"text_config" must be an object holding the text model's config \(model_type llama4\)/,
  });
});

test('llama4 vision-language checkpoint: opens with the vision tower named in a warning', () => {
  const NESTED = path.join(PARITY_DIR, 'llama4-fused-bf16-sharded', 'model');
  const info = runCliJson<{ model_type: string; warnings: string[] }>(['info', '--model', NESTED, '--json']);
  assert.equal(info.model_type, 'llama4');
  assert.ok(info.warnings.some((w) => /^3 tensors not used: the vision tower and its projector/.test(w)), info.warnings.join('\n'));
});
