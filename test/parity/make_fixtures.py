#!/usr/bin/env python3
"""Parity fixtures for the Routescope engine.

An independent PyTorch (float64) reference of the Hugging Face transformers semantics of the supported MoE
architectures (mixtral, olmoe, qwen2_moe, qwen3_moe), written from the modeling files' behaviour and the
shared specs (test/parity/README.md, shared/spec/moe-architectures.md, shared/spec/rerouting.md), never
from the engine. It writes tiny random checkpoints in both expert layouts and the reference outputs the
engine's parity tests compare against.

Usage (needs Debian's python3-torch; no safetensors / transformers packages are used):

    /usr/bin/python3 test/parity/make_fixtures.py                               # writes its own fixtures
    /usr/bin/python3 test/parity/make_fixtures.py --check test/fixtures/parity  # recomputes committed ones

Writes test/fixtures/parity/<case>/{model/, cases.json, reference.safetensors}. Deterministic: re-running
reproduces byte-identical files. See test/parity/README.md for the format and semantics.
"""

import json
import math
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "hf-reference"))
# safetensors are written and read by the reference tools' one hand-written module; the model below stays independent
from st import TORCH_DTYPE, read as read_safetensors, tensor_bytes, write as write_safetensors  # noqa: E402
OUT = os.path.join(ROOT, "test", "fixtures", "parity")

# Robustness margins (the engine computes in fp32; fixtures must not sit on a knife edge).
GAP = 2e-3          # min p gap between the last chosen and the first unchosen selection candidate
ORDER_GAP = 1e-4    # min gap between consecutive reported weights (reported order must be unambiguous)
FD_STEP = 1e-5      # central finite-difference step for G.fd.bias.<l>
FD_RTOL = 1e-6      # autograd vs finite differences: max|a - fd| <= FD_RTOL * max|a| (+1e-12)
MAX_WEIGHT_DRAWS = 200
MAX_PATCH_DRAWS = 200

# Tiny model sizes shared by every case.
HIDDEN, HEADS, LAYERS, EXPERTS, WIDTH, VOCAB, MAXPOS = 32, 4, 3, 8, 16, 96, 64

# name, arch, layout, dtype, shards, T, top_k, v5-style rope_parameters (no top-level rope_theta)
CASES = [
    dict(name="mixtral-perexpert-f32", arch="mixtral", layout="per-expert", dtype="F32", shards=1, T=12, k=2),
    dict(name="mixtral-perexpert-f16-sharded", arch="mixtral", layout="per-expert", dtype="F16", shards=2, T=11, k=2),
    dict(name="mixtral-fused-bf16-sharded", arch="mixtral", layout="fused", dtype="BF16", shards=3, T=10, k=2,
         rope_parameters=True),
    dict(name="olmoe-perexpert-bf16", arch="olmoe", layout="per-expert", dtype="BF16", shards=1, T=12, k=2),
    dict(name="olmoe-fused-f32-sharded", arch="olmoe", layout="fused", dtype="F32", shards=2, T=11, k=2),
    dict(name="olmoe-fused-f16", arch="olmoe", layout="fused", dtype="F16", shards=1, T=10, k=2),
    dict(name="qwen2_moe-perexpert-f16", arch="qwen2_moe", layout="per-expert", dtype="F16", shards=1, T=12, k=2),
    dict(name="qwen2_moe-perexpert-bf16-sharded", arch="qwen2_moe", layout="per-expert", dtype="BF16", shards=3,
         T=11, k=2),
    dict(name="qwen2_moe-fused-f32", arch="qwen2_moe", layout="fused", dtype="F32", shards=1, T=10, k=2),
    dict(name="qwen3_moe-perexpert-bf16-sharded", arch="qwen3_moe", layout="per-expert", dtype="BF16", shards=2,
         T=12, k=3),
    dict(name="qwen3_moe-fused-f32", arch="qwen3_moe", layout="fused", dtype="F32", shards=1, T=11, k=3,
         rope_parameters=True),
    dict(name="qwen3_moe-fused-f16", arch="qwen3_moe", layout="fused", dtype="F16", shards=1, T=10, k=3),
]

ARCH_CLASS = {"mixtral": "MixtralForCausalLM", "olmoe": "OlmoeForCausalLM",
              "qwen2_moe": "Qwen2MoeForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}
DTYPE_NAME = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def f32(v):
    """A float64 holding exactly the nearest float32 value (so JSON text, fp32 engine and fp64 reference agree)."""
    return float(np.float32(v))


# ----------------------------------------------------------------------------------------------------------
# config.json


def make_config(c):
    arch, k = c["arch"], c["k"]
    common = {
        "architectures": [ARCH_CLASS[arch]],
        "model_type": arch,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "max_position_embeddings": MAXPOS,
        "num_attention_heads": HEADS,
        "num_experts_per_tok": k,
        "num_hidden_layers": LAYERS,
        "output_router_logits": False,
        "tie_word_embeddings": False,
        "torch_dtype": DTYPE_NAME[c["dtype"]],
        "transformers_version": "4.51.0",
        "use_cache": True,
        "vocab_size": VOCAB,
    }
    if arch == "mixtral":
        cfg = dict(common, intermediate_size=WIDTH, num_key_value_heads=2, num_local_experts=EXPERTS,
                   rms_norm_eps=1e-5, rope_theta=1000000.0, router_aux_loss_coef=0.02, router_jitter_noise=0.0,
                   sliding_window=None)
    elif arch == "olmoe":
        cfg = dict(common, attention_bias=False, clip_qkv=None, intermediate_size=WIDTH, norm_topk_prob=False,
                   num_experts=EXPERTS, num_key_value_heads=HEADS, pad_token_id=0, rms_norm_eps=1e-5,
                   rope_scaling=None, rope_theta=10000.0, router_aux_loss_coef=0.01)
    elif arch == "qwen2_moe":
        cfg = dict(common, decoder_sparse_step=1, intermediate_size=48, max_window_layers=LAYERS,
                   mlp_only_layers=[1], moe_intermediate_size=WIDTH, norm_topk_prob=False, num_experts=EXPERTS,
                   num_key_value_heads=2, qkv_bias=True, rms_norm_eps=1e-6, rope_scaling=None,
                   rope_theta=1000000.0, router_aux_loss_coef=0.001, shared_expert_intermediate_size=24,
                   sliding_window=None,
                   use_sliding_window=False)
    elif arch == "qwen3_moe":
        cfg = dict(common, attention_bias=False, decoder_sparse_step=1, head_dim=16, intermediate_size=64,
                   max_window_layers=LAYERS, mlp_only_layers=[], moe_intermediate_size=WIDTH, norm_topk_prob=True,
                   num_experts=EXPERTS, num_key_value_heads=2, rms_norm_eps=1e-6, rope_scaling=None,
                   rope_theta=1000000.0, router_aux_loss_coef=0.001, sliding_window=None, use_sliding_window=False)
    else:
        raise ValueError(arch)
    if c.get("rope_parameters"):
        # transformers v5 style: RoPE settings only in the nested dict.
        theta = cfg.pop("rope_theta")
        cfg.pop("rope_scaling", None)
        cfg["rope_parameters"] = {"rope_theta": theta, "rope_type": "default"}
        cfg["transformers_version"] = "5.0.0"
    return dict(sorted(cfg.items()))


def cfg_get(cfg):
    """Derived sizes, read the way an HF loader would."""
    arch = cfg["model_type"]
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or H // nh
    # transformers' attribute_map: mixtral/qwen3_moe store num_local_experts, olmoe num_experts; either name loads.
    E = cfg.get("num_local_experts") or cfg.get("num_experts")
    I = cfg["intermediate_size"] if arch in ("mixtral", "olmoe") else cfg["moe_intermediate_size"]
    theta = cfg.get("rope_theta")
    if theta is None:
        theta = (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    L = cfg["num_hidden_layers"]
    if arch in ("qwen2_moe", "qwen3_moe"):
        step = cfg.get("decoder_sparse_step", 1)
        only = cfg.get("mlp_only_layers") or []
        moe = [l for l in range(L) if l not in only and (l + 1) % step == 0]
    else:
        moe = list(range(L))
    renorm = True if arch == "mixtral" else bool(cfg.get("norm_topk_prob", False))
    return dict(arch=arch, H=H, nh=nh, nkv=nkv, hd=hd, E=E, I=I, k=cfg["num_experts_per_tok"], theta=float(theta),
                L=L, moe=moe, renorm=renorm, eps=cfg["rms_norm_eps"], V=cfg["vocab_size"],
                dense_I=cfg["intermediate_size"], shared_I=cfg.get("shared_expert_intermediate_size", 0))


# ----------------------------------------------------------------------------------------------------------
# Weights


def gen_params(cfg, rng, dtype):
    """Canonical parameters (float64, already rounded to the stored dtype)."""
    d = cfg_get(cfg)
    H, nh, nkv, hd, E, I, V = d["H"], d["nh"], d["nkv"], d["hd"], d["E"], d["I"], d["V"]
    tdt = TORCH_DTYPE[dtype]

    def n(shape, std, mean=0.0):
        t = torch.from_numpy(rng.standard_normal(shape)) * std + mean
        return t.to(tdt).to(torch.float64)  # stored-dtype rounding, computed with exactly these values

    P = {"embed": n((V, H), 1.0), "layers": []}
    for l in range(d["L"]):
        p = {"in_norm": n((H,), 0.1, 1.0), "post_norm": n((H,), 0.1, 1.0),
             "q": n((nh * hd, H), 0.15), "k": n((nkv * hd, H), 0.15), "v": n((nkv * hd, H), 0.15),
             "o": n((H, nh * hd), 0.15)}
        if d["arch"] == "qwen2_moe":
            p.update(q_b=n((nh * hd,), 0.1), k_b=n((nkv * hd,), 0.1), v_b=n((nkv * hd,), 0.1))
        if d["arch"] == "olmoe":
            p.update(q_norm=n((nh * hd,), 0.1, 1.0), k_norm=n((nkv * hd,), 0.1, 1.0))
        if d["arch"] == "qwen3_moe":
            p.update(q_norm=n((hd,), 0.1, 1.0), k_norm=n((hd,), 0.1, 1.0))
        if l in d["moe"]:
            p.update(router=n((E, H), 0.3), gate=n((E, I, H), 0.2), up=n((E, I, H), 0.2), down=n((E, H, I), 0.2))
            if d["arch"] == "qwen2_moe":
                S = d["shared_I"]
                p.update(sh_gate=n((S, H), 0.2), sh_up=n((S, H), 0.2), sh_down=n((H, S), 0.2),
                         sh_expert_gate=n((1, H), 0.3))
        else:
            D = d["dense_I"]
            p.update(d_gate=n((D, H), 0.2), d_up=n((D, H), 0.2), d_down=n((H, D), 0.2))
        P["layers"].append(p)
    P["norm"] = n((H,), 0.1, 1.0)
    P["lm_head"] = n((V, H), 0.2)
    return P


def name_tensors(P, cfg, layout):
    """Canonical params -> ordered [(HF tensor name, tensor)] in the given expert layout."""
    d = cfg_get(cfg)
    arch = d["arch"]
    out = [("model.embed_tokens.weight", P["embed"])]
    for l, p in enumerate(P["layers"]):
        pre = f"model.layers.{l}."
        out.append((pre + "input_layernorm.weight", p["in_norm"]))
        for x in "qkv":
            out.append((pre + f"self_attn.{x}_proj.weight", p[x]))
            if x + "_b" in p:
                out.append((pre + f"self_attn.{x}_proj.bias", p[x + "_b"]))
        out.append((pre + "self_attn.o_proj.weight", p["o"]))
        if "q_norm" in p:
            out.append((pre + "self_attn.q_norm.weight", p["q_norm"]))
            out.append((pre + "self_attn.k_norm.weight", p["k_norm"]))
        out.append((pre + "post_attention_layernorm.weight", p["post_norm"]))
        if "router" in p:
            if layout == "fused":
                out.append((pre + "mlp.gate.weight", p["router"]))
                out.append((pre + "mlp.experts.gate_up_proj", torch.cat([p["gate"], p["up"]], dim=1).contiguous()))
                out.append((pre + "mlp.experts.down_proj", p["down"].contiguous()))
            elif arch == "mixtral":
                out.append((pre + "block_sparse_moe.gate.weight", p["router"]))
                for e in range(d["E"]):
                    ep = pre + f"block_sparse_moe.experts.{e}."
                    out += [(ep + "w1.weight", p["gate"][e].contiguous()), (ep + "w2.weight", p["down"][e].contiguous()),
                            (ep + "w3.weight", p["up"][e].contiguous())]
            else:
                out.append((pre + "mlp.gate.weight", p["router"]))
                for e in range(d["E"]):
                    ep = pre + f"mlp.experts.{e}."
                    out += [(ep + "gate_proj.weight", p["gate"][e].contiguous()),
                            (ep + "up_proj.weight", p["up"][e].contiguous()),
                            (ep + "down_proj.weight", p["down"][e].contiguous())]
            if "sh_gate" in p:
                out += [(pre + "mlp.shared_expert.gate_proj.weight", p["sh_gate"]),
                        (pre + "mlp.shared_expert.up_proj.weight", p["sh_up"]),
                        (pre + "mlp.shared_expert.down_proj.weight", p["sh_down"]),
                        (pre + "mlp.shared_expert_gate.weight", p["sh_expert_gate"])]
        else:
            out += [(pre + "mlp.gate_proj.weight", p["d_gate"]), (pre + "mlp.up_proj.weight", p["d_up"]),
                    (pre + "mlp.down_proj.weight", p["d_down"])]
    out.append(("model.norm.weight", P["norm"]))
    out.append(("lm_head.weight", P["lm_head"]))
    return out


def convert_layout(W, cfg, src, dst):
    """Tensor dict in layout src -> tensor dict in layout dst (used to cross-check the two forward paths)."""
    d = cfg_get(cfg)
    W = dict(W)
    for l in d["moe"]:
        pre = f"model.layers.{l}."
        if src == "fused":
            gu, dn = W.pop(pre + "mlp.experts.gate_up_proj"), W.pop(pre + "mlp.experts.down_proj")
            g, u = gu[:, :d["I"]], gu[:, d["I"]:]
        else:
            if d["arch"] == "mixtral":
                ep = pre + "block_sparse_moe.experts.{}."
                names = ("w1.weight", "w3.weight", "w2.weight")
            else:
                ep = pre + "mlp.experts.{}."
                names = ("gate_proj.weight", "up_proj.weight", "down_proj.weight")
            g = torch.stack([W.pop(ep.format(e) + names[0]) for e in range(d["E"])])
            u = torch.stack([W.pop(ep.format(e) + names[1]) for e in range(d["E"])])
            dn = torch.stack([W.pop(ep.format(e) + names[2]) for e in range(d["E"])])
        rname_src = pre + ("block_sparse_moe.gate.weight" if (d["arch"] == "mixtral" and src == "per-expert")
                           else "mlp.gate.weight")
        router = W.pop(rname_src)
        if dst == "fused":
            W[pre + "mlp.gate.weight"] = router
            W[pre + "mlp.experts.gate_up_proj"] = torch.cat([g, u], 1)
            W[pre + "mlp.experts.down_proj"] = dn
        elif d["arch"] == "mixtral":
            W[pre + "block_sparse_moe.gate.weight"] = router
            for e in range(d["E"]):
                ep = pre + f"block_sparse_moe.experts.{e}."
                W[ep + "w1.weight"], W[ep + "w3.weight"], W[ep + "w2.weight"] = g[e], u[e], dn[e]
        else:
            W[pre + "mlp.gate.weight"] = router
            for e in range(d["E"]):
                ep = pre + f"mlp.experts.{e}."
                W[ep + "gate_proj.weight"], W[ep + "up_proj.weight"], W[ep + "down_proj.weight"] = g[e], u[e], dn[e]
    return W


def write_checkpoint(mdir, cfg, named, dtype, shards):
    os.makedirs(mdir)
    with open(os.path.join(mdir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    items = [(n, dtype, tuple(t.shape), tensor_bytes(t, dtype)) for n, t in named]
    meta = {"format": "pt"}
    if shards == 1:
        write_safetensors(os.path.join(mdir, "model.safetensors"), items, meta)
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
        write_safetensors(os.path.join(mdir, fname), g, meta)
        for item in g:
            weight_map[item[0]] = fname
    with open(os.path.join(mdir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
        f.write("\n")


def read_checkpoint(mdir):
    with open(os.path.join(mdir, "config.json")) as f:
        cfg = json.load(f)
    idx = os.path.join(mdir, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(idx):
        with open(idx) as f:
            index = json.load(f)
        total = 0
        for fname in sorted(set(index["weight_map"].values())):
            part = read_safetensors(os.path.join(mdir, fname))
            for name, (dt, t) in part.items():
                assert index["weight_map"][name] == fname and name not in tensors
                total += t.numel() * {"F32": 4, "F16": 2, "BF16": 2}[dt]
                tensors[name] = t
        assert total == index["metadata"]["total_size"]
        assert set(tensors) == set(index["weight_map"])
    else:
        tensors = {n: t for n, (dt, t) in read_safetensors(os.path.join(mdir, "model.safetensors")).items()}
    return cfg, tensors


# ----------------------------------------------------------------------------------------------------------
# The reference model (HF semantics)


def rms_norm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def select(prow, k, forced, masked):
    """Forced experts first, then the highest p among the rest (ties -> lower index) until k.
    Returns (selection in selection order, p gap between the last chosen and first unchosen candidate)."""
    sel = list(forced)
    rest = sorted((e for e in range(len(prow)) if e not in forced), key=lambda e: (-prow[e], e))
    need = k - len(sel)
    sel += rest[:need]
    gap = math.inf
    if 0 < need < len(rest):
        gap = prow[rest[need - 1]] - prow[rest[need]]
    return sel, gap


class Model:
    def __init__(self, cfg, W, layout, dt=torch.float64):
        self.cfg, self.layout, self.dt = cfg, layout, dt
        self.d = cfg_get(cfg)
        self.W = {k: v.to(dt) for k, v in W.items()}
        hd = self.d["hd"]
        self.inv_freq = 1.0 / (self.d["theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))

    def attention(self, l, x):
        d, W, pre = self.d, self.W, f"model.layers.{l}.self_attn."
        T, nh, nkv, hd = x.shape[0], d["nh"], d["nkv"], d["hd"]
        q, k, v = (F.linear(x, W[pre + f"{n}_proj.weight"], W.get(pre + f"{n}_proj.bias")) for n in "qkv")
        if d["arch"] == "olmoe":  # QK-norm over the whole projection, before reshape and RoPE (clip_qkv null)
            q = rms_norm(q, W[pre + "q_norm.weight"], d["eps"])
            k = rms_norm(k, W[pre + "k_norm.weight"], d["eps"])
        q = q.view(T, nh, hd).transpose(0, 1)
        k = k.view(T, nkv, hd).transpose(0, 1)
        v = v.view(T, nkv, hd).transpose(0, 1)
        if d["arch"] == "qwen3_moe":  # per-head QK-norm after reshape, before RoPE
            q = rms_norm(q, W[pre + "q_norm.weight"], d["eps"])
            k = rms_norm(k, W[pre + "k_norm.weight"], d["eps"])
        pos = torch.arange(T, dtype=torch.float64)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos().to(self.dt), emb.sin().to(self.dt)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = nh // nkv  # GQA: query head h uses kv head h // rep
        k = k.repeat_interleave(rep, dim=0)
        v = v.repeat_interleave(rep, dim=0)
        s = q @ k.transpose(1, 2) / math.sqrt(hd)
        causal = torch.ones(T, T, dtype=torch.bool).triu(1)
        s = s.masked_fill(causal, -math.inf)
        a = torch.softmax(s, dim=-1) @ v
        a = a.transpose(0, 1).reshape(T, nh * hd)
        return F.linear(a, W[pre + "o_proj.weight"])

    def experts(self, l, x):
        """All experts on all rows: [E, T, H]. Two independent code paths, one per layout."""
        d, W, pre = self.d, self.W, f"model.layers.{l}."
        if self.layout == "fused":
            gu = W[pre + "mlp.experts.gate_up_proj"]  # [E, 2I, H]
            dn = W[pre + "mlp.experts.down_proj"]     # [E, H, I]
            I = gu.shape[1] // 2
            a = torch.einsum("eoh,th->eto", gu, x)
            return torch.einsum("ehi,eti->eth", dn, F.silu(a[..., :I]) * a[..., I:])
        outs = []
        for e in range(d["E"]):
            if d["arch"] == "mixtral":
                ep = pre + f"block_sparse_moe.experts.{e}."
                g, u, dn = W[ep + "w1.weight"], W[ep + "w3.weight"], W[ep + "w2.weight"]
            else:
                ep = pre + f"mlp.experts.{e}."
                g, u, dn = W[ep + "gate_proj.weight"], W[ep + "up_proj.weight"], W[ep + "down_proj.weight"]
            outs.append(F.linear(F.silu(F.linear(x, g)) * F.linear(x, u), dn))
        return torch.stack(outs)

    def moe(self, l, x, lp, extra_bias, mix, rec):
        d, W, dt = self.d, self.W, self.dt
        T, E, k = x.shape[0], d["E"], d["k"]
        rname = ("block_sparse_moe.gate.weight" if (d["arch"] == "mixtral" and self.layout == "per-expert")
                 else "mlp.gate.weight")
        z = F.linear(x, W[f"model.layers.{l}." + rname])  # raw router logits, before any patch
        zb = z
        if lp.get("bias"):
            b = torch.zeros(E, dtype=dt)
            for e, v in lp["bias"].items():
                b[int(e)] = v
            zb = zb + b
        if extra_bias is not None:
            zb = zb + extra_bias
        masked = set(int(e) for e in lp.get("mask", []))
        forced = [int(e) for e in lp.get("force", [])]
        mbool = torch.tensor([e in masked for e in range(E)])
        if masked:
            zb = zb.masked_fill(mbool, -math.inf)
        p = torch.softmax(zb, dim=-1)
        keep = (~mbool).to(dt)
        rows = [p[t] for t in range(T)]
        for pos, row in (lp.get("mix") or {}).items():
            rows[int(pos)] = torch.tensor(row, dtype=dt) * keep
        if mix is not None and mix[0] == l:
            rows[mix[1]] = torch.softmax(mix[2], dim=-1) * keep
        p = torch.stack(rows)
        # top-k sets: computed without grad, held fixed for autograd
        pl = p.detach().to(torch.float64).tolist()
        sels, gaps = zip(*(select(pl[t], k, forced, masked) for t in range(T)))
        idx = torch.tensor(sels, dtype=torch.long)
        w = p.gather(1, idx)
        if d["renorm"]:
            w = w / w.sum(-1, keepdim=True)
        O = self.experts(l, x)
        y = (w.unsqueeze(-1) * O[idx, torch.arange(T)[:, None]]).sum(1)
        if d["arch"] == "qwen2_moe":
            pre = f"model.layers.{l}.mlp."
            sh = F.linear(F.silu(F.linear(x, W[pre + "shared_expert.gate_proj.weight"])) *
                          F.linear(x, W[pre + "shared_expert.up_proj.weight"]), W[pre + "shared_expert.down_proj.weight"])
            y = y + torch.sigmoid(F.linear(x, W[pre + "shared_expert_gate.weight"])) * sh
        if rec is not None:
            wl = w.detach().to(torch.float64).tolist()
            experts, weights, ogaps = [], [], []
            for t in range(T):
                order = sorted(range(k), key=lambda j: (-wl[t][j], sels[t][j]))
                experts.append([sels[t][j] for j in order])
                weights.append([wl[t][j] for j in order])
                ws = weights[-1]
                ogaps.append(min([ws[j] - ws[j + 1] for j in range(k - 1)] + [math.inf]))
            rec[l] = dict(router_logits=z.detach().to(torch.float64), experts=experts,
                          weights=torch.tensor(weights, dtype=torch.float64), gap=min(gaps), order_gap=min(ogaps),
                          sets=[sorted(s) for s in sels])
        return y

    def dense(self, l, x):
        W, pre = self.W, f"model.layers.{l}.mlp."
        return F.linear(F.silu(F.linear(x, W[pre + "gate_proj.weight"])) * F.linear(x, W[pre + "up_proj.weight"]),
                        W[pre + "down_proj.weight"])

    def forward(self, tokens, patch, extra_bias=None, mix=None, rec=None):
        """patch: the patch JSON object (or None); extra_bias: {layer: [E] tensor}; mix: (layer, pos, theta)."""
        d, W = self.d, self.W
        layers = (patch or {}).get("layers", {})
        h = W["model.embed_tokens.weight"][torch.tensor(tokens)]
        for l in range(d["L"]):
            pre = f"model.layers.{l}."
            h = h + self.attention(l, rms_norm(h, W[pre + "input_layernorm.weight"], d["eps"]))
            x = rms_norm(h, W[pre + "post_attention_layernorm.weight"], d["eps"])
            if l in d["moe"]:
                eb = (extra_bias or {}).get(l)
                h = h + self.moe(l, x, layers.get(str(l), {}), eb, mix, rec)
            else:
                h = h + self.dense(l, x)
        h = rms_norm(h, W["model.norm.weight"], d["eps"])
        return F.linear(h, W["lm_head.weight"])


def loss_of(logits, tokens, target):
    s, e = target if target else (1, len(tokens))
    lp = torch.log_softmax(logits, dim=-1)
    return -torch.stack([lp[j - 1, tokens[j]] for j in range(s, e)]).mean()


# ----------------------------------------------------------------------------------------------------------
# Runs and gradients


class Retry(Exception):
    pass


def run_forward(model, tokens, patch):
    rec = {}
    with torch.no_grad():
        logits = model.forward(tokens, patch, rec=rec)
    return logits.to(torch.float64), rec


def routing_ok(rec, ordering=True):
    for r in rec.values():
        if r["gap"] <= GAP or (ordering and r["order_gap"] <= ORDER_GAP):
            return False
    return True


def changed(rec, base):
    return any(rec[l]["sets"] != base[l]["sets"] for l in rec)


def grad_eval(model, tokens, g):
    """Autograd (fixed top-k sets) loss, bias grads, mix grad; plus central FD of the bias grads."""
    d = model.d
    E = d["E"]
    mix = None
    theta = None
    if g["mix"]:
        theta = torch.tensor(g["mix"]["logits"], dtype=torch.float64, requires_grad=True)
        mix = (g["mix"]["layer"], g["mix"]["position"], theta)
    eb = {l: torch.zeros(E, dtype=torch.float64, requires_grad=True) for l in g["layers"]}
    rec = {}
    logits = model.forward(tokens, g["patch"], extra_bias=eb, mix=mix, rec=rec)
    loss = loss_of(logits, tokens, g["target"])
    loss.backward()
    out = {"loss": loss.item(), "bias": {l: eb[l].grad.clone() for l in g["layers"]}, "rec": rec}
    if theta is not None:
        out["mix_grad"] = theta.grad.clone()

    def L(extra, th=None):
        with torch.no_grad():
            m = None if g["mix"] is None else (g["mix"]["layer"], g["mix"]["position"],
                                               th if th is not None else theta.detach())
            return loss_of(model.forward(tokens, g["patch"], extra_bias=extra, mix=m), tokens, g["target"]).item()

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
    if theta is not None:  # validation only: mix grad vs FD
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


def unselected_somewhere(base, l, T):
    """Experts not selected at >= half the positions of layer l in the base run."""
    return [e for e in range(len(base[l]["router_logits"][0]))
            if sum(e not in base[l]["sets"][t] for t in range(T)) >= (T + 1) // 2]


def design(model, tokens, base, seed):
    """Choose the patches of the runs and grads (searching deterministic draws until robust)."""
    d = model.d
    E, T, moe = d["E"], len(tokens), d["moe"]

    def search(tag, make, check):
        for a in range(MAX_PATCH_DRAWS):
            rng = np.random.default_rng([seed, tag, a])
            cand = json.loads(json.dumps(make(rng)))  # exactly what is written
            if check(cand):
                return cand
        raise Retry(f"no robust draw for {tag}")

    def run_ok(patch):
        _, rec = run_forward(model, tokens, patch)
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
        return {"layers": {str(l): {"force": [int(rng.choice(unselected_somewhere(base, l, T)))]}}}

    def mk_bias(rng):
        ls = sorted(rng.choice(moe, size=2, replace=False).tolist())
        return {"layers": {str(l): {"bias": bias_obj(rng, E, count=int(rng.integers(2, 4)))} for l in ls}}

    def mk_mix(rng):
        l = int(rng.choice(moe))
        ps = sorted(rng.choice(T - 1, size=2, replace=False).tolist())
        mix = {}
        for p in ps:
            row = torch.softmax(torch.from_numpy(rng.standard_normal(E) * 1.5), -1).tolist()
            mix[str(p)] = [f32(v) for v in row]
        return {"layers": {str(l): {"mix": mix}}}

    def mk_combined(rng):
        a, b = (int(x) for x in rng.choice(moe, size=2, replace=False))
        sel_a = sorted(set(e for t in range(T) for e in base[a]["sets"][t]))
        m = int(rng.choice(sel_a))
        bias = bias_obj(rng, E, experts=sorted(rng.choice([e for e in range(E) if e != m], size=2,
                                                          replace=False).tolist()))
        f = int(rng.choice(unselected_somewhere(base, b, T)))
        lay = {str(a): {"mask": [m], "bias": bias}, str(b): {"force": [f]}}
        return {"layers": dict(sorted(lay.items(), key=lambda kv: int(kv[0])))}

    runs = [{"name": "base", "patch": None}]
    for i, (name, mk) in enumerate([("mask", mk_mask), ("force", mk_force), ("bias", mk_bias), ("mix", mk_mix),
                                    ("combined", mk_combined)]):
        runs.append({"name": name, "patch": search(i + 1, mk, run_ok)})

    def grad_ok(g):
        try:
            r = grad_eval(model, tokens, g)
        except AssertionError:
            return False
        return routing_ok(r["rec"], ordering=False)

    grads = [{"name": "g_all", "patch": None, "layers": list(moe), "target": None, "mix": None},
             {"name": "g_span", "patch": None, "layers": [moe[-1]], "target": [T - 4, T], "mix": None}]
    ml = moe[len(moe) // 2]
    mp = T // 2

    def mk_gmix(rng):
        logits = base[ml]["router_logits"][mp] + torch.from_numpy(rng.standard_normal(E) * 0.1)
        return {"name": "g_mix", "patch": None, "layers": [ml], "target": None,
                "mix": {"layer": ml, "position": mp, "logits": [f32(v) for v in logits.tolist()]}}

    def mk_gpatched(rng):
        a, b = moe[0], moe[-1]
        sel_a = sorted(set(e for t in range(T) for e in base[a]["sets"][t]))
        m = int(rng.choice(sel_a))
        lay = {str(a): {"mask": [m], "bias": bias_obj(rng, E, experts=sorted(
                   rng.choice([e for e in range(E) if e != m], size=2, replace=False).tolist()))},
               str(b): {"bias": bias_obj(rng, E, count=2)}}
        return {"name": "g_patched", "patch": {"layers": lay}, "layers": [a, b], "target": None, "mix": None}

    grads.append(search(11, mk_gmix, grad_ok))
    grads.append(search(12, mk_gpatched, grad_ok))
    return runs, grads


# ----------------------------------------------------------------------------------------------------------
# One case


def build_case(c, idx):
    cfg = make_config(c)
    d = cfg_get(cfg)
    for draw in range(MAX_WEIGHT_DRAWS):
        seed = 1000 * (idx + 1) + draw
        rng = np.random.default_rng(seed)
        P = gen_params(cfg, rng, c["dtype"])
        tokens = [int(t) for t in rng.integers(0, d["V"], size=c["T"])]
        named = name_tensors(P, cfg, c["layout"])
        W = dict(named)
        model = Model(cfg, W, c["layout"])
        _, base = run_forward(model, tokens, None)
        if not routing_ok(base):
            continue
        try:
            runs, grads = design(model, tokens, base, seed)
        except Retry:
            continue
        return cfg, named, W, model, tokens, runs, grads, draw
    raise SystemExit(f"{c['name']}: no robust weight draw in {MAX_WEIGHT_DRAWS} tries")


def make_case(c, idx):
    cfg, named, W, model, tokens, runs, grads, draw = build_case(c, idx)
    d = model.d
    cdir = os.path.join(OUT, c["name"])
    if os.path.exists(cdir):
        shutil.rmtree(cdir)
    os.makedirs(cdir)
    mdir = os.path.join(cdir, "model")
    write_checkpoint(mdir, cfg, named, c["dtype"], c["shards"])

    ref = []  # (name, dtype, tensor)
    results = {}
    for r in runs:
        logits, rec = run_forward(model, tokens, r["patch"])
        results[r["name"]] = (logits, rec)
        ref.append((f"{r['name']}.logits", "F32", logits))
        for l in d["moe"]:
            ref.append((f"{r['name']}.layer{l}.router_logits", "F32", rec[l]["router_logits"]))
            ref.append((f"{r['name']}.layer{l}.experts", "I32", torch.tensor(rec[l]["experts"], dtype=torch.int32)))
            ref.append((f"{r['name']}.layer{l}.weights", "F32", rec[l]["weights"]))
    fd_err = 0.0
    gsum = []
    for g in grads:
        out = grad_eval(model, tokens, g)
        fd_err = max(fd_err, out["fd_err"])
        ref.append((f"{g['name']}.loss", "F32", torch.tensor([out["loss"]], dtype=torch.float64)))
        for l in g["layers"]:
            ref.append((f"{g['name']}.bias.{l}", "F32", out["bias"][l]))
        if g["mix"]:
            ref.append((f"{g['name']}.mix_grad", "F32", out["mix_grad"]))
        for l in g["layers"]:
            ref.append((f"{g['name']}.fd.bias.{l}", "F32", out["fd"][l]))
        gsum.append(f"{g['name']} loss={out['loss']:.4f}")
    write_safetensors(os.path.join(cdir, "reference.safetensors"),
                      [(n, dt, tuple(t.shape), tensor_bytes(t, dt)) for n, dt, t in ref],
                      {"format": "pt", "generator": "test/parity/make_fixtures.py"})
    doc = {"arch": c["arch"], "dtype": c["dtype"], "layout": c["layout"], "sharded": c["shards"] > 1,
           "tokens": tokens, "runs": runs, "grads": grads}
    with open(os.path.join(cdir, "cases.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")

    # ---- self-validation --------------------------------------------------------------------------------
    # 1. The checkpoint read back from disk (own reader, sharded index) reproduces every run exactly.
    cfg2, W2 = read_checkpoint(mdir)
    assert set(W2) == set(W)
    for n in W:
        assert torch.equal(W2[n], W[n]), n
    # 2. The other layout's forward path (per-expert loop vs fused einsum) from the same weights agrees.
    other = "fused" if c["layout"] == "per-expert" else "per-expert"
    m_other = Model(cfg2, convert_layout(W2, cfg2, c["layout"], other), other)
    m_f32 = Model(cfg2, W2, c["layout"], dt=torch.float32)
    max_layout, max32_logit, max32_w = 0.0, 0.0, 0.0
    for r in runs:
        logits, rec = results[r["name"]]
        lo, ro = run_forward(m_other, tokens, r["patch"])
        max_layout = max(max_layout, (lo - logits).abs().max().item())
        for l in d["moe"]:
            assert ro[l]["experts"] == rec[l]["experts"]
            max_layout = max(max_layout, (ro[l]["weights"] - rec[l]["weights"]).abs().max().item())
        # 3. A float32 run of the same reference agrees to ~1e-5 and selects the same experts.
        l32, r32 = run_forward(m_f32, tokens, r["patch"])
        max32_logit = max(max32_logit, (l32 - logits).abs().max().item())
        for l in d["moe"]:
            assert r32[l]["experts"] == rec[l]["experts"], (r["name"], l)
            max32_w = max(max32_w, (r32[l]["weights"] - rec[l]["weights"]).abs().max().item())
    assert max_layout < 1e-12, max_layout
    assert max32_logit < 1e-4 and max32_w < 1e-5, (max32_logit, max32_w)
    # 4. Reference file round trip.
    back = read_safetensors(os.path.join(cdir, "reference.safetensors"))
    assert len(back) == len(ref)

    base = results["base"][1]
    zstd = torch.cat([base[l]["router_logits"] for l in d["moe"]]).std().item()
    all_recs = [results[r["name"]][1] for r in runs]
    min_gap = min(rec[l]["gap"] for rec in all_recs for l in rec)
    min_ogap = min(rec[l]["order_gap"] for rec in all_recs for l in rec)
    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(cdir) for f in fs)
    print(f"{c['name']:34s} {c['arch']:9s} {c['layout']:10s} {c['dtype']:4s} shards={c['shards']} T={len(tokens)} "
          f"k={d['k']} moe={d['moe']} draw={draw} router_std={zstd:.2f} min_gap={min_gap:.4f} "
          f"min_order_gap={min_ogap:.4f} fd_rel={fd_err:.1e} layout_diff={max_layout:.1e} "
          f"f32_logit_diff={max32_logit:.1e} f32_w_diff={max32_w:.1e} size={size / 1024:.0f}KiB")
    print(" " * 36 + "runs: " + ", ".join(f"{r['name']}={json.dumps(r['patch'], separators=(',', ':'))[:80]}"
                                            for r in runs[1:3]))
    print(" " * 36 + "grads: " + ", ".join(gsum))
    return size


def check_fixtures(root):
    """Cross-check: recompute committed fixtures (e.g. those tools/hf-reference/generate.py writes from
    transformers' own code) with this independent reference, in float64, and compare every number."""
    worst = {"logits": 0.0, "router_logits": 0.0, "weights": 0.0, "grad": 0.0}
    checked = 0
    for name in sorted(os.listdir(root)):
        cdir = os.path.join(root, name)
        if not os.path.exists(os.path.join(cdir, "cases.json")):
            continue
        with open(os.path.join(cdir, "cases.json")) as f:
            doc = json.load(f)
        if doc["arch"] not in ARCH_CLASS:
            continue
        with open(os.path.join(cdir, "model", "config.json")) as f:
            if "quantization_config" in json.load(f):
                print(f"{name:34s} skipped (FP8 weights: this reference reads float checkpoints only)")
                continue
        cfg, W = read_checkpoint(os.path.join(cdir, "model"))
        model = Model(cfg, W, doc["layout"])
        ref = {n: t for n, (dt, t) in read_safetensors(os.path.join(cdir, "reference.safetensors")).items()}
        tokens = doc["tokens"]
        case_worst = 0.0
        for r in doc["runs"]:
            logits, rec = run_forward(model, tokens, r["patch"])
            d = (logits - ref[f"{r['name']}.logits"]).abs().max().item()
            worst["logits"] = max(worst["logits"], d)
            case_worst = max(case_worst, d)
            for l in model.d["moe"]:
                p = f"{r['name']}.layer{l}"
                assert rec[l]["experts"] == ref[p + ".experts"].tolist(), (name, p)
                worst["router_logits"] = max(worst["router_logits"],
                                             (rec[l]["router_logits"] - ref[p + ".router_logits"]).abs().max().item())
                worst["weights"] = max(worst["weights"], (rec[l]["weights"] - ref[p + ".weights"]).abs().max().item())
        for g in doc["grads"]:
            out = grad_eval(model, tokens, g)
            assert abs(out["loss"] - ref[f"{g['name']}.loss"].item()) < 1e-5, (name, g["name"])
            for l in g["layers"]:
                want = ref[f"{g['name']}.bias.{l}"]
                worst["grad"] = max(worst["grad"], (out["bias"][l] - want).abs().max().item() /
                                    max(want.abs().max().item(), 1e-30))
            if g["mix"]:
                want = ref[f"{g['name']}.mix_grad"]
                worst["grad"] = max(worst["grad"], (out["mix_grad"] - want).abs().max().item() /
                                    max(want.abs().max().item(), 1e-30))
        checked += 1
        print(f"{name:34s} runs and grads agree; max |logit diff| {case_worst:.1e}")
    # The reference files hold float32 values: agreement is to float32 rounding.
    print(f"{checked} cases; max |diff|: logits {worst['logits']:.1e}, router logits {worst['router_logits']:.1e}, "
          f"weights {worst['weights']:.1e}; bias/mix grad rel. {worst['grad']:.1e}")
    assert checked > 0, f"no {', '.join(ARCH_CLASS)} cases under {root}"
    assert worst["logits"] < 1e-5 and worst["router_logits"] < 1e-5 and worst["weights"] < 1e-6, worst
    assert worst["grad"] < 1e-5, worst


def main():
    torch.set_num_threads(1)  # bitwise determinism of the reductions
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        return check_fixtures(sys.argv[2])
    os.makedirs(OUT, exist_ok=True)
    total = 0
    for i, c in enumerate(CASES):
        total += make_case(c, i)
    print(f"{len(CASES)} cases, {total / 1024:.0f} KiB total under {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
