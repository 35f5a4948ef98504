"""Per-architecture facts the generator needs: a tiny config.json, transformers' class, where the routers and
experts sit in the module tree, the router rule as transformers implements it, and the Hub's per-expert names."""
import re

from route import RouterRule

HIDDEN, HEADS, LAYERS, EXPERTS, WIDTH, VOCAB, MAXPOS = 32, 4, 3, 8, 16, 96, 64

COMMON = {
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": HIDDEN,
    "initializer_range": 0.02,
    "max_position_embeddings": MAXPOS,
    "num_attention_heads": HEADS,
    "num_hidden_layers": LAYERS,
    "tie_word_embeddings": False,
    "use_cache": True,
    "vocab_size": VOCAB,
}


class Arch:
    model_type = None
    causal_lm = None
    # Hub (per-expert) names of one expert's projections, relative to the MoE block, and the block's Hub prefix.
    per_expert = ("experts.{e}.gate_proj.weight", "experts.{e}.up_proj.weight", "experts.{e}.down_proj.weight")
    hub_block = "mlp."

    def config(self, case):
        raise NotImplementedError

    def rule(self, config, model):
        raise NotImplementedError

    def moe_blocks(self, model):
        """layer -> (moe block module, router weight Parameter, experts module)."""
        out = {}
        for l, layer in enumerate(model.model.layers):
            mlp = layer.mlp
            if hasattr(mlp, "experts"):
                out[l] = (mlp, mlp.gate.weight, mlp.experts)
        return out

    def hub_name(self, name, layout):
        """transformers (v5, fused) state-dict name -> list of (hub name, slicer) for the per-expert layout."""
        return None


class Mixtral(Arch):
    model_type, causal_lm = "mixtral", "MixtralForCausalLM"
    per_expert = ("experts.{e}.w1.weight", "experts.{e}.w3.weight", "experts.{e}.w2.weight")
    hub_block = "block_sparse_moe."

    def config(self, case):
        return dict(COMMON, intermediate_size=WIDTH, num_key_value_heads=2, num_local_experts=EXPERTS,
                    num_experts_per_tok=case["k"], rms_norm_eps=1e-5, rope_theta=1000000.0,
                    router_aux_loss_coef=0.02, router_jitter_noise=0.0, sliding_window=None,
                    output_router_logits=False)

    def rule(self, config, model):
        return RouterRule(scoring="softmax", renorm=True)


class Olmoe(Arch):
    model_type, causal_lm = "olmoe", "OlmoeForCausalLM"

    def config(self, case):
        return dict(COMMON, attention_bias=False, clip_qkv=None, intermediate_size=WIDTH, norm_topk_prob=False,
                    num_experts=EXPERTS, num_experts_per_tok=case["k"], num_key_value_heads=HEADS, pad_token_id=0,
                    rms_norm_eps=1e-5, rope_scaling=None, rope_theta=10000.0, router_aux_loss_coef=0.01,
                    output_router_logits=False)

    def rule(self, config, model):
        return RouterRule(scoring="softmax", renorm=bool(config.norm_topk_prob))


class Qwen2Moe(Arch):
    model_type, causal_lm = "qwen2_moe", "Qwen2MoeForCausalLM"

    def config(self, case):
        return dict(COMMON, decoder_sparse_step=1, intermediate_size=48, max_window_layers=LAYERS,
                    mlp_only_layers=[1], moe_intermediate_size=WIDTH, norm_topk_prob=False, num_experts=EXPERTS,
                    num_experts_per_tok=case["k"], num_key_value_heads=2, qkv_bias=True, rms_norm_eps=1e-6,
                    rope_scaling=None, rope_theta=1000000.0, router_aux_loss_coef=0.001,
                    shared_expert_intermediate_size=24, sliding_window=None, use_sliding_window=False,
                    output_router_logits=False)

    def rule(self, config, model):
        return RouterRule(scoring="softmax", renorm=bool(config.norm_topk_prob))


class Qwen3Moe(Arch):
    model_type, causal_lm = "qwen3_moe", "Qwen3MoeForCausalLM"

    def config(self, case):
        return dict(COMMON, attention_bias=False, decoder_sparse_step=1, head_dim=16, intermediate_size=64,
                    max_window_layers=LAYERS, mlp_only_layers=[], moe_intermediate_size=WIDTH, norm_topk_prob=True,
                    num_experts=EXPERTS, num_experts_per_tok=case["k"], num_key_value_heads=2, rms_norm_eps=1e-6,
                    rope_scaling=None, rope_theta=1000000.0, router_aux_loss_coef=0.001, sliding_window=None,
                    use_sliding_window=False, output_router_logits=False)

    def rule(self, config, model):
        return RouterRule(scoring="softmax", renorm=bool(config.norm_topk_prob))


ARCHS = {a.model_type: a for a in (Mixtral(), Olmoe(), Qwen2Moe(), Qwen3Moe())}


def fused_to_hub(arch, state, num_experts):
    """transformers v5 state dict (fused experts) -> the Hub's per-expert tensors, in a stable order."""
    out = []
    pat = re.compile(r"^(model\.layers\.\d+\.)mlp\.(.*)$")
    for name, t in state:
        m = pat.match(name)
        if not m:
            out.append((name, t))
            continue
        pre, rest = m.groups()
        block = pre + arch.hub_block
        if rest == "experts.gate_up_proj":
            inter = t.shape[1] // 2
            for e in range(num_experts):
                out.append((block + arch.per_expert[0].format(e=e), t[e, :inter].contiguous()))
                out.append((block + arch.per_expert[1].format(e=e), t[e, inter:].contiguous()))
        elif rest == "experts.down_proj":
            for e in range(num_experts):
                out.append((block + arch.per_expert[2].format(e=e), t[e].contiguous()))
        elif rest.startswith("gate."):
            out.append((block + rest, t))
        else:
            out.append((name, t))  # dense MLP and shared experts keep their names
    return sorted(out, key=lambda nt: natural_key(nt[0]))


def natural_key(name):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
