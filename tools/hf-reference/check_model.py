#!/usr/bin/env python3
"""Runs transformers' own model class on a checkpoint folder and compares it with the engine (routescope inspect).

For checkpoints too large to commit, e.g. the DeepSeek-V2-Lite / Moonlight shapes the bench writes:

    node -e "import('./bench/checkpoint.mjs').then(m => m.ensureCheckpoint('.cache/realistic/moonlight-L2', 2, 7, console.log, 'moonlight'))"
    /usr/bin/python3 tools/hf-reference/check_model.py .cache/realistic/moonlight-L2 [--tokens 11,4096,77,...]

gpt-oss-20b's shape (MXFP4 experts) is loaded tensor by tensor, its experts dequantised one at a time (≈ 15 GB for
one layer: transformers holds the model in float32):

    node -e "import('./bench/checkpoint.mjs').then(m => m.ensureCheckpoint('.cache/realistic/gpt-oss-20b-L1', 1, 7, console.log, 'gpt-oss-20b'))"
    /usr/bin/python3 tools/hf-reference/check_model.py .cache/realistic/gpt-oss-20b-L1

Llama-4-Scout's shape (its vision-language config.json, text weights under language_model.*) the same way, the
stacked experts one expert at a time (≈ 17 GB for one layer; the engine runs first, in its own process):

    node -e "import('./bench/checkpoint.mjs').then(m => m.ensureCheckpoint('.cache/realistic/llama4-scout-L1', 1, 7, console.log, 'llama4-scout'))"
    /usr/bin/python3 tools/hf-reference/check_model.py .cache/realistic/llama4-scout-L1

Loads the Hub per-expert tensors into transformers 5.2's XxxForCausalLM (float32, eager, with the reference fixes
of generate.py), runs the tokens, and prints the largest |Δ| of logits, raw router logits and weights against
`routescope inspect --json` on the same folder, and whether every layer selected the same experts.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import archs  # noqa: E402
import generate  # noqa: E402
import runtime  # noqa: E402
import shims  # noqa: E402
import st  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", default="11,4096,77,50000,999,31,2048,7")
    ap.add_argument("--runtime", default=os.path.join(ROOT, ".cache", "hf-reference"))
    ap.add_argument("--transformers-git", default=os.environ.get(
        "TRANSFORMERS_GIT", "/work/.mirror/TonyRHouston+huggingface-transformers/repo"))
    ap.add_argument("--hub-git", default=os.environ.get("HUB_GIT", "/work/.mirror/huggingface+huggingface_hub/repo"))
    args = ap.parse_args()
    shims.install(runtime.prepare(args.runtime, args.transformers_git, args.hub_git))
    import transformers
    generate.transformers = transformers
    transformers.utils.logging.set_verbosity_error()
    tokens = [int(t) for t in args.tokens.split(",")]

    # The engine first, in its own process (a full-size reference then has the memory to itself).
    cli = subprocess.run(["node", os.path.join(ROOT, "bin", "routescope.js"), "inspect", "--model", args.model,
                          "--tokens", ",".join(map(str, tokens)), "--logits", "all", "--json"],
                         capture_output=True, text=True, check=True)
    eng = json.loads(cli.stdout)
    del cli

    cfg_dict = json.load(open(os.path.join(args.model, "config.json")))
    arch = archs.ARCHS[cfg_dict["model_type"]]
    text_dict = arch.text_dict(cfg_dict) if hasattr(arch, "text_dict") else cfg_dict  # llama4: text_config
    config, model = generate.build_model(arch, {}, text_dict)
    E = generate.expert_count(config)
    idx = os.path.join(args.model, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    model.float()
    if hasattr(arch, "load_streaming"):  # gpt-oss, llama4: tensor by tensor, stacked experts expert by expert
        arch.load_streaming(model, st.Lazy([os.path.join(args.model, f) for f in files]))
    else:
        tensors = {}
        for f in files:
            tensors.update(st.read(os.path.join(args.model, f), float_type=np.float32))
        state = archs.hub_to_state(arch, tensors, E)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.endswith("inv_freq")]
        assert not missing and not unexpected, (missing[:5], unexpected[:5])
        del tensors, state
    fixes = arch.fix_reference(config, model)
    rule = arch.rule(config, model)
    k = config.num_experts_per_tok
    moe = sorted(arch.moe_blocks(model))
    runner = generate.Runner(arch, model, rule, k, E, moe)
    logits, rec = runner.forward(tokens, islands=True)

    d_logits = (torch.tensor(eng["logits"], dtype=torch.float64) - logits.double()).abs().max().item()
    same, d_router, d_weights = True, 0.0, 0.0
    for layer in eng["layers"]:
        l = layer["layer"]
        same &= layer["experts"] == rec[l]["experts"]
        d_router = max(d_router, (torch.tensor(layer["router_logits"]) - rec[l]["router_logits"]).abs().max().item())
        d_weights = max(d_weights, (torch.tensor(layer["weights"]) - rec[l]["weights"]).abs().max().item())
    scale = logits.abs().max().item()
    print(json.dumps({"model": args.model, "model_type": cfg_dict["model_type"], "tokens": len(tokens),
                      "reference": f"transformers {runtime.TRANSFORMERS_TAG} {arch.causal_lm} float32",
                      "reference_fixes": fixes, "experts_identical": same, "max_abs_logit_diff": d_logits,
                      "max_abs_logit": scale, "max_abs_router_logit_diff": d_router, "max_abs_weight_diff": d_weights},
                     indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
