// Writes the seed inputs of the fuzz targets into fuzz/corpus/<target>/ from the test fixtures and small
// hand-made cases (run once; the files are committed). node fuzz/make-seeds.mjs
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const corpus = (target) => {
  const dir = path.join(root, 'fuzz', 'corpus', target);
  fs.mkdirSync(dir, { recursive: true });
  return dir;
};
const parity = path.join(root, 'test', 'fixtures', 'parity');
const fixtures = fs.readdirSync(parity).filter((d) => fs.existsSync(path.join(parity, d, 'model', 'config.json'))).sort();

// safetensors: an 8-byte length, a header, data that tiles it.
function safetensors(tensors, metadata) {
  const header = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  const bits = { F32: 32, F16: 16, BF16: 16, I32: 32, U8: 8, BOOL: 8, F4: 4, F64: 64, I64: 64, F8_E4M3: 8 };
  for (const [name, dtype, shape] of tensors) {
    const n = shape.reduce((a, b) => a * b, 1);
    const bytes = Math.ceil((n * bits[dtype]) / 8);
    header[name] = { dtype, shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const data = Buffer.alloc(offset);
  for (let i = 0; i < offset; i++) data[i] = (i * 37) & 0xff;
  return Buffer.concat([len, json, data]);
}
const st = corpus('safetensors');
fs.writeFileSync(path.join(st, 'two-f32'), safetensors([['a', 'F32', [2, 3]], ['b.weight', 'F32', [4]]]));
fs.writeFileSync(path.join(st, 'dtypes'), safetensors([['h', 'F16', [3]], ['bf', 'BF16', [2, 2]], ['i', 'I32', [1]], ['u', 'U8', [5]], ['f4', 'F4', [3]], ['z', 'F32', [0, 4]], ['s', 'F64', []]]));
fs.writeFileSync(path.join(st, 'metadata'), safetensors([['model.layers.0.mlp.gate.weight', 'BF16', [8, 4]]], { format: 'pt', note: 'é\u00e9' }));
fs.writeFileSync(path.join(st, 'empty'), safetensors([]));

// config: one byte choosing the fixture (its index among the sorted folders; config_fuzz.cpp takes it modulo the
// fixtures of the config's model_type), then config.json, and after
// 0xFF bytes generation_config.json and the index.
const cfg = corpus('config');
fixtures.forEach((name, i) => {
  const dir = path.join(parity, name, 'model');
  const parts = [fs.readFileSync(path.join(dir, 'config.json'))];
  const gen = Buffer.from(JSON.stringify({ eos_token_id: [1, 2], bos_token_id: 0 }));
  parts.push(gen);
  if (fs.existsSync(path.join(dir, 'model.safetensors.index.json'))) parts.push(fs.readFileSync(path.join(dir, 'model.safetensors.index.json')));
  const sep = Buffer.from([0xff]);
  fs.writeFileSync(path.join(cfg, name), Buffer.concat([Buffer.from([i]), parts[0]]));
  fs.writeFileSync(path.join(cfg, `${name}+files`), Buffer.concat([Buffer.from([i]), ...parts.flatMap((p, j) => (j ? [sep, p] : [p]))]));
});

// patch: experts, top-k, layers, dense-layer bits, logit flavour, routing rule, then the patch JSON (patch_fuzz.cpp).
const pt = corpus('patch');
const shape = Buffer.from([7, 1, 3, 0, 0, 0]); // 8 experts, top-2, 4 layers, all MoE, softmax
const grouped = Buffer.from([7, 1, 3, 0, 0, 0x4b]); // sigmoid, renormalised, selection bias, 2 groups
let n = 0;
for (const name of fixtures) {
  const cases = JSON.parse(fs.readFileSync(path.join(parity, name, 'cases.json'), 'utf8'));
  for (const run of cases.runs) {
    if (!run.patch) continue;
    fs.writeFileSync(path.join(pt, `${name}-${run.name}`), Buffer.concat([shape, Buffer.from(JSON.stringify(run.patch))]));
    n++;
  }
  if (n > 30) break;
}
fs.writeFileSync(path.join(pt, 'tail-mix'), Buffer.concat([shape, Buffer.from('{"layers":{"1":{"mix":{"3+":[0.5,0.5,0,0,0,0,0,0]},"mask":[7],"force":[2]}}}')]));
fs.writeFileSync(path.join(pt, 'wide'), Buffer.concat([Buffer.from([0x85, 3, 1, 0, 5, 0]), Buffer.from('{"layers":{"0":{"bias":{"260":2.5},"mask":[0,1,2]}}}')]));
fs.writeFileSync(path.join(pt, 'grouped'), Buffer.concat([grouped, Buffer.from('{"layers":{"2":{"mask":[0,1,2,3],"force":[5]}}}')]));
