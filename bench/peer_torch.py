#!/usr/bin/python3
"""PyTorch eager peer for `npm run bench`: a Hugging Face-style OLMoE forward (modeling_olmoe.py, eager attention,
the per-expert loop) in float32 on the weights of a bf16 safetensors checkpoint.

Reads the safetensors itself with numpy (no safetensors package). Prints one JSON line with prefill/decode tokens/s,
peak RSS, which BLAS the libblas.so.3 alternative points at and an sgemm sanity figure. With --check-tokens it also
writes the last-position logits (raw little-endian float32) and the selected experts of that short prompt, for the
bench's correctness cross-check against the engine.

usage: peer_torch.py --model DIR --prompt-tokens N --decode-tokens M --threads T
                     [--seed S] [--repeat R] [--check-tokens 1,2,3] [--check-out PREFIX]
"""
import argparse
import json
import math
import os
import resource
import struct
import sys
import time

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError as e:  # run.mjs checks for this before, but say it plainly anyway
    print(json.dumps({"error": f"torch is not importable by {sys.executable}: {e}"}))
    sys.exit(3)


# ---- checkpoint -------------------------------------------------------------------------------------------------

def read_safetensors(path):
    """{name: float32 torch tensor} from a BF16/F16/F32 safetensors file (bf16 → f32 by shifting into the high half)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    # Tensor by tensor with read() (not a memory map), so the peak RSS is the fp32 weights plus one tensor in flight.
    out = {}
    with open(path, "rb") as f:
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            a, b = meta["data_offsets"]
            dt = meta["dtype"]
            count = int(np.prod(meta["shape"], dtype=np.int64))
            f.seek(8 + n + a)
            if dt == "BF16":
                raw = np.fromfile(f, dtype="<u2", count=count)
                arr = (raw.astype(np.uint32) << 16).view(np.float32)
            elif dt == "F16":
                raw = np.fromfile(f, dtype="<f2", count=count)
                arr = raw.astype(np.float32)
            elif dt == "F32":
                raw = arr = np.fromfile(f, dtype="<f4", count=count)
            else:
                raise ValueError(f"{path}: tensor {name} has dtype {dt}, the peer reads BF16/F16/F32")
            if raw.size != count or (b - a) != count * raw.itemsize:
                raise ValueError(f"{path}: tensor {name} is truncated or its offsets disagree with its shape")
            del raw
            out[name] = torch.from_numpy(arr.reshape(meta["shape"]))
    return out


def load_checkpoint(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights = {}
    for name in files:
        weights.update(read_safetensors(os.path.join(model_dir, name)))
    return weights


# ---- the model (transformers/models/olmoe/modeling_olmoe.py, eager path) ------------------------------------------

def rms_norm(x, weight, eps):
    dtype = x.dtype
    x = x.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    return weight * x.to(dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Olmoe:
    def __init__(self, cfg, w):
        self.cfg = cfg
        self.w = w
        self.H = cfg["hidden_size"]
        self.nh = cfg["num_attention_heads"]
        self.nkv = cfg.get("num_key_value_heads") or self.nh
        self.hd = self.H // self.nh
        self.E = cfg["num_experts"]
        self.k = cfg["num_experts_per_tok"]
        self.L = cfg["num_hidden_layers"]
        self.eps = cfg["rms_norm_eps"]
        self.clip = cfg.get("clip_qkv")
        self.norm_topk = cfg.get("norm_topk_prob", False)
        theta = cfg.get("rope_theta", 10000.0)
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.hd, 2, dtype=torch.int64).float() / self.hd))
        self.lm_head = w["lm_head.weight"] if "lm_head.weight" in w else w["model.embed_tokens.weight"]

    def rope(self, positions):
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def attention(self, l, x, cos, sin, cache):
        p = f"model.layers.{l}.self_attn."
        w = self.w
        T = x.shape[0]
        # OLMoE QK-norm: RMSNorm over the whole q / k projection, before the head split and RoPE.
        q = rms_norm(F.linear(x, w[p + "q_proj.weight"]), w[p + "q_norm.weight"], self.eps)
        k = rms_norm(F.linear(x, w[p + "k_proj.weight"]), w[p + "k_norm.weight"], self.eps)
        v = F.linear(x, w[p + "v_proj.weight"])
        if self.clip is not None:
            q = q.clamp(-self.clip, self.clip)
            k = k.clamp(-self.clip, self.clip)
            v = v.clamp(-self.clip, self.clip)
        q = q.view(1, T, self.nh, self.hd).transpose(1, 2)
        k = k.view(1, T, self.nkv, self.hd).transpose(1, 2)
        v = v.view(1, T, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache[l] is not None:  # DynamicCache.update: concatenate past keys/values
            k = torch.cat([cache[l][0], k], dim=-2)
            v = torch.cat([cache[l][1], v], dim=-2)
        cache[l] = (k, v)
        S = k.shape[-2]
        if self.nkv != self.nh:
            rep = self.nh // self.nkv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.hd)
        if T > 1:  # causal mask over the new positions (past ones all visible)
            mask = torch.full((T, S), float("-inf")).triu(S - T + 1)
            scores = scores + mask
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(T, self.H)
        return F.linear(out, w[p + "o_proj.weight"])

    def moe(self, l, x, capture=None):
        p = f"model.layers.{l}.mlp."
        w = self.w
        router_logits = F.linear(x, w[p + "gate.weight"])
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected = torch.topk(routing_weights, self.k, dim=-1)
        if self.norm_topk:
            routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(x.dtype)
        if capture is not None:
            capture.append(selected.tolist())
        final = torch.zeros_like(x)
        expert_mask = F.one_hot(selected, num_classes=self.E).permute(2, 1, 0)
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in expert_hit.squeeze(-1).tolist():
            idx, top_x = torch.where(expert_mask[e])
            cur = x[top_x]
            pe = f"{p}experts.{e}."
            h = F.silu(F.linear(cur, w[pe + "gate_proj.weight"])) * F.linear(cur, w[pe + "up_proj.weight"])
            h = F.linear(h, w[pe + "down_proj.weight"]) * routing_weights[top_x, idx, None]
            final.index_add_(0, top_x, h.to(x.dtype))
        return final

    def forward(self, tokens, cache, start, capture=None):
        """tokens: 1-D LongTensor of new positions start..; returns the last position's logits."""
        w = self.w
        x = F.embedding(tokens, w["model.embed_tokens.weight"])
        cos, sin = self.rope(torch.arange(start, start + tokens.shape[0]))
        for l in range(self.L):
            pl = f"model.layers.{l}."
            h = rms_norm(x, w[pl + "input_layernorm.weight"], self.eps)
            x = x + self.attention(l, h, cos, sin, cache)
            h = rms_norm(x, w[pl + "post_attention_layernorm.weight"], self.eps)
            x = x + self.moe(l, h, capture)
        x = rms_norm(x, w["model.norm.weight"], self.eps)
        return F.linear(x[-1:], self.lm_head)[0]


# ---- BLAS ---------------------------------------------------------------------------------------------------------

def blas_library():
    """Which library the libblas.so.3 alternative (Debian) resolves to, and the one actually mapped."""
    info = {}
    for cand in ("/usr/lib/x86_64-linux-gnu/libblas.so.3", "/usr/lib/aarch64-linux-gnu/libblas.so.3"):
        if os.path.exists(cand):
            info["alternative"] = os.path.realpath(cand)
            break
    try:
        with open("/proc/self/maps") as f:
            mapped = sorted({line.split()[-1] for line in f if "blas" in line.lower() and "/" in line})
        info["mapped"] = mapped
    except OSError:
        pass
    path = " ".join([info.get("alternative", "")] + info.get("mapped", [])).lower()
    if "openblas" in path:
        info["name"] = "OpenBLAS"
    elif "blis" in path:
        info["name"] = "BLIS"
    elif "mkl" in path:
        info["name"] = "MKL"
    elif "atlas" in path:
        info["name"] = "ATLAS"
    elif path.strip():
        info["name"] = "reference BLAS (netlib)"
    else:
        info["name"] = "unknown"
    return info


def sgemm_gflops(n=1024, reps=5):
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# ---- main ---------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="timed prefill+decode runs; the best of each phase counts")
    ap.add_argument("--check-tokens", default=None, help="comma-separated ids of the cross-check prompt")
    ap.add_argument("--check-out", default=None, help="path prefix for <prefix>.logits.f32 and <prefix>.experts.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "olmoe":
        raise SystemExit(f"peer_torch.py: {args.model}: model_type {cfg.get('model_type')!r}, the peer runs olmoe")

    t0 = time.perf_counter()
    model = Olmoe(cfg, load_checkpoint(args.model))
    load_s = time.perf_counter() - t0

    blas = blas_library()
    gflops = sgemm_gflops()
    blas["mapped"] = blas_library().get("mapped", [])  # after the first GEMM the library is surely loaded

    result = {
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens,
        "threads": torch.get_num_threads(),
        "repeat": max(1, args.repeat),
        "torch": torch.__version__,
        "dtype": "float32",
        "load_seconds": load_s,
        "blas": blas,
        "sgemm_1024_gflops": gflops,
    }

    with torch.inference_mode():
        # Warm-up (and the cross-check prompt): a short prefill and one decode step.
        check = [int(t) for t in args.check_tokens.split(",")] if args.check_tokens else [1, 2, 3, 4, 5, 6, 7, 8]
        cache = [None] * model.L
        capture = []
        logits = model.forward(torch.tensor(check, dtype=torch.long), cache, 0, capture)
        model.forward(torch.tensor([int(logits.argmax())]), cache, len(check))
        if args.check_out:
            logits.numpy().astype("<f4").tofile(args.check_out + ".logits.f32")
            with open(args.check_out + ".experts.json", "w") as f:
                json.dump({"tokens": check, "experts": capture}, f)

        g = torch.Generator().manual_seed(args.seed)
        prompt = torch.randint(0, cfg["vocab_size"], (args.prompt_tokens,), generator=g)
        prefill_s = decode_s = float("inf")
        for _ in range(max(1, args.repeat)):
            cache = [None] * model.L
            t0 = time.perf_counter()
            logits = model.forward(prompt, cache, 0)
            prefill_s = min(prefill_s, time.perf_counter() - t0)
            nxt = int(logits.argmax())
            pos = args.prompt_tokens
            t0 = time.perf_counter()
            for _ in range(args.decode_tokens):
                logits = model.forward(torch.tensor([nxt]), cache, pos)
                nxt = int(logits.argmax())  # greedy
                pos += 1
            decode_s = min(decode_s, time.perf_counter() - t0)
            del cache

    result.update(
        prefill_seconds=prefill_s,
        prefill_tokens_per_s=args.prompt_tokens / prefill_s,
        decode_seconds=decode_s,
        decode_tokens_per_s=args.decode_tokens / decode_s if args.decode_tokens > 0 else None,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
