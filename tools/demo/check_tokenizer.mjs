// Checks that @huggingface/tokenizers (the JS library) tokenises exactly like tools/demo/tokenizer.py.
//
//   /usr/bin/python3 tools/demo/tokenizer_cases.py > .cache/demo/tok_cases.jsonl
//   node tools/demo/check_tokenizer.mjs .cache/demo/tok_cases.jsonl [media/demo-model] [--lib DIR]
//
// Each JSONL line is {"text": str, "ids": [int...]} (the Python ids). For every line: encode(text).ids must equal
// ids, and decode(ids) must give back text. The library is imported as "@huggingface/tokenizers" (resolved from
// this repository) or, with --lib DIR (or env HF_TOKENIZERS_DIR), from DIR/node_modules/@huggingface/tokenizers
// — e.g. after `mkdir -p /tmp/tokcheck && cd /tmp/tokcheck && npm init -y && npm i @huggingface/tokenizers`.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
let libDir = process.env.HF_TOKENIZERS_DIR || null;
const pos = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--lib") libDir = args[++i];
  else pos.push(args[i]);
}
const casesPath = pos[0] || ".cache/demo/tok_cases.jsonl";
const modelDir = pos[1] || "media/demo-model";

let mod;
if (libDir) {
  const entry = path.resolve(libDir, "node_modules/@huggingface/tokenizers/dist/tokenizers.mjs");
  mod = await import(pathToFileURL(entry).href);
} else {
  mod = await import("@huggingface/tokenizers");
}
const { Tokenizer } = mod;

const tokenizerJson = JSON.parse(fs.readFileSync(path.join(modelDir, "tokenizer.json"), "utf8"));
const tokenizerConfig = JSON.parse(fs.readFileSync(path.join(modelDir, "tokenizer_config.json"), "utf8"));
const tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);

const lines = fs.readFileSync(casesPath, "utf8").split("\n").filter((l) => l.trim());
let bad = 0;
let tokens = 0;
for (const [n, line] of lines.entries()) {
  const { text, ids } = JSON.parse(line);
  const got = tokenizer.encode(text).ids;
  tokens += got.length;
  const same = got.length === ids.length && got.every((v, i) => v === ids[i]);
  const back = tokenizer.decode(ids);
  if (!same || back !== text) {
    bad++;
    if (bad <= 5) {
      console.error(`case ${n}: ${JSON.stringify(text)}`);
      if (!same) console.error(`  python ${JSON.stringify(ids)}\n  js     ${JSON.stringify(got)}`);
      if (back !== text) console.error(`  decode ${JSON.stringify(back)}`);
    }
  }
}
// The answer letters after "Answer:" must be single tokens (multiple-choice scoring relies on it).
const letters = ["A", "B", "C", "D"].map((L) => tokenizer.encode(" " + L).ids);
if (!letters.every((ids, i) => ids.length === 1 && ids[0] === 256 + i)) {
  bad++;
  console.error(`" A".." D" should be ids 256..259, got ${JSON.stringify(letters)}`);
}
if (bad) {
  console.error(`FAIL: ${bad} of ${lines.length} cases differ`);
  process.exit(1);
}
console.log(`ok: ${lines.length} cases, ${tokens} tokens identical to Python; decode round-trips`);
