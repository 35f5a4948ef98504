#!/usr/bin/env python3
"""Writes the demo-model parity fixture test/fixtures/demo/{cases.json, reference.safetensors} in the format of
test/parity/README.md: the reference is this folder's PyTorch OLMoE (tools/demo/model.py) run in float64 on the
weights exactly as saved (BF16 upcast), on the tokens of the first prompt of media/demo.prompts.md.

    /usr/bin/python3 tools/demo/make_fixture.py [--model media/demo-model] [--prompts media/demo.prompts.md]
                                               [--out test/fixtures/demo]
"""
import argparse
import json
import os
import re
import sys

# OpenBLAS's own thread pool fights torch's OpenMP threads on this machine (3x slower steps): torch's intra-op
# threads (set_num_threads) are the only parallelism.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import evaluate  # noqa: E402
import st  # noqa: E402
import tokenizer as tok  # noqa: E402
from naive_forward import naive_forward  # noqa: E402


def read_prompts(path):
    """The prompts of a prompts file: each "## " heading starts one; its body (up to the next "## ") with the
    surrounding blank lines removed is the prompt text."""
    text = open(path, encoding="utf-8").read()
    parts = re.split(r"^## .*$", text, flags=re.M)[1:]
    titles = re.findall(r"^## (.*)$", text, flags=re.M)
    return [(t.strip(), p.strip("\n")) for t, p in zip(titles, parts)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="media/demo-model")
    ap.add_argument("--prompts", default="media/demo.prompts.md")
    ap.add_argument("--out", default="test/fixtures/demo")
    a = ap.parse_args()

    torch.set_num_threads(2)
    model = evaluate.load_model(a.model, torch.float64)
    cfg = model.cfg
    title, prompt = read_prompts(a.prompts)[0]
    tokens = tok.encode(prompt)
    # One patched run (mask + force + bias) so the patch path is checked on a real model too.
    patch = {"layers": {"1": {"mask": [0], "force": [5]}, "2": {"bias": {"3": 1.5, "6": -2.0}}}}
    runs = [{"name": "base", "patch": None}, {"name": "patched", "patch": patch}]

    ids = torch.tensor([tokens])
    ref = {}
    for r in runs:
        p = None
        if r["patch"]:
            p = {int(l): {"mask": v.get("mask"), "force": v.get("force"),
                          "bias": {int(e): b for e, b in (v.get("bias") or {}).items()}}
                 for l, v in r["patch"]["layers"].items()}
        with torch.no_grad():
            logits, router, routing = model(ids, want_routing=True, exact_routing=True, patch=p)
        ref[f"{r['name']}.logits"] = logits[0].to(torch.float32)
        for l in range(cfg["num_hidden_layers"]):
            topi, topw = routing[l]
            ref[f"{r['name']}.layer{l}.router_logits"] = router[l].to(torch.float32)
            ref[f"{r['name']}.layer{l}.experts"] = topi.to(torch.int32)
            ref[f"{r['name']}.layer{l}.weights"] = topw.to(torch.float32)

    # Cross-check the base run against an independent naive implementation (naive_forward.py).
    sd = st.load(os.path.join(a.model, "model.safetensors"))
    n_logits, n_routing = naive_forward(sd, cfg, tokens)
    d = (n_logits - ref["base.logits"].double()).abs().max().item()
    assert d < 1e-4, f"naive forward disagrees with model.py: max |dlogits| = {d}"
    for l, (rl, ex, wt) in enumerate(n_routing):
        assert torch.equal(ex.to(torch.int32), ref[f"base.layer{l}.experts"]), f"layer {l} experts differ"
        assert (rl - ref[f"base.layer{l}.router_logits"].double()).abs().max().item() < 1e-5
        assert (wt - ref[f"base.layer{l}.weights"].double()).abs().max().item() < 1e-6
    print(f"naive float64 forward agrees with model.py (max |dlogits| {d:.2e}, same experts in every layer)")

    os.makedirs(a.out, exist_ok=True)
    model_rel = os.path.relpath(os.path.abspath(a.model), os.path.abspath(a.out))
    cases = {
        "arch": "olmoe", "dtype": "BF16", "layout": "per-expert", "sharded": False,
        "model": model_rel,
        "prompt": prompt,
        "tokens": tokens,
        "runs": runs,
        "grads": [],
    }
    text = json.dumps(cases, indent=1)
    text = re.sub(r"\[\s*([-0-9.,\s]+?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]",
                  text)
    assert json.loads(text) == cases
    with open(os.path.join(a.out, "cases.json"), "w") as f:
        f.write(text + "\n")
    st.save(os.path.join(a.out, "reference.safetensors"), ref,
            metadata={"source": "tools/demo/make_fixture.py", "precision": "float64 reference, stored F32"})
    top = ref["base.logits"][-1].argmax().item()
    print(f"wrote {a.out}: prompt {title!r} ({len(tokens)} tokens), runs {[r['name'] for r in runs]}, "
          f"next token after the prompt: {top} {tok.decode([top])!r}")


if __name__ == "__main__":
    main()
