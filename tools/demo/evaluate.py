#!/usr/bin/env python3
"""PyTorch measurement of the demo model on the task suite: multiple-choice accuracy per skill, generative exact
match per skill, and expert load per skill per layer.

Multiple choice: the prompt ends with "Answer:"; the prediction is the option whose letter token (" A".." D",
ids 256..259) has the highest logit (= log-probability) at the last prompt position.
Generative: greedy decoding after "A:" until <|endoftext|> or a newline (at most 16 tokens); exact match of the
stripped text against "answer".
Expert load: over every prompt token of the multiple-choice items of a skill, the fraction of the k routing slots
that went to each expert (rows sum to 1 per layer).

    /usr/bin/python3 tools/demo/evaluate.py --model media/demo-model --tasks media/tasks [--json out.json]
"""
import argparse
import json
import os
import sys

# OpenBLAS's own thread pool fights torch's OpenMP threads on this machine (3x slower steps): torch's intra-op
# threads (set_num_threads) are the only parallelism.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402
import st  # noqa: E402
import tokenizer as tok  # noqa: E402
from model import Olmoe  # noqa: E402

LETTER_IDS = [tok.LETTER_IDS[L] for L in "ABCD"]


def load_model(model_dir, dtype=torch.float32):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    m = Olmoe(cfg)
    sd = {k: v.to(dtype) for k, v in st.load(os.path.join(model_dir, "model.safetensors")).items()}
    m.to(dtype)
    m.load_hf_state_dict(sd)
    m.eval()
    return m


def _batches(seqs, bs):
    for i in range(0, len(seqs), bs):
        chunk = seqs[i:i + bs]
        T = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), T), tok.EOS_ID, dtype=torch.long)
        for j, s in enumerate(chunk):
            ids[j, :len(s)] = torch.tensor(s)
        yield i, chunk, ids


@torch.no_grad()
def mc_eval(model, items, bs=64, routing=False):
    """Returns (per-item predicted letter list, per-item letter log-probs, load counts [skill][layer][E])."""
    seqs = [tok.encode(it["prompt"]) for it in items]
    preds, lps = [], []
    E = model.cfg["num_experts"]
    L = model.cfg["num_hidden_layers"]
    load = {}
    for i, chunk, ids in _batches(seqs, bs):
        logits, _, rt = model(ids, want_routing=routing)
        for j, s in enumerate(chunk):
            row = torch.log_softmax(logits[j, len(s) - 1].double(), -1)[LETTER_IDS]
            lps.append(row.tolist())
            preds.append("ABCD"[int(row.argmax())])
            if routing:
                skill = items[i + j]["skill"]
                acc = load.setdefault(skill, torch.zeros(L, E, dtype=torch.float64))
                T = ids.shape[1]
                for l, (topi, _) in enumerate(rt):
                    sel = topi.view(ids.shape[0], T, -1)[j, :len(s)].reshape(-1)
                    acc[l] += torch.bincount(sel, minlength=E).double()
    return preds, lps, load


def accuracy_by_skill(items, preds):
    res = {}
    for it, p in zip(items, preds):
        r = res.setdefault(it["skill"], [0, 0])
        r[0] += int(p == it["answer"])
        r[1] += 1
    return {s: res[s][0] / res[s][1] for s in corpus.SKILLS if s in res}


@torch.no_grad()
def generate(model, prompts, max_new=16, bs=64):
    outs = []
    stop = {tok.EOS_ID, 10}
    for i in range(0, len(prompts), bs):
        seqs = [tok.encode(p) for p in prompts[i:i + bs]]
        gen = [[] for _ in seqs]
        done = [False] * len(seqs)
        for _ in range(max_new):
            cur = [s + g for s, g in zip(seqs, gen)]
            _, chunk, ids = next(_batches(cur, len(cur)))
            logits, _, _ = model(ids)
            for j, s in enumerate(cur):
                if done[j]:
                    continue
                t = int(logits[j, len(s) - 1].argmax())
                if t in stop:
                    done[j] = True
                else:
                    gen[j].append(t)
            if all(done):
                break
        outs.extend(tok.decode(g) for g in gen)
    return outs


def gen_eval(model, items):
    outs = generate(model, [it["prompt"] for it in items])
    res = {}
    for it, o in zip(items, outs):
        r = res.setdefault(it["skill"], [0, 0])
        r[0] += int(o.strip() == it["answer"])
        r[1] += 1
    return {s: res[s][0] / res[s][1] for s in corpus.SKILLS if s in res}, outs


def load_table(load):
    """skill -> [L][E] fractions (percent)."""
    out = {}
    for s in corpus.SKILLS:
        if s in load:
            a = load[s]
            out[s] = (100.0 * a / a.sum(-1, keepdim=True)).tolist()
    return out


def markdown(results):
    lines = []
    acc = results["mc_accuracy"]
    lines.append("| skill | " + " | ".join(acc.keys()) + " | mean |")
    lines.append("|---" * (len(acc) + 2) + "|")
    for split in ("eval", "reference"):
        a = results["mc_accuracy_by_split"][split]
        lines.append(f"| MC {split} | " + " | ".join(f"{100 * a[s]:.0f}%" for s in acc) +
                     f" | {100 * sum(a.values()) / len(a):.0f}% |")
    g = results["generative_exact_match"]
    lines.append("| generative EM | " + " | ".join(f"{100 * g[s]:.0f}%" for s in acc) +
                 f" | {100 * sum(g.values()) / len(g):.0f}% |")
    lines.append("")
    lt = results["expert_load_percent"]
    L = len(next(iter(lt.values())))
    E = len(next(iter(lt.values()))[0])
    for l in range(L):
        lines.append(f"Layer {l} — expert load (% of routing slots over prompt tokens of the eval items)")
        lines.append("")
        lines.append("| skill | " + " | ".join(f"e{e}" for e in range(E)) + " |")
        lines.append("|---" * (E + 1) + "|")
        for s, rows in lt.items():
            r = rows[l]
            mx = max(r)
            lines.append(f"| {s} | " + " | ".join((f"**{v:.0f}**" if v == mx else f"{v:.0f}") for v in r) + " |")
        lines.append("")
    return "\n".join(lines)


def run_all(model, tasks_dir):
    ev = corpus.read_jsonl(os.path.join(tasks_dir, "eval.jsonl"))
    ref = corpus.read_jsonl(os.path.join(tasks_dir, "reference.jsonl"))
    gen = corpus.read_jsonl(os.path.join(tasks_dir, "generative.jsonl"))
    pe, _, load = mc_eval(model, ev, routing=True)
    pr, _, _ = mc_eval(model, ref)
    acc_e = accuracy_by_skill(ev, pe)
    acc_r = accuracy_by_skill(ref, pr)
    g, outs = gen_eval(model, gen)
    return {
        "mc_accuracy": acc_e,
        "mc_accuracy_by_split": {"eval": acc_e, "reference": acc_r},
        "generative_exact_match": g,
        "generative_samples": [{"id": it["id"], "prompt": it["prompt"], "answer": it["answer"], "output": o}
                               for it, o in list(zip(gen, outs))[:: max(1, len(gen) // 14)]],
        "expert_load_percent": load_table(load),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="media/demo-model")
    ap.add_argument("--tasks", default="media/tasks")
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = load_model(a.model)
    res = run_all(model, a.tasks)
    print(markdown(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
