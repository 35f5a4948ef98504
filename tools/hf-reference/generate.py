#!/usr/bin/env python3
"""Parity fixtures from transformers' own modeling code (see README.md in this folder).

For every case: a tiny random config of the architecture, transformers' XxxForCausalLM (eager attention, eager
experts) built from it, random weights rounded to the stored dtype, run in float64 (transformers keeps its router
softmax in float32, as it does for every user). Writes test/fixtures/parity/<case>/:
  model/                  config.json + safetensors (one file or shards + index), fused or per-expert layout
  cases.json              tokens, patched runs, gradient requests (format: test/parity/README.md)
  reference.safetensors   logits, raw router logits (hooked on the gate), selected experts and applied weights per
                          MoE layer for every run; loss, router-bias gradients (autograd through transformers'
                          router) and their central finite differences for every gradient request

    /usr/bin/python3 tools/hf-reference/generate.py [--only CASE ...]

Deterministic: a re-run writes byte-identical files.
"""
import argparse
import contextlib
import copy
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import archs  # noqa: E402
import route  # noqa: E402
import runtime  # noqa: E402
import shims  # noqa: E402
import st  # noqa: E402

GAP = 2e-3          # min margin of every selection (score units) and group choice; keeps fp32 engines on the same side
ORDER_GAP = 1e-4    # min gap between consecutive reported weights
FD_STEP = 1e-5      # central finite-difference step (float64 throughout)
FD_RTOL = 1e-6      # autograd vs finite differences: max|a - fd| <= FD_RTOL * max|a| + 1e-12
MAX_WEIGHT_DRAWS = 100
MAX_PATCH_DRAWS = 200

CASES = [
    dict(name="mixtral-perexpert-f32", arch="mixtral", layout="per-expert", dtype="F32", shards=1, T=12, k=2),
    dict(name="mixtral-perexpert-f16-sharded", arch="mixtral", layout="per-expert", dtype="F16", shards=2, T=11, k=2),
    dict(name="mixtral-fused-bf16-sharded", arch="mixtral", layout="fused", dtype="BF16", shards=3, T=10, k=2,
         style="v5"),
    dict(name="olmoe-perexpert-bf16", arch="olmoe", layout="per-expert", dtype="BF16", shards=1, T=12, k=2),
    dict(name="olmoe-fused-f32-sharded", arch="olmoe", layout="fused", dtype="F32", shards=2, T=11, k=2, style="v5"),
    dict(name="olmoe-fused-f16", arch="olmoe", layout="fused", dtype="F16", shards=1, T=10, k=2),
    dict(name="qwen2_moe-perexpert-f16", arch="qwen2_moe", layout="per-expert", dtype="F16", shards=1, T=12, k=2),
    dict(name="qwen2_moe-perexpert-bf16-sharded", arch="qwen2_moe", layout="per-expert", dtype="BF16", shards=3,
         T=11, k=2),
    dict(name="qwen2_moe-fused-f32", arch="qwen2_moe", layout="fused", dtype="F32", shards=1, T=10, k=2, style="v5"),
    dict(name="qwen3_moe-perexpert-bf16-sharded", arch="qwen3_moe", layout="per-expert", dtype="BF16", shards=2,
         T=12, k=3),
    dict(name="qwen3_moe-fused-f32", arch="qwen3_moe", layout="fused", dtype="F32", shards=1, T=11, k=3, style="v5"),
    dict(name="qwen3_moe-fused-f16", arch="qwen3_moe", layout="fused", dtype="F16", shards=1, T=10, k=3, style="v5"),
    # DeepSeek-V2(-Lite): MLA without / with q LoRA, YaRN + mscale, greedy and group-limited routing.
    dict(name="deepseek_v2-perexpert-bf16", arch="deepseek_v2", layout="per-expert", dtype="BF16", shards=1, T=12,
         k=3),
    dict(name="deepseek_v2-fused-f32-grouped", arch="deepseek_v2", layout="fused", dtype="F32", shards=2, T=11, k=3,
         q_lora_rank=24, topk_method="group_limited_greedy", n_group=4, topk_group=2, style="v5"),
    # DeepSeek-V3 (Kimi-K2 / Moonlight shape: one group; V3 shape: groups + YaRN).
    dict(name="deepseek_v3-perexpert-bf16-sharded", arch="deepseek_v3", layout="per-expert", dtype="BF16", shards=2,
         T=12, k=3, yarn=True),
    dict(name="deepseek_v3-fused-f16-onegroup", arch="deepseek_v3", layout="fused", dtype="F16", shards=1, T=11, k=3,
         n_group=1, topk_group=1, q_lora_rank=None, style="v5"),
    # GLM-4.5: partial RoPE, QK-norm, attention bias, the V3 router.
    dict(name="glm4_moe-perexpert-f32", arch="glm4_moe", layout="per-expert", dtype="F32", shards=1, T=12, k=3,
         n_group=2, topk_group=1),
    dict(name="glm4_moe-fused-bf16-sharded", arch="glm4_moe", layout="fused", dtype="BF16", shards=2, T=10, k=3,
         qk_norm=False, style="v5"),
    # FP8 block-scaled projections and experts (F8_E4M3 + weight_scale_inv) as DeepSeek-V3 and Qwen3-FP8 ship
    # them; blocks of 16 x 16 so that the tiny matrices hold several, partial ones included.
    dict(name="deepseek_v3-perexpert-fp8-sharded", arch="deepseek_v3", layout="per-expert", dtype="BF16", shards=2,
         T=11, k=3, fp8=[16, 16]),
    dict(name="qwen3_moe-perexpert-fp8", arch="qwen3_moe", layout="per-expert", dtype="BF16", shards=1, T=10, k=3,
         fp8=[16, 16]),
    # PhiMoE: sparsemixer, LayerNorm, attention and LM head biases, LongRoPE with the short factors (T <=
    # original_max_position_embeddings) and the long ones (T > it). `seed` keeps a case's draws whatever its index.
    dict(name="phimoe-perexpert-f32", arch="phimoe", layout="per-expert", dtype="F32", shards=1, T=12, k=2,
         orig_max=16, jitter=0.2, seed=101),
    dict(name="phimoe-fused-bf16-sharded", arch="phimoe", layout="fused", dtype="BF16", shards=2, T=11, k=2,
         orig_max=8, jitter=0.1, style="v5", seed=102),
    # GraniteMoE: top-k then softmax, embedding / attention / residual multipliers and logits_scaling.
    dict(name="granitemoe-fused-f32", arch="granitemoe", layout="fused", dtype="F32", shards=1, T=12, k=2,
         style="v5", seed=103),
    dict(name="granitemoe-fused-bf16-sharded", arch="granitemoe", layout="fused", dtype="BF16", shards=2, T=11, k=3,
         seed=104),
    # gpt-oss: the transposed, interleaved experts transformers saves (F32, v5 config) and the Hub's BF16 form; the
    # released MXFP4 experts (*_blocks + *_scales, everything else BF16) with quantization_config mxfp4.
    dict(name="gpt_oss-fused-f32", arch="gpt_oss", layout="fused", dtype="F32", shards=1, T=12, k=3, style="v5",
         seed=21),
    dict(name="gpt_oss-fused-bf16-sharded", arch="gpt_oss", layout="fused", dtype="BF16", shards=2, T=11, k=2,
         seed=22),
    dict(name="gpt_oss-mxfp4-sharded", arch="gpt_oss", layout="fused", dtype="BF16", shards=2, T=12, k=4, mxfp4=True,
         seed=23),
    # Llama 4: llama4_text (v5 config, F32) and the vision-language llama4 checkpoint (text_config nested, weights
    # under language_model.*, a vision tower beside them; Hub config with rope_scaling; BF16 sharded); prompts longer
    # than the attention chunk.
    dict(name="llama4_text-fused-f32", arch="llama4_text", layout="fused", dtype="F32", shards=1, T=20, k=1, chunk=8,
         style="v5", seed=31),
    dict(name="llama4-fused-bf16-sharded", arch="llama4", layout="fused", dtype="BF16", shards=2, T=19, k=2, chunk=8,
         seed=32),
]

DTYPE_NAME = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
transformers = None  # imported after the runtime is prepared


def f32(v):
    """A float64 holding exactly the nearest float32 value (JSON text, fp32 engine and reference agree)."""
    return float(np.float32(v))


# --------------------------------------------------------------------------------------------------------------
# Model construction


def build_model(arch, case, cfg_dict):
    cfg_dict = copy.deepcopy(cfg_dict)  # transformers standardises nested rope dicts in place
    config = transformers.AutoConfig.for_model(cfg_dict["model_type"], **{k: v for k, v in cfg_dict.items()
                                                                       if k != "model_type"})
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    model = getattr(transformers, arch.causal_lm)(config)
    return config, model.eval()


def expert_count(config):
    for key in ("n_routed_experts", "num_local_experts", "num_experts"):
        if getattr(config, key, None):
            return getattr(config, key)
    raise ValueError("no expert count")


def param_std(name, shape, model_type=None):
    """(mean, std) of the random value of a parameter, by its role."""
    if model_type == "gpt_oss":
        if name.endswith("self_attn.sinks"):
            return 0.0, 1.0
        if name.endswith("mlp.router.weight") or name.endswith("mlp.router.bias"):
            return 0.0, 0.3
        if name.endswith("experts.gate_up_proj"):  # pre-activations beyond the SwiGLU clamp (±7) occur
            return 0.0, 0.8
        if name.endswith("_proj_bias"):
            return 0.0, 0.5
    if name.endswith("e_score_correction_bias"):
        return 0.0, 0.02
    if "norm" in name and name.endswith(".bias"):  # LayerNorm biases (phimoe)
        return 0.0, 0.1
    if "norm" in name and len(shape) == 1:
        return 1.0, 0.1
    if name == "model.embed_tokens.weight":
        return 0.0, 1.0
    if name == "lm_head.weight":
        return 0.0, 0.2
    if name.endswith(".bias"):
        return 0.0, 0.1
    if ".gate.weight" in name or name.endswith("shared_expert_gate.weight"):
        return 0.0, 0.3
    if "self_attn" in name:
        return 0.0, 0.15
    return 0.0, 0.2


def stored_dtype(name, dtype):
    """The dtype a tensor is stored in: the case's, except the small float32 tensors real checkpoints keep."""
    if name.endswith("e_score_correction_bias"):
        return "F32"
    return dtype


def is_fp8_weight(name):
    """The matrices FP8 checkpoints store in F8_E4M3: attention projections and every MLP / expert projection;
    embeddings, the LM head, norms and the router stay BF16 (DeepSeek-V3, Qwen3-*-FP8)."""
    if not name.endswith(".weight") or "norm" in name or name.endswith("mlp.gate.weight"):
        return False
    return ".self_attn." in name or ".mlp." in name


def quantize_fp8(arch, named, E, block, model):
    """Stores the FP8 matrices as E4M3 codes with one f32 scale per block (scale = max|w| / 448, DeepSeek's
    recipe) and loads the dequantised values (code × scale, exact in float64) into the model. Returns the Hub
    per-expert tensors [(name, tensor, stored dtype)], scales as <name>_scale_inv."""
    br, bc = block
    hub = archs.fused_to_hub(arch, [(n, t) for n, t, _ in named], E)
    sdtype = {n: sd for n, _, sd in named}
    files, values = [], {}
    for name, t in hub:
        if not (is_fp8_weight(name) and t.dim() == 2):
            files.append((name, t, sdtype.get(name, "BF16" if not name.endswith("correction_bias") else "F32")))
            values[name] = (None, t)
            continue
        rows, cols = t.shape
        sr, sc = -(-rows // br), -(-cols // bc)
        scale = torch.zeros(sr, sc, dtype=torch.float64)
        deq = torch.zeros_like(t)
        codes = torch.zeros_like(t)
        for i in range(sr):
            for j in range(sc):
                blk = t[i * br:(i + 1) * br, j * bc:(j + 1) * bc]
                s = float(np.float32(blk.abs().max().item() / 448.0)) or 1.0
                q = st.f8_e4m3_round(blk / s)
                scale[i, j] = s
                codes[i * br:(i + 1) * br, j * bc:(j + 1) * bc] = q
                deq[i * br:(i + 1) * br, j * bc:(j + 1) * bc] = q * s
        files.append((name, codes, "F8_E4M3"))
        files.append((name + "_scale_inv", scale, "F32"))
        values[name] = (None, deq)
    state = archs.hub_to_state(arch, values, E)
    with torch.no_grad():
        own = model.state_dict()
        for n, v in state.items():
            own[n].copy_(v)
    return files


def quantize_mxfp4(named, model):
    """gpt-oss experts as released: gate_up_proj / down_proj ([E, in, out] in the model) stored as MXFP4
    <name>_blocks + <name>_scales over the output rows ([E, out, in/32, 16], [E, out, in/32]); the dequantised
    values are loaded into the model. Returns [(name, tensor, stored dtype)]."""
    files, own = [], model.state_dict()
    with torch.no_grad():
        for name, t, sd in named:
            if not (name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj")):
                files.append((name, t, sd))
                continue
            blocks, scales, deq = archs.mxfp4_quantise(t.transpose(1, 2))
            # read back as transformers' integrations/mxfp4.py does (its function indexes with int32, which torch
            # 1.13 refuses): exactly the values the reference runs with
            assert torch.equal(archs.mxfp4_dequantise(blocks, scales), deq), name
            files.append((name + "_blocks", blocks, "U8"))
            files.append((name + "_scales", scales, "U8"))
            own[name].copy_(deq.transpose(1, 2))
    return files


def fill_weights(model, rng, dtype):
    """Random weights rounded to their stored dtype; returns [(name, float64 tensor, stored dtype)] in state order."""
    named = []
    state = model.state_dict()
    with torch.no_grad():
        for name, t in state.items():
            if name.endswith("inv_freq"):  # non-persistent buffers never reach a checkpoint
                continue
            mean, std = param_std(name, t.shape, model.config.model_type)
            sd = stored_dtype(name, dtype)
            v = torch.from_numpy(rng.standard_normal(tuple(t.shape))) * std + mean
            v = v.to(st.TORCH_DTYPE[sd]).to(torch.float64)
            t.copy_(v.to(t.dtype))
            named.append((name, v, sd))
    model.double()
    for name, v, _ in named:  # the float64 model holds exactly the stored values
        assert torch.equal(model.state_dict()[name], v), name
    return named


# --------------------------------------------------------------------------------------------------------------
# Hooks: raw router logits from the gate's linear, selection and weights at the experts' input


class Tap:
    """Taps one model's routers and experts. Plain runs use transformers' routing untouched (and check route.py
    against it); a bias patch is added to the raw logits and routed by transformers; mask / force / mix runs (and
    gradients through them) replace the experts' (indices, weights) by route.py's rule."""

    def __init__(self, arch, model, rule, k, E):
        self.blocks = arch.moe_blocks(model)
        self.rule, self.k, self.E = rule, k, E
        self.routers = [(l, w) for l, (_, w, _) in self.blocks.items()]
        for l, (block, _, experts) in self.blocks.items():
            arch.hook_routing(self, l, block, experts)
        self.set()

    def set(self, patch=None, extra=None, mix=None, override=False):
        self.patch = (patch or {}).get("layers", {})
        self.extra = extra or {}          # layer -> leaf tensor [E] added to the logits (gradients)
        self.mix = mix                    # (layer, position, row tensor) for gradients w.r.t. theta
        self.override = override
        self.raw, self.used, self.hf, self.margins = {}, {}, {}, {}

    def bias(self, l):
        b = torch.zeros(self.E, dtype=torch.float64)
        pb = self.patch.get(str(l), {}).get("bias")
        if pb:
            for e, v in (pb.items() if isinstance(pb, dict) else enumerate(pb)):
                b[int(e)] += v
        if l in self.extra:
            b = b + self.extra[l]
        return b

    def linear(self, x, w, b=None):
        y = ORIG_LINEAR(x, w, b)
        for l, W in self.routers:
            if w is W or (w.shape == W.shape and w.dtype != W.dtype and torch.equal(w, W.to(w.dtype))):
                self.raw[l] = y.reshape(-1, self.E).to(torch.float64)  # kept in the graph for route.py
                return y + self.bias(l).to(y.dtype) if y.dtype == torch.float64 else y + self.bias(l)
        return y

    def at_experts(self, l, args):
        hidden, idx, w = args
        self.hf[l] = (idx.detach().clone(), w.detach().clone())
        z = self.raw[l] + self.bias(l)
        mix = {self.mix[1]: self.mix[2]} if self.mix and self.mix[0] == l else None
        idx2, w2, margins = route.route(self.rule, l, z, self.k, self.patch.get(str(l)), mix_override=mix)
        self.margins[l] = margins
        if not self.override:
            self.used[l] = sort_routing(idx.detach(), w.detach())
            self.check_rule(l, idx2, w2)
            return None
        self.used[l] = (idx2, w2.detach())
        return (hidden, idx2, w2.to(hidden.dtype))

    def check_rule(self, l, idx2, w2):
        """route.py's rule on the same logits selects what transformers selected, with the same weights."""
        idx, w = self.used[l]
        assert torch.equal(idx, idx2), (l, idx, idx2)
        err = (w.to(torch.float64) - w2.detach()).abs().max().item()
        assert err < (1e-6 if self.islands else 1e-12), (l, err)


def sort_routing(idx, w):
    """Per token: highest weight first, ties by lower expert index (the engine's reporting order)."""
    out_i, out_w = [], []
    for t in range(idx.shape[0]):
        order = sorted(range(idx.shape[1]), key=lambda j: (-float(w[t, j]), int(idx[t, j])))
        out_i.append([int(idx[t, j]) for j in order])
        out_w.append(w[t, order].to(torch.float64))
    return torch.tensor(out_i, dtype=torch.long), torch.stack(out_w)


ORIG_LINEAR = torch.nn.functional.linear


class Runner:
    def __init__(self, arch, model, rule, k, E, moe_layers):
        self.model, self.tap, self.moe = model, Tap(arch, model, rule, k, E), moe_layers

    def forward(self, tokens, patch=None, extra=None, mix=None, grad=False, islands=False):
        """islands=True: transformers' own float32 islands (RMSNorm, RoPE, router softmax); else float64 throughout."""
        needs_override = bool(mix) or any(
            ("mask" in lp or "force" in lp or "mix" in lp) for lp in ((patch or {}).get("layers", {}).values()))
        self.tap.set(patch, extra, mix, needs_override)
        self.tap.islands = islands
        torch.nn.functional.linear = self.tap.linear
        try:
            with torch.set_grad_enabled(grad), (contextlib.nullcontext() if islands else shims.float64_throughout()):
                logits = self.model(input_ids=torch.tensor([tokens]), use_cache=False).logits[0]
        finally:
            torch.nn.functional.linear = ORIG_LINEAR
        rec = {}
        for l in self.moe:
            idx, w = self.tap.used[l]
            m = self.tap.margins[l]
            rec[l] = dict(router_logits=self.tap.raw[l].detach().clone(), experts=idx.tolist(), weights=w.detach().clone(),
                          sets=[set(r) for r in idx.tolist()],
                          gap=min(min(x["select"], x["group"]) for x in m),
                          order_gap=min(x["order"] for x in m), min_choice=min(x["min_choice"] for x in m))
        return logits, rec


def loss_of(logits, tokens, target):
    s, e = target if target else (1, len(tokens))
    lp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    return -torch.stack([lp[j - 1, tokens[j]] for j in range(s, e)]).mean()


# --------------------------------------------------------------------------------------------------------------
# Runs and gradients (the same design as test/parity/make_fixtures.py: patches that change the routing, margins
# that keep every selection unambiguous in float32)


class Retry(Exception):
    pass


def routing_ok(rec, ordering=True):
    for r in rec.values():
        if r["gap"] <= GAP or r["min_choice"] <= GAP or (ordering and r["order_gap"] <= ORDER_GAP):
            return False
    return True


def changed(rec, base):
    return any(rec[l]["sets"] != base[l]["sets"] for l in rec)


def scores_of(rule, theta):
    """The mix row a gradient's θ stands for: the router's own scoring function (softmax or sigmoid)."""
    return torch.softmax(theta, -1) if rule.scoring == "softmax" else torch.sigmoid(theta)


def grad_eval(runner, tokens, g, E):
    """Autograd through the model (selection fixed by the forward), plus central differences of the bias grads."""
    mix = None
    theta = None
    rule = runner.tap.rule
    if g["mix"]:
        theta = torch.tensor(g["mix"]["logits"], dtype=torch.float64, requires_grad=True)
        mix = (g["mix"]["layer"], g["mix"]["position"], scores_of(rule, theta))
    extra = {l: torch.zeros(E, dtype=torch.float64, requires_grad=True) for l in g["layers"]}
    logits, rec = runner.forward(tokens, g["patch"], extra, mix, grad=True)
    loss = loss_of(logits, tokens, g["target"])
    loss.backward()
    out = {"loss": loss.item(), "bias": {l: extra[l].grad.clone() for l in g["layers"]}, "rec": rec}
    if theta is not None:
        out["mix_grad"] = theta.grad.clone()

    def L(ex, th=None):
        m = None
        if g["mix"]:
            m = (g["mix"]["layer"], g["mix"]["position"], scores_of(rule, th if th is not None else theta.detach()))
        lo, r = runner.forward(tokens, g["patch"], ex, m)
        assert all(r[l]["sets"] == rec[l]["sets"] for l in rec), "a finite-difference step changed the selection"
        return loss_of(lo, tokens, g["target"]).item()

    out["fd"] = {}
    for l in g["layers"]:
        fd = torch.zeros(E, dtype=torch.float64)
        for e in range(E):
            hp = {ll: torch.zeros(E, dtype=torch.float64) for ll in g["layers"]}
            hm = {ll: torch.zeros(E, dtype=torch.float64) for ll in g["layers"]}
            hp[l][e] = FD_STEP
            hm[l][e] = -FD_STEP
            fd[e] = (L(hp) - L(hm)) / (2 * FD_STEP)
        out["fd"][l] = fd
        a = out["bias"][l]
        err = (a - fd).abs().max().item()
        assert err <= FD_RTOL * a.abs().max().item() + 1e-12, (g["name"], l, err, a, fd)
    out["fd_err"] = max(((out["bias"][l] - out["fd"][l]).abs().max().item() /
                         max(out["bias"][l].abs().max().item(), 1e-30)) for l in g["layers"])
    if theta is not None:
        fd = torch.zeros(E, dtype=torch.float64)
        for e in range(E):
            tp, tm = theta.detach().clone(), theta.detach().clone()
            tp[e] += FD_STEP
            tm[e] -= FD_STEP
            fd[e] = (L({}, tp) - L({}, tm)) / (2 * FD_STEP)
        err = (out["mix_grad"] - fd).abs().max().item()
        assert err <= FD_RTOL * out["mix_grad"].abs().max().item() + 1e-12, ("mix", err)
    return out


def bias_obj(rng, E, experts=None, count=None):
    if experts is None:
        experts = sorted(rng.choice(E, size=count, replace=False).tolist())
    b = {}
    for e in experts:
        v = 0.0
        while abs(v) < 0.5:
            v = float(rng.integers(-32, 33)) / 16.0  # multiples of 1/16 in [-2, 2]: exact in fp32 and JSON
        b[str(e)] = v
    return b


def unselected_somewhere(base, l, T, E):
    return [e for e in range(E) if sum(e not in base[l]["sets"][t] for t in range(T)) >= (T + 1) // 2]


def design(runner, tokens, base, seed, E, rule):
    moe, T = runner.moe, len(tokens)

    def search(tag, make, check):
        for a in range(MAX_PATCH_DRAWS):
            rng = np.random.default_rng([seed, tag, a])
            cand = json.loads(json.dumps(make(rng)))  # exactly what is written
            if check(cand):
                return cand
        raise Retry(f"no robust draw for {tag}")

    def run_ok(patch):
        _, rec = runner.forward(tokens, patch)
        return routing_ok(rec) and changed(rec, base)

    def mk_mask(rng):
        l = int(rng.choice(moe))
        sel_somewhere = sorted(set(e for t in range(T) for e in base[l]["sets"][t]))
        m = [int(rng.choice(sel_somewhere))]
        if rng.random() < 0.5:
            m.append(int(rng.choice([e for e in range(E) if e not in m])))
        return {"layers": {str(l): {"mask": sorted(m)}}}

    def mk_force(rng):
        l = int(rng.choice(moe))
        return {"layers": {str(l): {"force": [int(rng.choice(unselected_somewhere(base, l, T, E)))]}}}

    def mk_bias(rng):
        ls = sorted(rng.choice(moe, size=min(2, len(moe)), replace=False).tolist())
        return {"layers": {str(l): {"bias": bias_obj(rng, E, count=int(rng.integers(2, 4)))} for l in ls}}

    def mix_row(rng):
        x = torch.from_numpy(rng.standard_normal(E) * 1.5)
        row = torch.softmax(x, -1) if rule.scoring == "softmax" else torch.sigmoid(x)
        return [f32(v) for v in row.tolist()]

    def mk_mix(rng):
        l = int(rng.choice(moe))
        ps = sorted(rng.choice(T - 1, size=2, replace=False).tolist())
        return {"layers": {str(l): {"mix": {str(p): mix_row(rng) for p in ps}}}}

    def mk_combined(rng):
        a, b = (int(x) for x in rng.choice(moe, size=2, replace=False)) if len(moe) > 1 else (moe[0], moe[0])
        sel_a = sorted(set(e for t in range(T) for e in base[a]["sets"][t]))
        m = int(rng.choice(sel_a))
        bias = bias_obj(rng, E, experts=sorted(rng.choice([e for e in range(E) if e != m], size=2,
                                                          replace=False).tolist()))
        f = int(rng.choice([e for e in unselected_somewhere(base, b, T, E) if e != m or a != b]))
        lay = {str(a): {"mask": [m], "bias": bias}}
        lay.setdefault(str(b), {})["force"] = [f]
        return {"layers": dict(sorted(lay.items(), key=lambda kv: int(kv[0])))}

    runs = [{"name": "base", "patch": None}]
    mixable = rule.scoring != "sparsemixer"  # a sparsemixer router has no score row for a mix to replace
    for i, (name, mk) in enumerate([("mask", mk_mask), ("force", mk_force), ("bias", mk_bias), ("mix", mk_mix),
                                    ("combined", mk_combined)]):
        if name == "mix" and not mixable:
            continue
        runs.append({"name": name, "patch": search(i + 1, mk, run_ok)})

    def grad_ok(g):
        mix = None
        if g["mix"]:
            theta = torch.tensor(g["mix"]["logits"], dtype=torch.float64)
            mix = (g["mix"]["layer"], g["mix"]["position"], scores_of(rule, theta))
        _, rec = runner.forward(tokens, g["patch"], None, mix)
        return routing_ok(rec, ordering=False)

    grads = [{"name": "g_all", "patch": None, "layers": list(moe), "target": None, "mix": None},
             {"name": "g_span", "patch": None, "layers": [moe[-1]], "target": [T - 4, T], "mix": None}]
    for g in grads:
        if not grad_ok(g):
            raise Retry(g["name"])
    ml = moe[len(moe) // 2]
    mp = T // 2

    def mk_gmix(rng):
        z = base[ml]["router_logits"][mp]
        logits = (torch.log_softmax(z, -1) if rule.scoring == "softmax" else z) + \
            torch.from_numpy(rng.standard_normal(E) * 0.1)
        return {"name": "g_mix", "patch": None, "layers": [ml], "target": None,
                "mix": {"layer": ml, "position": mp, "logits": [f32(v) for v in logits.tolist()]}}

    def mk_gpatched(rng):
        a, b = moe[0], moe[-1]
        sel_a = sorted(set(e for t in range(T) for e in base[a]["sets"][t]))
        m = int(rng.choice(sel_a))
        lay = {str(a): {"mask": [m], "bias": bias_obj(rng, E, experts=sorted(
                   rng.choice([e for e in range(E) if e != m], size=2, replace=False).tolist()))}}
        if b != a:
            lay[str(b)] = {"bias": bias_obj(rng, E, count=2)}
        return {"name": "g_patched", "patch": {"layers": lay}, "layers": sorted({a, b}), "target": None, "mix": None}

    if mixable:
        grads.append(search(11, mk_gmix, grad_ok))
    grads.append(search(12, mk_gpatched, grad_ok))
    for g in grads:  # autograd vs finite differences (asserts), once per chosen request
        try:
            grad_eval(runner, tokens, g, E)
        except AssertionError as e:
            raise Retry(f"{g['name']}: {e}")
    return runs, grads


# --------------------------------------------------------------------------------------------------------------
# Checkpoint and fixture files


def write_checkpoint(mdir, config_text, named, shards):
    os.makedirs(mdir)
    with open(os.path.join(mdir, "config.json"), "w") as f:
        f.write(config_text)
    items = [(n, sd, tuple(t.shape), st.tensor_bytes(t, sd)) for n, t, sd in named]
    meta = {"format": "pt"}
    if shards == 1:
        st.write(os.path.join(mdir, "model.safetensors"), items, meta)
        return
    total = sum(len(i[3]) for i in items)
    groups, cur, acc = [], [], 0
    for i, item in enumerate(items):
        cur.append(item)
        acc += len(item[3])
        left = len(items) - i - 1
        if len(groups) < shards - 1 and acc >= total * (len(groups) + 1) / shards and left >= shards - 1 - len(groups):
            groups.append(cur)
            cur = []
    groups.append(cur)
    assert len(groups) == shards and all(groups)
    weight_map = {}
    for s, g in enumerate(groups):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        st.write(os.path.join(mdir, fname), g, meta)
        for item in g:
            weight_map[item[0]] = fname
    with open(os.path.join(mdir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
        f.write("\n")


def read_checkpoint(mdir):
    idx = os.path.join(mdir, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    out = {}
    for fname in files:
        for n, (dt, t) in st.read(os.path.join(mdir, fname)).items():
            assert n not in out
            out[n] = (dt, t)
    return out


def config_text(config, cfg_dict, case):
    """config.json as transformers 5.2's save_pretrained writes it ("v5"), or the Hub's classic form ("hub")."""
    arch = archs.ARCHS[case["arch"]]
    if hasattr(arch, "wrap_config"):
        return nested_config_text(arch, config, cfg_dict, case)
    if case.get("style") == "v5":
        config.dtype = DTYPE_NAME[case["dtype"]]
        text = config.to_json_string(use_diff=True)
        d = json.loads(text)
        d.pop("_experts_implementation", None)
        return json.dumps(d, indent=2, sort_keys=True) + "\n"
    d = dict(cfg_dict, architectures=[config.architectures[0] if config.architectures else case["causal_lm"]],
             torch_dtype=DTYPE_NAME[case["dtype"]], transformers_version="4.57.1")
    if case.get("fp8"):
        d["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                    "weight_block_size": list(case["fp8"])}
    if case.get("mxfp4"):  # as gpt-oss-20b's config.json
        d["quantization_config"] = {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                               "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"}
    return json.dumps(dict(sorted(d.items())), indent=2) + "\n"


def nested_config_text(arch, config, cfg_dict, case):
    """llama4: the wrapper's config.json with the text config nested (the Hub's rope_theta + rope_scaling form), read
    back by transformers' own Llama4Config and asserted to describe the text model the reference ran."""
    text = copy.deepcopy(cfg_dict)
    rp = text.pop("rope_parameters")
    text["rope_theta"] = rp.pop("rope_theta")
    text["rope_scaling"] = rp
    d = arch.wrap_config(text, DTYPE_NAME[case["dtype"]])
    back = transformers.AutoConfig.for_model("llama4", **copy.deepcopy({k: v for k, v in d.items() if k != "model_type"}))
    tc = back.text_config
    for key in ("rope_parameters", "moe_layers", "no_rope_layers", "layer_types", "attention_chunk_size", "head_dim",
                "intermediate_size", "intermediate_size_mlp", "num_local_experts", "num_experts_per_tok", "use_qk_norm",
                "attn_temperature_tuning", "floor_scale", "attn_scale", "rms_norm_eps", "tie_word_embeddings"):
        assert getattr(tc, key) == getattr(config, key), (key, getattr(tc, key), getattr(config, key))
    return json.dumps(d, indent=2) + "\n"


def build_case(case, idx):
    arch = archs.ARCHS[case["arch"]]
    cfg_dict = dict(arch.config(case), model_type=getattr(arch, "text_model_type", arch.model_type))
    for draw in range(MAX_WEIGHT_DRAWS):
        seed = 1000 * case.get("seed", idx + 1) + draw
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        config, model = build_model(arch, case, cfg_dict)
        named = fill_weights(model, rng, case["dtype"])
        fixes = arch.fix_reference(config, model)
        rule = arch.rule(config, model)
        E = expert_count(config)
        if case.get("fp8"):
            named = quantize_fp8(arch, named, E, case["fp8"], model)
        if case.get("mxfp4"):
            named = quantize_mxfp4(named, model)
        moe = sorted(arch.moe_blocks(model))
        runner = Runner(arch, model, rule, case["k"], E, moe)
        tokens = [int(t) for t in rng.integers(0, config.vocab_size, size=case["T"])]
        _, base = runner.forward(tokens)
        if not routing_ok(base):
            continue
        try:
            runs, grads = design(runner, tokens, base, seed, E, rule)
        except Retry:
            continue
        return arch, cfg_dict, config, model, named, runner, tokens, runs, grads, draw, E, fixes
    raise SystemExit(f"{case['name']}: no robust weight draw in {MAX_WEIGHT_DRAWS} tries")


def make_case(case, idx, out_root):
    arch, cfg_dict, config, model, named, runner, tokens, runs, grads, draw, E, fixes = build_case(case, idx)
    case["causal_lm"] = arch.causal_lm
    moe = runner.moe
    cdir = os.path.join(out_root, case["name"])
    if os.path.exists(cdir):
        shutil.rmtree(cdir)
    os.makedirs(cdir)
    if case.get("fp8") or case.get("mxfp4"):  # already the Hub's tensors
        files = sorted(named, key=lambda nt: archs.natural_key(nt[0]))
    else:
        state = [(n, t) for n, t, _ in named]
        sdtype = {n: sd for n, _, sd in named}
        if case["layout"] == "per-expert":
            state = archs.fused_to_hub(arch, state, E)
        else:
            state = sorted(state, key=lambda nt: archs.natural_key(nt[0]))
        files = [(n, t, sdtype.get(n, case["dtype"] if not n.endswith("e_score_correction_bias") else "F32"))
                 for n, t in state]
    if hasattr(arch, "wrap_checkpoint"):  # llama4: the text model inside the vision-language checkpoint
        files = arch.wrap_checkpoint(files, np.random.default_rng([case.get("seed", idx + 1), 7]))
    mdir = os.path.join(cdir, "model")
    write_checkpoint(mdir, config_text(config, cfg_dict, case), files, case["shards"])

    ref, results = [], {}
    for r in runs:
        logits, rec = runner.forward(tokens, r["patch"])
        results[r["name"]] = (logits, rec)
        ref.append((f"{r['name']}.logits", "F32", logits))
        for l in moe:
            ref.append((f"{r['name']}.layer{l}.router_logits", "F32", rec[l]["router_logits"]))
            ref.append((f"{r['name']}.layer{l}.experts", "I32", torch.tensor(rec[l]["experts"], dtype=torch.int32)))
            ref.append((f"{r['name']}.layer{l}.weights", "F32", rec[l]["weights"]))
    fd_err, gsum = 0.0, []
    for g in grads:
        out = grad_eval(runner, tokens, g, E)
        fd_err = max(fd_err, out["fd_err"])
        ref.append((f"{g['name']}.loss", "F32", torch.tensor([out["loss"]], dtype=torch.float64)))
        for l in g["layers"]:
            ref.append((f"{g['name']}.bias.{l}", "F32", out["bias"][l]))
        if g["mix"]:
            ref.append((f"{g['name']}.mix_grad", "F32", out["mix_grad"]))
        for l in g["layers"]:
            ref.append((f"{g['name']}.fd.bias.{l}", "F32", out["fd"][l]))
        gsum.append(f"{g['name']} loss={out['loss']:.4f}")
    st.write(os.path.join(cdir, "reference.safetensors"),
             [(n, dt, tuple(t.shape), st.tensor_bytes(t.detach(), dt)) for n, dt, t in ref],
             {"format": "pt", "generator": "tools/hf-reference/generate.py",
              "transformers": f"{runtime.TRANSFORMERS_TAG} {runtime.TRANSFORMERS_COMMIT}"})
    doc = {"arch": case["arch"], "dtype": "MXFP4+BF16" if case.get("mxfp4") else case["dtype"], "layout": case["layout"], "sharded": case["shards"] > 1,
           "reference": f"transformers {runtime.TRANSFORMERS_TAG} {arch.causal_lm}",
           **({"reference_fixes": fixes} if fixes else {}),
           "tokens": tokens, "runs": runs, "grads": grads}
    with open(os.path.join(cdir, "cases.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")

    # Self-checks. 1: the files read back hold exactly the weights the reference ran with.
    back = read_checkpoint(mdir)
    assert set(back) == {n for n, _, _ in files}, "checkpoint names"
    for n, t, sd in files:
        assert back[n][0] == sd and torch.equal(back[n][1].to(torch.float64), t.to(torch.float64)), n
    # 2: transformers' own float32 islands (RMSNorm, RoPE, router softmax), and the whole model in float32 (an fp32
    # engine's precision), select the same experts with logits within 1e-5 / 1e-4.
    max_islands, max32 = 0.0, 0.0
    for r in runs:
        logits, rec = results[r["name"]]
        li, ri = runner.forward(tokens, r["patch"], islands=True)
        max_islands = max(max_islands, (li - logits).abs().max().item())
        model.float()
        l32, r32 = runner.forward(tokens, r["patch"], islands=True)
        model.double()
        max32 = max(max32, (l32.double() - logits).abs().max().item())
        for l in moe:
            assert ri[l]["experts"] == rec[l]["experts"] and r32[l]["experts"] == rec[l]["experts"], (r["name"], l)
    assert max_islands < 1e-5 and max32 < 1e-4, (max_islands, max32)

    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(cdir) for f in fs)
    all_recs = [results[r["name"]][1] for r in runs]
    min_gap = min(rec[l]["gap"] for rec in all_recs for l in rec)
    print(f"{case['name']:34s} {case['layout']:10s} {case['dtype']:4s} shards={case['shards']} T={len(tokens)} "
          f"k={case['k']} moe={moe} draw={draw} min_gap={min_gap:.4f} fd_rel={fd_err:.1e} "
          f"islands={max_islands:.0e} f32={max32:.0e} size={size / 1024:.0f}KiB", flush=True)
    print(" " * 36 + "grads: " + ", ".join(gsum), flush=True)
    return size


def main():
    global transformers
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    ap.add_argument("--out", default=os.path.join(ROOT, "test", "fixtures", "parity"))
    ap.add_argument("--runtime", default=os.path.join(ROOT, ".cache", "hf-reference"))
    ap.add_argument("--transformers-git", default=os.environ.get(
        "TRANSFORMERS_GIT", "/work/.mirror/TonyRHouston+huggingface-transformers/repo"),
        help="a git directory holding transformers' tag " + runtime.TRANSFORMERS_TAG)
    ap.add_argument("--hub-git", default=os.environ.get("HUB_GIT", "/work/.mirror/huggingface+huggingface_hub/repo"),
                    help="a git directory holding huggingface_hub's tag " + runtime.HUB_TAG)
    args = ap.parse_args()
    shims.install(runtime.prepare(args.runtime, args.transformers_git, args.hub_git))
    import transformers as tf
    transformers = tf
    assert transformers.__version__ == runtime.TRANSFORMERS_TAG[1:], transformers.__version__
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(1)  # bitwise-deterministic reductions
    os.makedirs(args.out, exist_ok=True)
    total = 0
    chosen = [c for c in CASES if not args.only or c["name"] in args.only]
    if args.only and len(chosen) != len(args.only):
        raise SystemExit(f"unknown case in {args.only}; cases: {', '.join(c['name'] for c in CASES)}")
    for i, c in enumerate(CASES):
        if c in chosen:
            total += make_case(dict(c), i, args.out)
    print(f"{len(chosen)} cases, {total / 1024:.0f} KiB under {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    main()
