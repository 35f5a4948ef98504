"""Routescope's routing rule and routing patch, in torch: the semantics the engine implements (README "Routing").

This is our definition, not transformers': for an empty patch it must select the same experts with the same
weights as transformers' own router (generate.py asserts that on every plain run); for mask / force / mix it is
the reference of what the engine must do. Everything is differentiable in the router logits and the mix row
(selection is held fixed, as in the engine's gradients).

Rule (per token):
  z       = raw router logits (the gate's output, router bias included) + patch bias (+ the gradient's extra bias)
  scores  = softmax(z) over the unmasked experts (softmax routers) or sigmoid(z) (sigmoid routers);
            a mix row at this (layer, position) replaces the scores; masked experts get score 0
  choice  = scores + e_score_correction_bias (sigmoid routers that have one) else scores; masked -> never chosen
  groups  = with n_group > 1: a group's score is the max (softmax: DeepSeek-V2) or the sum of the two best
            (sigmoid: DeepSeek-V3) choices of its unmasked experts; only the topk_group best groups stay
  chosen  = forced experts, then the best remaining choices in the kept groups (ties: lower index) up to k
  weights = scores of the chosen, divided by their sum when the rule renormalises, times routed_scaling_factor
  order   = weights descending, ties by lower expert index

Sparsemixer (phimoe, transformers' inference path), per token:
  z       = raw router logits + patch bias; masked experts are never candidates
  slot i  = forced[i] if given, else the best remaining candidate by z (ties: lower index); the candidates e with
            (z_c - z_e) / max(|z_e|, z_c) <= 2 * jitter_eps share a softmax of z; its value at the chosen expert is
            the slot's weight; the chosen expert leaves the candidates. A mix row has no meaning (refused).
"""
from dataclasses import dataclass, field

import torch

NEG = float("-inf")


@dataclass
class RouterRule:
    scoring: str = "softmax"        # softmax | sigmoid
    renorm: bool = False
    scale: float = 1.0              # routed_scaling_factor
    n_group: int = 1
    topk_group: int = 1
    group_score: str = "max"        # max | top2sum
    correction: dict = field(default_factory=dict)  # layer -> e_score_correction_bias (float64 tensor [E])
    jitter_eps: float = 0.0         # sparsemixer: router_jitter_noise


def route(rule, layer, z, k, patch_layer=None, positions=None, mix_override=None):
    """z: [T, E] (raw + biases, differentiable). patch_layer: the patch JSON of this layer (or None).
    mix_override: {position: row tensor} replacing the patch's mix rows (gradients w.r.t. theta).
    Returns idx [T, k] (long), weights [T, k], and per token the selection margins (for fixture robustness)."""
    T, E = z.shape
    positions = list(positions) if positions is not None else list(range(T))
    pl = patch_layer or {}
    mask = set(pl.get("mask", []))
    force = list(pl.get("force", []))
    mix = {}
    for key, row in (pl.get("mix") or {}).items():
        if key.endswith("+"):
            start = int(key[:-1])
            for p in range(T):
                if positions[p] >= start and positions[p] not in mix:
                    mix[positions[p]] = torch.tensor(row, dtype=torch.float64)
        else:
            mix[int(key)] = torch.tensor(row, dtype=torch.float64)
    mix.update(mix_override or {})
    if rule.scoring == "sparsemixer":
        assert not mix, "mix is not defined for the sparsemixer router"
        return sparsemixer(rule, z, k, mask, force)
    corr = rule.correction.get(layer)
    idx_out, w_out, margins = [], [], []
    for t in range(T):
        zt = z[t]
        if positions[t] in mix:
            s = mix[positions[t]].to(zt.dtype)
        elif rule.scoring == "softmax":
            zm = zt.clone()
            for e in mask:
                zm[e] = NEG
            s = torch.softmax(zm, dim=-1)
        else:
            s = torch.sigmoid(zt)
        keep = torch.ones(E, dtype=torch.bool)
        for e in mask:
            keep[e] = False
        s = torch.where(keep, s, torch.zeros_like(s))
        choice = (s + corr.to(s.dtype)) if (rule.scoring == "sigmoid" and corr is not None) else s
        c = [float(v) if keep[e] else NEG for e, v in enumerate(choice.detach().tolist())]
        allowed = [True] * E
        group_margin = float("inf")
        if rule.n_group > 1:
            size = E // rule.n_group
            gscores = []
            for g in range(rule.n_group):
                vals = sorted((c[e] for e in range(g * size, (g + 1) * size) if c[e] != NEG), reverse=True)
                if not vals:
                    gscores.append(NEG)
                elif rule.group_score == "max":
                    gscores.append(vals[0])
                else:
                    gscores.append(sum(vals[:2]))
            order = sorted(range(rule.n_group), key=lambda g: (-gscores[g], g))
            kept = set(order[:rule.topk_group])
            if rule.topk_group < rule.n_group:
                group_margin = gscores[order[rule.topk_group - 1]] - gscores[order[rule.topk_group]]
            allowed = [(e // size) in kept for e in range(E)]
        chosen = list(force)
        cand = sorted((e for e in range(E) if allowed[e] and c[e] != NEG and e not in chosen), key=lambda e: (-c[e], e))
        need = k - len(chosen)
        chosen += cand[:need]
        sel_margin = (c[cand[need - 1]] - c[cand[need]]) if 0 < need < len(cand) else float("inf")
        w = s[torch.tensor(chosen)]
        if rule.renorm:
            w = w / w.sum()
        w = w * rule.scale
        # Report by weight, descending; ties by lower expert index.
        wl = w.detach().tolist()
        order = sorted(range(k), key=lambda i: (-wl[i], chosen[i]))
        idx_out.append([chosen[i] for i in order])
        w_out.append(w[torch.tensor(order)])
        ws = sorted(wl, reverse=True)
        order_margin = min((ws[i] - ws[i + 1] for i in range(k - 1)), default=float("inf"))
        min_choice = min(c[e] for e in chosen[len(force):]) if need > 0 else float("inf")
        margins.append(dict(select=sel_margin, group=group_margin, order=order_margin, min_choice=min_choice))
    return torch.tensor(idx_out, dtype=torch.long), torch.stack(w_out), margins


def sparsemixer(rule, z, k, mask, force):
    """transformers' sparsemixer(training=False) generalised to k slots, masks and forced experts (module doc)."""
    T, E = z.shape
    idx_out, w_out, margins = [], [], []
    gap = 2 * rule.jitter_eps
    for t in range(T):
        zt = z[t]
        zl = zt.detach().tolist()
        out = set(mask)
        chosen, ws = [], []
        sel_margin, thr_margin = float("inf"), float("inf")
        for i in range(k):
            cand = sorted((e for e in range(E) if e not in out), key=lambda e: (-zl[e], e))
            if i < len(force):
                c = force[i]
            else:
                c = cand[0]
                if len(cand) > 1:
                    sel_margin = min(sel_margin, zl[cand[0]] - zl[cand[1]])
            keep = []
            for e in range(E):
                if e in out and e != c:
                    continue
                factor = max(abs(zl[e]), zl[c])
                ratio = (zl[c] - zl[e]) / factor if factor != 0 else 0.0
                if e != c:
                    thr_margin = min(thr_margin, abs(ratio - gap))
                if ratio <= gap:
                    keep.append(e)
            p = torch.softmax(zt[torch.tensor(keep)], dim=-1)
            ws.append(p[keep.index(c)] * rule.scale)
            chosen.append(c)
            out.add(c)
        w = torch.stack(ws)
        wl = w.detach().tolist()
        order = sorted(range(k), key=lambda i: (-wl[i], chosen[i]))
        idx_out.append([chosen[i] for i in order])
        w_out.append(w[torch.tensor(order)])
        ws_sorted = sorted(wl, reverse=True)
        # exact ties (both 1.0: a slot alone within its gap) are ordered by index on both sides
        order_margin = min((ws_sorted[i] - ws_sorted[i + 1] for i in range(k - 1)
                            if ws_sorted[i] != ws_sorted[i + 1]), default=float("inf"))
        margins.append(dict(select=min(sel_margin, thr_margin), group=float("inf"), order=order_margin,
                            min_choice=float("inf")))
    return torch.tensor(idx_out, dtype=torch.long), torch.stack(w_out), margins
