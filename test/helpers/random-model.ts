// A random OLMoE-shaped checkpoint large enough that an engine call is still running when a test cancels it
// or kills the engine process.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeSafetensorsRaw, type TensorEntry } from './safetensors';

export function writeRandomOlmoe(dir: string, shape: { hidden?: number; layers?: number; experts?: number; topK?: number; vocab?: number } = {}): void {
  const H = shape.hidden ?? 256, L = shape.layers ?? 4, E = shape.experts ?? 8, K = shape.topK ?? 2, I = H, V = shape.vocab ?? 512;
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(
    path.join(dir, 'config.json'),
    JSON.stringify({
      model_type: 'olmoe', hidden_size: H, num_hidden_layers: L, num_attention_heads: 4, num_key_value_heads: 4,
      intermediate_size: I, num_experts: E, num_experts_per_tok: K, vocab_size: V, max_position_embeddings: 4096,
      rms_norm_eps: 1e-5, rope_theta: 10000, norm_topk_prob: false, tie_word_embeddings: false, eos_token_id: -1,
    }),
  );
  const tensors: [string, number[]][] = [['model.embed_tokens.weight', [V, H]], ['lm_head.weight', [V, H]], ['model.norm.weight', [H]]];
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    tensors.push([`${p}input_layernorm.weight`, [H]], [`${p}post_attention_layernorm.weight`, [H]]);
    for (const n of 'qkvo') tensors.push([`${p}self_attn.${n}_proj.weight`, [H, H]]);
    tensors.push([`${p}self_attn.q_norm.weight`, [H]], [`${p}self_attn.k_norm.weight`, [H]], [`${p}mlp.gate.weight`, [E, H]]);
    for (let e = 0; e < E; e++) {
      tensors.push([`${p}mlp.experts.${e}.gate_proj.weight`, [I, H]], [`${p}mlp.experts.${e}.up_proj.weight`, [I, H]], [`${p}mlp.experts.${e}.down_proj.weight`, [H, I]]);
    }
  }
  let seed = 1;
  const header: Record<string, TensorEntry> = {};
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const [name, dims] of tensors) {
    const values = new Float32Array(dims.reduce((a, b) => a * b, 1));
    const isNorm = dims.length === 1;
    for (let i = 0; i < values.length; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      values[i] = isNorm ? 1 : (seed / 2 ** 32 - 0.5) * 0.1;
    }
    const bytes = Buffer.from(values.buffer);
    header[name] = { dtype: 'F32', shape: dims, data_offsets: [offset, offset + bytes.length] };
    offset += bytes.length;
    chunks.push(bytes);
  }
  writeSafetensorsRaw(path.join(dir, 'model.safetensors'), { header, data: Buffer.concat(chunks) });
}
