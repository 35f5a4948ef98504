"""A from-scratch PyTorch implementation of the OLMoE architecture (Hugging Face `OlmoeForCausalLM` semantics).

Semantics (as transformers' modeling_olmoe.py):
- RMSNorm: x * rsqrt(mean(x^2) + eps) computed in fp32, then times weight; eps = rms_norm_eps (1e-5).
- Attention: q = q_norm(q_proj(x)), k = k_norm(k_proj(x)) where q_norm/k_norm are RMSNorms over the WHOLE
  projection ([nh*hd] and [nkv*hd]) before the reshape into heads; then RoPE (rotate_half, inv_freq =
  theta^(-2i/hd), positions 0..T-1), causal softmax(q k^T / sqrt(hd)) v, o_proj. No biases, clip_qkv null.
- Decoder layer: h = x + attn(input_layernorm(x)); out = h + moe(post_attention_layernorm(h)).
- MoE: router_logits = mlp.gate(x) (Linear(H, E, bias=False)); p = softmax(router_logits) in fp32; top-k of p;
  weights = p of the selected experts, NOT renormalised (norm_topk_prob false); expert e:
  down_proj(silu(gate_proj(x)) * up_proj(x)).
- Final model.norm, lm_head (not tied to embed_tokens).

For training speed the expert weights are held stacked ([E, I, H] / [E, H, I]); `hf_state_dict()` and
`load_hf_state_dict()` convert to and from the Hugging Face per-expert tensor names
(model.layers.N.mlp.experts.e.{gate,up,down}_proj.weight).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def default_config(**kw):
    cfg = {
        "architectures": ["OlmoeForCausalLM"],
        "model_type": "olmoe",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "clip_qkv": None,
        "hidden_act": "silu",
        "hidden_size": 128,
        "intermediate_size": 128,
        "initializer_range": 0.02,
        "max_position_embeddings": 512,
        "norm_topk_prob": False,
        "num_attention_heads": 4,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 4,
        "num_key_value_heads": 4,
        "output_router_logits": False,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "router_aux_loss_coef": 0.01,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 261,
        "bos_token_id": 260,
        "eos_token_id": 260,
        "pad_token_id": 260,
    }
    cfg.update(kw)
    return cfg


def rms_norm(x, weight, eps):
    dt = x.dtype
    xf = x.float() if dt != torch.float64 else x
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dt)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(T, hd, theta, dtype, offset=0):
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    pos = torch.arange(offset, offset + T, dtype=torch.float64)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H, E, I = cfg["hidden_size"], cfg["num_experts"], cfg["intermediate_size"]
        nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        hd = H // nh
        self.input_layernorm = nn.Parameter(torch.ones(H))
        self.post_attention_layernorm = nn.Parameter(torch.ones(H))
        self.q_proj = nn.Parameter(torch.empty(nh * hd, H))
        self.k_proj = nn.Parameter(torch.empty(nkv * hd, H))
        self.v_proj = nn.Parameter(torch.empty(nkv * hd, H))
        self.o_proj = nn.Parameter(torch.empty(H, nh * hd))
        self.q_norm = nn.Parameter(torch.ones(nh * hd))
        self.k_norm = nn.Parameter(torch.ones(nkv * hd))
        self.gate = nn.Parameter(torch.empty(E, H))
        self.w_gate = nn.Parameter(torch.empty(E, I, H))
        self.w_up = nn.Parameter(torch.empty(E, I, H))
        self.w_down = nn.Parameter(torch.empty(E, H, I))


class Olmoe(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        H, V = cfg["hidden_size"], cfg["vocab_size"]
        self.embed_tokens = nn.Parameter(torch.empty(V, H))
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.norm = nn.Parameter(torch.ones(H))
        self.lm_head = nn.Parameter(torch.empty(V, H))

    # ---- init -------------------------------------------------------------------------------------------
    def init_weights(self, generator):
        std = self.cfg["initializer_range"]
        L = self.cfg["num_hidden_layers"]
        for name, p in self.named_parameters():
            if p.dim() == 1:
                continue  # norms stay 1
            s = std
            if name.endswith("o_proj") or name.endswith("w_down"):
                s = std / math.sqrt(2 * L)
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=generator) * s)

    # ---- HF naming -----------------------------------------------------------------------------------------
    def hf_state_dict(self):
        sd = {"model.embed_tokens.weight": self.embed_tokens, "model.norm.weight": self.norm,
              "lm_head.weight": self.lm_head}
        for i, l in enumerate(self.layers):
            p = f"model.layers.{i}."
            sd[p + "input_layernorm.weight"] = l.input_layernorm
            sd[p + "post_attention_layernorm.weight"] = l.post_attention_layernorm
            for n in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"):
                sd[p + f"self_attn.{n}.weight"] = getattr(l, n)
            sd[p + "mlp.gate.weight"] = l.gate
            for e in range(self.cfg["num_experts"]):
                sd[p + f"mlp.experts.{e}.gate_proj.weight"] = l.w_gate[e]
                sd[p + f"mlp.experts.{e}.up_proj.weight"] = l.w_up[e]
                sd[p + f"mlp.experts.{e}.down_proj.weight"] = l.w_down[e]
        return {k: v.detach().clone().contiguous() for k, v in sd.items()}

    @torch.no_grad()
    def load_hf_state_dict(self, sd):
        self.embed_tokens.copy_(sd["model.embed_tokens.weight"])
        self.norm.copy_(sd["model.norm.weight"])
        self.lm_head.copy_(sd["lm_head.weight"])
        for i, l in enumerate(self.layers):
            p = f"model.layers.{i}."
            l.input_layernorm.copy_(sd[p + "input_layernorm.weight"])
            l.post_attention_layernorm.copy_(sd[p + "post_attention_layernorm.weight"])
            for n in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"):
                getattr(l, n).copy_(sd[p + f"self_attn.{n}.weight"])
            l.gate.copy_(sd[p + "mlp.gate.weight"])
            for e in range(self.cfg["num_experts"]):
                l.w_gate[e].copy_(sd[p + f"mlp.experts.{e}.gate_proj.weight"])
                l.w_up[e].copy_(sd[p + f"mlp.experts.{e}.up_proj.weight"])
                l.w_down[e].copy_(sd[p + f"mlp.experts.{e}.down_proj.weight"])

    # ---- forward -------------------------------------------------------------------------------------------
    def forward(self, ids, want_routing=False, exact_routing=False, patch=None):
        """ids: [B, T] long. Returns (logits [B,T,V], router_logits list per layer [B*T,E], routing list).

        routing (when want_routing): per layer (experts [B*T,k] long, weights [B*T,k]), ordered by weight
        descending, ties -> lower expert index. exact_routing=True uses a stable sort for the selection (the
        reference semantics; identical to topk except for exact ties). patch: {layer: {"mask": [e..],
        "force": [e..], "bias": {e: v}}} with the semantics of test/parity/README.md (B must be 1 for patches;
        no "mix").
        """
        cfg = self.cfg
        B, T = ids.shape
        H = cfg["hidden_size"]
        nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        hd = H // nh
        k = cfg["num_experts_per_tok"]
        E = cfg["num_experts"]
        eps = cfg["rms_norm_eps"]
        dt = self.embed_tokens.dtype
        x = F.embedding(ids, self.embed_tokens)
        cos, sin = rope_cos_sin(T, hd, cfg["rope_theta"], dt)
        mask = torch.full((T, T), float("-inf"), dtype=dt).triu(1)
        all_router, all_routing = [], []
        for li, l in enumerate(self.layers):
            h = rms_norm(x, l.input_layernorm, eps)
            q = rms_norm(h @ l.q_proj.t(), l.q_norm, eps).view(B, T, nh, hd).transpose(1, 2)
            kk = rms_norm(h @ l.k_proj.t(), l.k_norm, eps).view(B, T, nkv, hd).transpose(1, 2)
            v = (h @ l.v_proj.t()).view(B, T, nkv, hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            kk = kk * cos + rotate_half(kk) * sin
            if nkv != nh:
                kk = kk.repeat_interleave(nh // nkv, dim=1)
                v = v.repeat_interleave(nh // nkv, dim=1)
            att = (q @ kk.transpose(-1, -2)) / math.sqrt(hd) + mask
            att = torch.softmax(att.float() if dt != torch.float64 else att, dim=-1).to(dt)
            a = (att @ v).transpose(1, 2).reshape(B, T, nh * hd)
            x = x + a @ l.o_proj.t()

            h = rms_norm(x, l.post_attention_layernorm, eps).reshape(B * T, H)
            router_logits = h @ l.gate.t()
            probs = torch.softmax(router_logits.float() if dt != torch.float64 else router_logits, dim=-1)
            lp = (patch or {}).get(li)
            if lp is not None:
                topw, topi = patched_routing(router_logits, lp, k, cfg["norm_topk_prob"])
            elif exact_routing:
                srt, idx = torch.sort(probs, dim=-1, descending=True, stable=True)
                topw, topi = srt[:, :k], idx[:, :k]
            else:
                topw, topi = torch.topk(probs, k, dim=-1)
            if lp is None and cfg["norm_topk_prob"]:
                topw = topw / topw.sum(-1, keepdim=True)
            topw = topw.to(dt)
            out = torch.zeros_like(h)
            flat_e = topi.reshape(-1)
            flat_w = topw.reshape(-1)
            flat_t = torch.arange(B * T).repeat_interleave(k)
            order = torch.argsort(flat_e, stable=True)
            counts = torch.bincount(flat_e, minlength=E).tolist()
            start = 0
            wg, wu, wd = l.w_gate.unbind(0), l.w_up.unbind(0), l.w_down.unbind(0)
            for e in range(E):
                c = counts[e]
                if c == 0:
                    continue
                sel = order[start:start + c]
                start += c
                tok = flat_t[sel]
                he = h.index_select(0, tok)
                ye = (F.silu(he @ wg[e].t()) * (he @ wu[e].t())) @ wd[e].t()
                out.index_add_(0, tok, ye * flat_w[sel].unsqueeze(1))
            x = x + out.view(B, T, H)
            all_router.append(router_logits)
            if want_routing:
                all_routing.append((topi, topw))
        x = rms_norm(x, self.norm, eps)
        logits = x @ self.lm_head.t()
        return logits, all_router, all_routing


def patched_routing(router_logits, lp, k, norm_topk_prob):
    """Routing of test/parity/README.md: z = logits + bias, masked -> -inf, p = softmax(z); forced experts first,
    then the highest p among the rest (ties -> lower index) until k; weights = p of the selected (renormalised when
    norm_topk_prob); reported by weight descending, ties -> lower index."""
    N, E = router_logits.shape
    z = router_logits.clone()
    for e, v in (lp.get("bias") or {}).items():
        z[:, int(e)] += v
    for e in lp.get("mask") or []:
        z[:, e] = float("-inf")
    p = torch.softmax(z, dim=-1)
    force = list(lp.get("force") or [])
    ws, ids = [], []
    for t in range(N):
        sel = force[:k]
        rest = sorted((e for e in range(E) if e not in sel), key=lambda e: (-float(p[t, e]), e))
        sel = sel + rest[:k - len(sel)]
        w = [p[t, e] for e in sel]
        if norm_topk_prob:
            s = sum(w)
            w = [x / s for x in w]
        pairs = sorted(zip(w, sel), key=lambda x: (-float(x[0]), x[1]))
        ws.append(torch.stack([x[0] for x in pairs]))
        ids.append(torch.tensor([x[1] for x in pairs]))
    return torch.stack(ws), torch.stack(ids)


def load_balancing_loss(router_logits_list, k, E):
    """HF load_balancing_loss_func (Switch/OLMoE): E * sum_e f_e * P_e over all layers' tokens concatenated,
    with f = fraction of (token, slot) assignments per top-k slot, P = mean router probability."""
    logits = torch.cat(router_logits_list, dim=0)
    probs = torch.softmax(logits.float(), dim=-1)
    _, sel = torch.topk(probs, k, dim=-1)
    mask = F.one_hot(sel, E).float()  # [N, k, E]
    tokens_per_expert = mask.mean(0)  # [k, E]
    prob_per_expert = probs.mean(0)  # [E]
    return (tokens_per_expert * prob_per_expert.unsqueeze(0)).sum() * E
