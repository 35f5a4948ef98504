#!/usr/bin/env python3
"""Train the Routescope demo model (OLMoE architecture) from scratch on the CPU and save it in the Hugging Face
layout (config.json, model.safetensors in BF16, tokenizer.json, tokenizer_config.json, generation_config.json).

    /usr/bin/python3 tools/demo/corpus.py train --out .cache/demo/train.jsonl
    /usr/bin/python3 tools/demo/train.py --corpus .cache/demo/train.jsonl --out media/demo-model --steps 7000 --threads 2

Deterministic: fixed seed, torch.use_deterministic_algorithms(True), data order from random.Random(seed); the same
torch build and thread count give the same checkpoint bit for bit (README, "The demo model").
"""
import argparse
import json
import math
import os
import random
import sys
import time

# OpenBLAS's own thread pool fights torch's OpenMP threads on this machine (3x slower steps): torch's intra-op
# threads (set_num_threads) are the only parallelism.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402
import evaluate  # noqa: E402
import st  # noqa: E402
import tokenizer as tok  # noqa: E402
from model import Olmoe, default_config, load_balancing_loss  # noqa: E402


def pack_rows(examples, T, rng, other_weight):
    """Greedy packing of tokenised examples (each followed by <|endoftext|>) into rows of T+1 tokens; rows start at
    an example start; the tail is padded with <|endoftext|>. Returns ids [R, T+1] and the loss weight of each
    position as a target [R, T+1]: 1 inside the example's answer spans and for the closing <|endoftext|>,
    `other_weight` for the rest of the example (question, options), 0 for padding."""
    seqs = []
    for text, spans in examples:
        cuts = sorted({0, len(text)} | {c for sp in spans for c in sp})
        ids, w = [], []
        for a, b in zip(cuts, cuts[1:]):
            seg = tok.encode(text[a:b])
            inside = any(s <= a and b <= e for s, e in spans)
            ids += seg
            w += [1.0 if inside else other_weight] * len(seg)
        assert ids == tok.encode(text), text  # the cuts never split a merge
        seqs.append((ids + [tok.EOS_ID], w + [1.0]))
    rng.shuffle(seqs)
    rows, weights = [], []
    cur, cw = [], []
    for s, w in seqs:
        s, w = s[:T + 1], w[:T + 1]
        if len(cur) + len(s) > T + 1:
            rows.append(cur + [tok.EOS_ID] * (T + 1 - len(cur)))
            weights.append(cw + [0.0] * (T + 1 - len(cur)))
            cur, cw = [], []
        cur, cw = cur + s, cw + w
    if cur:
        rows.append(cur + [tok.EOS_ID] * (T + 1 - len(cur)))
        weights.append(cw + [0.0] * (T + 1 - len(cur)))
    return torch.tensor(rows, dtype=torch.long), torch.tensor(weights, dtype=torch.float32)


def lr_at(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def rounded_copy(model, dtype):
    """A float32 copy of the model whose weights are rounded to the save dtype (what the checkpoint holds)."""
    m = Olmoe(model.cfg)
    m.load_hf_state_dict({k: v.to(dtype).to(torch.float32) for k, v in model.hf_state_dict().items()})
    m.eval()
    return m


def save_checkpoint(model, out_dir, dtype, extra_meta):
    os.makedirs(out_dir, exist_ok=True)
    cfg = dict(model.cfg)
    cfg["torch_dtype"] = {torch.bfloat16: "bfloat16", torch.float32: "float32"}[dtype]
    cfg["transformers_version"] = "4.46.0"
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    sd = {k: v.to(dtype) for k, v in model.hf_state_dict().items()}
    st.save(os.path.join(out_dir, "model.safetensors"), sd, metadata={"format": "pt", **extra_meta})
    tok.write_tokenizer_files(out_dir)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=".cache/demo/train.jsonl")
    ap.add_argument("--out", default="media/demo-model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--expert-width", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=7000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--aux-coef", type=float, default=0.01)
    ap.add_argument("--other-weight", type=float, default=0.1,
                    help="loss weight of the non-answer tokens (answer tokens: 1)")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--log", default=None, help="also write the log lines (JSONL) here")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    logf = open(a.log, "w") if a.log else None

    def log(obj):
        obj = {"t": round(time.time() - t0, 1), **obj}
        print(json.dumps(obj), flush=True)
        if logf:
            logf.write(json.dumps(obj) + "\n")
            logf.flush()

    exs = [json.loads(line) for line in open(a.corpus, encoding="utf-8")]
    # stage 0 (warm-up) rows come first, in their own shuffled order; then stage 1 rows
    stage_rows = []
    for stage in sorted({e.get("stage", 0) for e in exs}):
        stage_rows.append(pack_rows([(e["text"], e["answer_spans"]) for e in exs if e.get("stage", 0) == stage],
                                    a.seq, random.Random(a.seed + stage), a.other_weight))
    warm_rows = stage_rows[0][0].shape[0] if len(stage_rows) > 1 else 0
    rows = torch.cat([r for r, _ in stage_rows])
    wts = torch.cat([w for _, w in stage_rows])
    masks = wts > 0
    log({"event": "data", "examples": len(exs), "rows": rows.shape[0], "warmup_rows": warm_rows,
         "tokens": int(masks.sum()),
         "answer_tokens": int((wts == 1).sum()), "fill": round(float(masks.float().mean()), 3)})

    cfg = default_config(num_hidden_layers=a.layers, hidden_size=a.hidden, num_attention_heads=a.heads,
                         num_key_value_heads=a.heads, num_experts=a.experts, intermediate_size=a.expert_width,
                         num_experts_per_tok=a.top_k, router_aux_loss_coef=a.aux_coef,
                         vocab_size=tok.VOCAB_SIZE, max_position_embeddings=tok.MODEL_MAX_LENGTH)
    model = Olmoe(cfg)
    model.init_weights(torch.Generator().manual_seed(a.seed))
    nparams = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    log({"event": "model", "params": nparams, "config": {k: cfg[k] for k in (
        "num_hidden_layers", "hidden_size", "num_attention_heads", "num_experts", "num_experts_per_tok",
        "intermediate_size")}})

    dev = corpus.dev_set()
    order_rng = random.Random(a.seed + 1)
    perm = list(range(warm_rows))  # warm-up rows first, once, in packed (already shuffled) order
    step = 0
    E, k = cfg["num_experts"], cfg["num_experts_per_tok"]
    while step < a.steps:
        if len(perm) < a.batch:
            p = list(range(warm_rows, rows.shape[0]))
            order_rng.shuffle(p)
            perm += p
        idx = torch.tensor(perm[:a.batch])
        perm = perm[a.batch:]
        batch, m, w = rows[idx], masks[idx], wts[idx]
        x, y, yw = batch[:, :-1], batch[:, 1:], w[:, 1:]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr, a.warmup)
        model.train()
        logits, router, _ = model(x)
        tok_ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        ce = (tok_ce * yw.reshape(-1)).sum() / yw.sum()
        valid = m[:, :-1].reshape(-1)
        aux = load_balancing_loss([r[valid] for r in router], k, E)
        loss = ce + a.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 25 == 0 or step == 1:
            log({"step": step, "ce": round(ce.item(), 4), "aux": round(aux.item(), 4),
                 "lr": round(opt.param_groups[0]["lr"], 6)})
        if step % a.eval_every == 0 or step == a.steps:
            model.eval()
            preds, _, _ = evaluate.mc_eval(model, dev)
            acc = evaluate.accuracy_by_skill(dev, preds)
            log({"step": step, "dev_mc": {s: round(v, 3) for s, v in acc.items()},
                 "dev_mean": round(sum(acc.values()) / len(acc), 3)})

    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    train_s = round(time.time() - t0, 1)
    save_checkpoint(model, a.out, dtype, {"routescope_demo": "tools/demo/train.py", "seed": str(a.seed),
                                          "steps": str(a.steps)})
    log({"event": "saved", "out": a.out, "train_seconds": train_s})
    rm = rounded_copy(model, dtype)
    preds, _, _ = evaluate.mc_eval(rm, dev)
    acc = evaluate.accuracy_by_skill(dev, preds)
    log({"event": "dev_rounded", "dev_mc": {s: round(v, 3) for s, v in acc.items()},
         "dev_mean": round(sum(acc.values()) / len(acc), 3)})


if __name__ == "__main__":
    main()
