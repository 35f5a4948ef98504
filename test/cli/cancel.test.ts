// Ctrl-C: SIGINT while the engine is generating cancels the call cleanly (exit 130, one line, no stack trace).
// Needs a model slow enough to still be running when the signal lands: a random OLMoE-shaped one written here.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, tempDir } from '../helpers/cli';
import { writeSafetensorsRaw, type TensorEntry } from '../helpers/safetensors';

function writeRandomOlmoe(dir: string): void {
  const H = 256, L = 4, E = 8, K = 2, I = 256, V = 512;
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
  for (const [name, shape] of tensors) {
    const values = new Float32Array(shape.reduce((a, b) => a * b, 1));
    const isNorm = shape.length === 1;
    for (let i = 0; i < values.length; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      values[i] = isNorm ? 1 : ((seed / 2 ** 32) - 0.5) * 0.1;
    }
    const bytes = Buffer.from(values.buffer);
    header[name] = { dtype: 'F32', shape, data_offsets: [offset, offset + bytes.length] };
    offset += bytes.length;
    chunks.push(bytes);
  }
  writeSafetensorsRaw(path.join(dir, 'model.safetensors'), { header, data: Buffer.concat(chunks) });
}

test('SIGINT during generate cancels the engine call: exit 130, "routescope: cancelled"', async () => {
  const tmp = tempDir();
  try {
    writeRandomOlmoe(tmp);
    const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'routescope.js'), 'generate', '--model', tmp, '--tokens', '1,2,3', '--max-new-tokens', '4000', '--threads', '1'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let signalled = false;
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      // Generated ids follow the "1 2 3 | " prompt echo: the engine is running now.
      if (!signalled && /\|\s+\d+/.test(stdout)) {
        signalled = true;
        child.kill('SIGINT');
      }
    });
    const code = await exit;
    assert.ok(signalled, `the generation ended before it could be interrupted: ${stdout.slice(0, 200)}`);
    assert.equal(code, 130, `exit ${code}, stderr: ${stderr}`);
    assert.equal(stderr, 'routescope: cancelled\n');
    const generated = stdout.split('|')[1].trim().split(/\s+/);
    assert.ok(generated.length < 4000, 'stopped early');
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
