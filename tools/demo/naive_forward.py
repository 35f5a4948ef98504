"""A deliberately naive second implementation of the OLMoE forward (float64, one position at a time, straight from
the Hugging Face tensor names), used by make_fixture.py to cross-check tools/demo/model.py before writing a parity
reference. No batching, no stacked experts, no shared code with model.py."""
import math

import torch


def _rms(x, w, eps):
    return w * (x / torch.sqrt((x * x).mean() + eps))


def naive_forward(sd, cfg, tokens):
    """sd: HF state dict (any float dtype; upcast to float64). Returns (logits [T,V], per layer list of
    (router_logits [T,E], experts [T,k] by weight desc / lower index on ties, weights [T,k]))."""
    W = {k: v.to(torch.float64) for k, v in sd.items()}
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = H // nh
    E, k, eps, theta = cfg["num_experts"], cfg["num_experts_per_tok"], cfg["rms_norm_eps"], cfg["rope_theta"]
    T = len(tokens)
    x = [W["model.embed_tokens.weight"][t].clone() for t in tokens]

    def rope(vec, pos):  # vec [hd]
        out = vec.clone()
        half = hd // 2
        for i in range(half):
            ang = pos * theta ** (-2.0 * i / hd)
            c, s = math.cos(ang), math.sin(ang)
            a, b = vec[i].item(), vec[i + half].item()
            out[i] = a * c - b * s
            out[i + half] = b * c + a * s
        return out

    routing = []
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        qs, ks, vs = [], [], []
        for t in range(T):
            h = _rms(x[t], W[p + "input_layernorm.weight"], eps)
            q = _rms(W[p + "self_attn.q_proj.weight"] @ h, W[p + "self_attn.q_norm.weight"], eps)
            kk = _rms(W[p + "self_attn.k_proj.weight"] @ h, W[p + "self_attn.k_norm.weight"], eps)
            v = W[p + "self_attn.v_proj.weight"] @ h
            qs.append([rope(q[i * hd:(i + 1) * hd], t) for i in range(nh)])
            ks.append([rope(kk[i * hd:(i + 1) * hd], t) for i in range(nkv)])
            vs.append([v[i * hd:(i + 1) * hd] for i in range(nkv)])
        new_x = []
        for t in range(T):
            heads = []
            for i in range(nh):
                j = i // (nh // nkv)
                scores = torch.tensor([float(qs[t][i] @ ks[s][j]) / math.sqrt(hd) for s in range(t + 1)],
                                      dtype=torch.float64)
                a = torch.softmax(scores, 0)
                heads.append(sum(a[s] * vs[s][j] for s in range(t + 1)))
            new_x.append(x[t] + W[p + "self_attn.o_proj.weight"] @ torch.cat(heads))
        x = new_x
        rl, ex, wt = [], [], []
        for t in range(T):
            h = _rms(x[t], W[p + "post_attention_layernorm.weight"], eps)
            logits = W[p + "mlp.gate.weight"] @ h
            prob = torch.softmax(logits, 0)
            order = sorted(range(E), key=lambda e: (-prob[e].item(), e))[:k]
            ws = [prob[e] for e in order]
            if cfg["norm_topk_prob"]:
                s = sum(ws)
                ws = [w / s for w in ws]
            out = torch.zeros(H, dtype=torch.float64)
            for e, w in zip(order, ws):
                g = W[p + f"mlp.experts.{e}.gate_proj.weight"] @ h
                u = W[p + f"mlp.experts.{e}.up_proj.weight"] @ h
                out += w * (W[p + f"mlp.experts.{e}.down_proj.weight"] @ (g * torch.sigmoid(g) * u))
            x[t] = x[t] + out
            rl.append(logits)
            ex.append(order)
            wt.append(torch.stack(ws))
        routing.append((torch.stack(rl), torch.tensor(ex), torch.stack(wt)))
    logits = torch.stack([W["lm_head.weight"] @ _rms(xt, W["model.norm.weight"], eps) for xt in x])
    return logits, routing
