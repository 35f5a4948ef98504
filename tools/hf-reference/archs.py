"""Per-architecture facts the generator needs: a tiny config.json, transformers' class, where the routers and
experts sit in the module tree, the router rule as transformers implements it, and the Hub's per-expert names."""
import math
import re

import numpy as np
import torch

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
    hub_renames = {}  # v5 name under the block -> the Hub's (phimoe: router.weight -> gate.weight)

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

    def fix_reference(self, config, model):
        """Workarounds of transformers bugs applied to the reference model; returns what was done."""
        return []

    def hook_routing(self, tap, l, block, experts):
        """Calls tap.at_experts(l, (hidden, indices, weights)) where transformers hands the routing to the experts;
        a non-None return replaces those arguments. Default: a forward pre-hook on the experts module."""
        experts.register_forward_pre_hook(lambda mod, args, l=l: tap.at_experts(l, args))


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


class DeepseekV2(Arch):
    """Shapes follow DeepSeek-V2-Lite's config, shrunk: MLA (q_lora_rank null or set), YaRN with mscale,
    a dense first layer, shared experts, greedy or group-limited routing, routed_scaling_factor."""
    model_type, causal_lm = "deepseek_v2", "DeepseekV2ForCausalLM"

    def config(self, case):
        cfg = dict(COMMON, first_k_dense_replace=1, intermediate_size=48, kv_lora_rank=16, max_position_embeddings=64,
                   moe_intermediate_size=WIDTH, moe_layer_freq=1, n_routed_experts=EXPERTS, n_shared_experts=2,
                   norm_topk_prob=False, num_experts_per_tok=case["k"], num_key_value_heads=HEADS,
                   q_lora_rank=case.get("q_lora_rank"), qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12,
                   rms_norm_eps=1e-6, rope_theta=10000.0, routed_scaling_factor=1.25, scoring_func="softmax",
                   topk_method=case.get("topk_method", "greedy"), n_group=case.get("n_group", 1),
                   topk_group=case.get("topk_group", 1), attention_bias=False,
                   rope_scaling={"beta_fast": 32, "beta_slow": 1, "factor": 4, "mscale": 0.707,
                                 "mscale_all_dim": 0.707, "original_max_position_embeddings": 16, "type": "yarn"})
        return cfg

    def rule(self, config, model):
        grouped = config.topk_method == "group_limited_greedy"
        return RouterRule(scoring="softmax", renorm=False, scale=config.routed_scaling_factor,
                          n_group=config.n_group if grouped else 1, topk_group=config.topk_group if grouped else 1,
                          group_score="max")

    def fix_reference(self, config, model):
        """Two transformers 5.0-5.2 deviations from DeepSeek's own code, fixed in the reference (not copied):
        group_limited_greedy reads self.num_experts, which DeepseekV2Moe never sets (AttributeError); and under
        YaRN DeepseekV2Attention omits DeepSeek's score scale mscale(factor, mscale_all_dim)^2, which DeepSeek's
        modeling code and transformers' own deepseek_v3 apply."""
        notes = []
        for layer in model.model.layers:
            if hasattr(layer.mlp, "experts"):
                layer.mlp.num_experts = config.n_routed_experts
        notes.append("DeepseekV2Moe.num_experts = n_routed_experts (group_limited_greedy)")
        rp = config.rope_parameters
        if rp.get("rope_type", "default") == "yarn" and rp.get("mscale_all_dim"):
            m = 0.1 * rp["mscale_all_dim"] * math.log(rp["factor"]) + 1.0
            for layer in model.model.layers:
                layer.self_attn.scaling = layer.self_attn.scaling * m * m
            notes.append(f"attention scaling x mscale^2 = {m * m:.6f} (YaRN)")
        return notes


class DeepseekV3(Arch):
    """Sigmoid router with e_score_correction_bias, group-limited top-k (sum of each group's top two),
    norm_topk_prob, routed_scaling_factor; MLA with q_lora_rank, YaRN optional (Moonlight: none)."""
    model_type, causal_lm = "deepseek_v3", "DeepseekV3ForCausalLM"

    def config(self, case):
        cfg = dict(COMMON, first_k_dense_replace=1, intermediate_size=48, kv_lora_rank=16, max_position_embeddings=64,
                   moe_intermediate_size=WIDTH, moe_layer_freq=1, n_routed_experts=EXPERTS, n_shared_experts=1,
                   norm_topk_prob=True, num_experts_per_tok=case["k"], num_key_value_heads=HEADS,
                   q_lora_rank=case.get("q_lora_rank", 24), qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12,
                   rms_norm_eps=1e-6, rope_theta=10000.0, routed_scaling_factor=2.5, scoring_func="sigmoid",
                   topk_method="noaux_tc", n_group=case.get("n_group", 4), topk_group=case.get("topk_group", 2),
                   attention_bias=False, rope_interleave=True, num_nextn_predict_layers=0)
        if case.get("yarn"):
            cfg["rope_scaling"] = {"beta_fast": 32, "beta_slow": 1, "factor": 4, "mscale": 1.0, "mscale_all_dim": 1.0,
                                   "original_max_position_embeddings": 16, "type": "yarn"}
        return cfg

    def rule(self, config, model):
        corr = {}
        for l, layer in enumerate(model.model.layers):
            if hasattr(layer.mlp, "experts"):
                corr[l] = layer.mlp.gate.e_score_correction_bias
        return RouterRule(scoring="sigmoid", renorm=bool(config.norm_topk_prob), scale=config.routed_scaling_factor,
                          n_group=config.n_group, topk_group=config.topk_group, group_score="top2sum",
                          correction=corr)


class Glm4Moe(DeepseekV3):
    """The DeepSeek-V3 router with GLM attention: partial RoPE (rotate_half), optional per-head QK-norm, q/k/v
    biases."""
    model_type, causal_lm = "glm4_moe", "Glm4MoeForCausalLM"

    def config(self, case):
        return dict(COMMON, first_k_dense_replace=1, head_dim=16, intermediate_size=48, moe_intermediate_size=WIDTH,
                    n_routed_experts=EXPERTS, n_shared_experts=1, norm_topk_prob=True, num_experts_per_tok=case["k"],
                    num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0, partial_rotary_factor=0.5,
                    routed_scaling_factor=1.5, n_group=case.get("n_group", 1), topk_group=case.get("topk_group", 1),
                    attention_bias=True, use_qk_norm=case.get("qk_norm", True))


class Phimoe(Arch):
    """Phi-3.5-MoE shrunk: LayerNorm with bias, q/k/v/o biases, LM head bias, LongRoPE (short or long factors by the
    call's length), the sparsemixer router (router_jitter_noise raised from 0.01 so that slots share their softmax
    with neighbours and the router gradient is not zero)."""
    model_type, causal_lm = "phimoe", "PhimoeForCausalLM"
    per_expert = ("experts.{e}.w1.weight", "experts.{e}.w3.weight", "experts.{e}.w2.weight")
    hub_block = "block_sparse_moe."
    hub_renames = {"router.weight": "gate.weight"}

    def config(self, case):
        half = (HIDDEN // HEADS) // 2
        rng = [1.0 + 0.37 * i for i in range(half)]
        return dict(COMMON, intermediate_size=WIDTH, num_key_value_heads=2, num_local_experts=EXPERTS,
                    num_experts_per_tok=2, rms_norm_eps=1e-5, router_jitter_noise=case.get("jitter", 0.2),
                    input_jitter_noise=0.0, attention_bias=True, lm_head_bias=True, sliding_window=None,
                    router_aux_loss_coef=0.0, output_router_logits=False, rope_theta=10000.0,
                    original_max_position_embeddings=case["orig_max"],
                    rope_scaling={"type": "longrope", "original_max_position_embeddings": case["orig_max"],
                                  "short_factor": [round(1.0 + 0.05 * i, 4) for i in range(half)],
                                  "long_factor": [round(x, 4) for x in rng],
                                  "short_mscale": 1.1, "long_mscale": 1.243})

    def rule(self, config, model):
        return RouterRule(scoring="sparsemixer", jitter_eps=config.router_jitter_noise)

    def moe_blocks(self, model):
        return {l: (layer.mlp, layer.mlp.router.weight, layer.mlp.experts) for l, layer in enumerate(model.model.layers)}


class GraniteMoe(Arch):
    """GraniteMoE shrunk: top-k of the logits then softmax over the k, the four multipliers, fused experts
    (input_linear / output_linear, the only layout transformers and the Hub use)."""
    model_type, causal_lm = "granitemoe", "GraniteMoeForCausalLM"

    def config(self, case):
        return dict(COMMON, intermediate_size=WIDTH, num_key_value_heads=2, num_local_experts=EXPERTS,
                    num_experts_per_tok=case["k"], rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=False,
                    embedding_multiplier=3.0, attention_multiplier=0.2, residual_multiplier=0.6,
                    logits_scaling=0.5, router_aux_loss_coef=0.0, output_router_logits=False)

    def rule(self, config, model):
        return RouterRule(scoring="softmax", renorm=True)

    def moe_blocks(self, model):
        return {l: (layer.block_sparse_moe, layer.block_sparse_moe.router.layer.weight, layer.block_sparse_moe.router)
                for l, layer in enumerate(model.model.layers)}

    def hook_routing(self, tap, l, block, router):
        """GraniteMoeTopKGating sorts the (token, slot) pairs by expert before the experts run: the routing is taken
        (and, for mask / force / mix, replaced) at its top-k, and the sorted outputs rebuilt exactly as its forward
        builds them; on plain runs the rebuilt outputs are asserted equal to transformers' own."""
        orig = router.forward

        def forward(hidden_states):
            want = orig(hidden_states) if not tap.override else None
            logits = router.layer(hidden_states).float()
            top_k_logits, top_k_indices = logits.topk(router.top_k, dim=1)
            top_k_gates = torch.softmax(top_k_logits, dim=1).type_as(hidden_states)
            rep = tap.at_experts(l, (hidden_states, top_k_indices, top_k_gates))
            if rep is not None:
                _, top_k_indices, top_k_gates = rep
            zeros = torch.zeros([top_k_gates.size(0), router.num_experts], dtype=top_k_gates.dtype)
            expert_size = zeros.scatter(1, top_k_indices, 1).long().sum(0).tolist()
            _, index_sorted_experts = top_k_indices.flatten().sort(0)
            batch_index = index_sorted_experts.div(router.top_k, rounding_mode="trunc")
            batch_gates = top_k_gates.flatten()[index_sorted_experts]
            got = (index_sorted_experts, batch_index, batch_gates, expert_size, logits)
            if want is not None:
                assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1]) and want[3] == got[3]
                assert (want[2] - got[2]).abs().max().item() == 0.0
            return got

        router.forward = forward


class GptOss(Arch):
    """Router with a bias (top-k of the logits, softmax over the k), experts [E, H, 2I] with gate/up interleaved,
    biases and the clamped SwiGLU; attention sinks, q/k/v/o biases, sliding and full layers, YaRN (truncate off)."""
    model_type, causal_lm = "gpt_oss", "GptOssForCausalLM"
    WIDTH = 32  # MXFP4 blocks of 32 along every input width (hidden and intermediate)

    def config(self, case):
        return dict(COMMON, head_dim=16, intermediate_size=self.WIDTH, num_local_experts=EXPERTS,
                    num_experts_per_tok=case["k"], num_key_value_heads=2, rms_norm_eps=1e-5, sliding_window=4,
                    layer_types=["sliding_attention", "full_attention", "sliding_attention"][:LAYERS],
                    rope_theta=150000.0, swiglu_limit=7.0, attention_bias=True, router_aux_loss_coef=0.9,
                    output_router_logits=False,
                    rope_scaling={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                  "truncate": False, "original_max_position_embeddings": 16})

    def rule(self, config, model):
        return RouterRule(scoring="softmax", renorm=True)

    def moe_blocks(self, model):
        return {l: (layer.mlp, layer.mlp.router.weight, layer.mlp.experts) for l, layer in enumerate(model.model.layers)}

    def load_streaming(self, model, lazy):
        """Loads a full-size checkpoint into the float32 model tensor by tensor (MXFP4 experts dequantised one expert
        at a time straight into the [E, in, out] parameter): peak memory is the model plus one tensor."""
        own = model.state_dict()
        seen = set()
        with torch.no_grad():
            for name in lazy.where:
                if name.endswith("_scales"):
                    continue
                if name.endswith("_blocks"):
                    base = name[:-len("_blocks")]
                    blocks, scales = lazy.raw(name), lazy.raw(base + "_scales")
                    for e in range(blocks.shape[0]):
                        b = torch.from_numpy(np.array(blocks[e:e + 1]))
                        s = torch.from_numpy(np.array(scales[e:e + 1]))
                        own[base][e].copy_(mxfp4_dequantise(b, s, dtype=torch.float32)[0].t())
                    seen.add(base)
                else:
                    own[name].copy_(lazy.tensor(name))
                    seen.add(name)
        missing = [n for n in own if n not in seen and not n.endswith("inv_freq")]
        assert not missing, missing[:5]

    def to_state(self, tensors, E):
        """Checkpoint tensors -> the state dict; MXFP4 *_blocks + *_scales dequantised as transformers' mxfp4.py does."""
        out = {}
        for name, (_, t) in tensors.items():
            if name.endswith("_scales"):
                continue
            if name.endswith("_blocks"):
                base = name[:-len("_blocks")]
                out[base] = mxfp4_dequantise(t, tensors[base + "_scales"][1], dtype=tensors[base + "_bias"][1].dtype
                                             ).transpose(1, 2).contiguous()
            else:
                out[name] = t
        return out


class Llama4(Arch):
    """Llama 4 text (Llama4ForCausalLM): sigmoid of the top-k router logits scaling each chosen expert's INPUT, a
    shared expert, experts [E, H, 2I] / [E, I, H] (transposed, gate then up), dense layers (intermediate_size_mlp),
    NoPE layers with temperature tuning (floor_scale small enough to act within the prompt), weightless L2 QK-norm
    and chunked attention on the RoPE layers (chunk shorter than the prompt), llama3 RoPE scaling (one frequency in
    each band: kept, smoothed, divided). Four layers: RoPE/MoE, RoPE/dense, NoPE/MoE, RoPE/MoE."""
    model_type, causal_lm = "llama4_text", "Llama4ForCausalLM"
    text_model_type = "llama4_text"

    def config(self, case):
        return dict(COMMON, num_hidden_layers=4, head_dim=8, intermediate_size=WIDTH, intermediate_size_mlp=48,
                    num_key_value_heads=2, num_local_experts=EXPERTS, num_experts_per_tok=case["k"], rms_norm_eps=1e-5,
                    moe_layers=[0, 2, 3], no_rope_layers=[1, 1, 0, 1], attention_chunk_size=case["chunk"],
                    use_qk_norm=True, attn_temperature_tuning=True, floor_scale=4, attn_scale=0.5,
                    router_aux_loss_coef=0.0, router_jitter_noise=0.0, output_router_logits=False, pad_token_id=None,
                    rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 16})

    def rule(self, config, model):
        return RouterRule(scoring="sigmoid", renorm=False)

    def moe_blocks(self, model):
        return {l: (layer.feed_forward, layer.feed_forward.router.weight, layer.feed_forward)
                for l, layer in enumerate(model.model.layers) if layer.is_moe_layer}

    def hook_routing(self, tap, l, block, _):
        """Llama4TextMoe hands its experts the inputs already scaled (every expert, zero where not chosen), never
        (indices, weights): its forward is rebuilt around the top-k, where the routing is taken (and for mask / force
        / mix replaced), exactly as transformers builds it; on plain runs the output is asserted equal to its own (to 1e-12)."""
        orig, router_forward = block.forward, block.router.forward

        def router(hidden_states):
            # The tap adds its float64 bias to the logits; in a float32 run that promotes them, and Llama4TextMoe does
            # not cast the scores back before scaling its input: cast them to the input's dtype (a no-op in float64).
            scores, logits = router_forward(hidden_states)
            return scores.to(hidden_states.dtype), logits

        block.router.forward = router

        def forward(hidden_states):
            want = orig(hidden_states) if not tap.override else None
            hs = hidden_states.reshape(-1, block.hidden_dim)
            _, router_logits = block.router(hs)  # its F.linear: the tap records the logits (and adds its biases)
            top_value, top_index = torch.topk(router_logits, block.top_k, dim=1)
            top_weight = torch.sigmoid(top_value.float()).to(router_logits.dtype)
            rep = tap.at_experts(l, (hs, top_index, top_weight))
            if rep is not None:
                _, top_index, top_weight = rep
            scores = torch.zeros(router_logits.shape, dtype=hs.dtype).scatter(1, top_index, top_weight.to(hs.dtype))
            routed_in = hs.repeat(scores.shape[1], 1) * scores.transpose(0, 1).reshape(-1, 1)
            routed_out = block.experts(routed_in)
            out = block.shared_expert(hs)
            out = out + routed_out.reshape(scores.shape[1], -1, routed_out.shape[-1]).sum(dim=0)
            if want is not None:  # equal up to float64 summation order
                assert (want[0] - out).abs().max().item() <= 1e-12 * max(1.0, want[0].abs().max().item())
                assert torch.equal(want[1], router_logits)
            return out, router_logits

        block.forward = forward

    PREFIX = ""

    def text_dict(self, cfg_dict):
        """The config dict transformers builds Llama4ForCausalLM from (check_model.py)."""
        return cfg_dict

    def load_streaming(self, model, lazy):
        """Loads a full-size checkpoint into the float32 model tensor by tensor, each in blocks of leading rows (the
        stacked experts one expert at a time, the 202048-row embedding and LM head 8192 rows at a time: peak memory is
        the model plus one block); tensors outside the text model (the vision tower) are skipped."""
        own = model.state_dict()
        seen = set()
        names = list(lazy.where)
        with torch.no_grad():
            for name in names:
                dt, shape, raw = lazy.where[name]
                if not name.startswith(self.PREFIX):
                    continue
                key = name[len(self.PREFIX):]
                rows = raw.reshape(shape[0], -1)
                step = 1 if len(shape) == 3 else 8192
                for r in range(0, shape[0], step):
                    block = rows[r:r + step]
                    lazy.where["_block"] = (dt, [block.shape[0]] + list(shape[1:]), block.reshape(-1))
                    own[key][r:r + step].copy_(lazy.tensor("_block"))
                del lazy.where["_block"]
                seen.add(key)
        missing = [n for n in own if n not in seen and not n.endswith("inv_freq")]
        assert not missing, missing[:5]


class Llama4Nested(Llama4):
    """model_type llama4 (Llama4ForConditionalGeneration's checkpoint): the text config under text_config, the text
    weights under language_model.*, a vision tower and projector beside them (random tensors the engine must leave
    alone). The reference is Llama4ForCausalLM on text_config, the language_model that Llama4ForConditionalGeneration
    runs for text without pixel_values. Defaults exercised: interleave_moe_layer_step 2 (MoE layers 1, 3) and
    no_rope_layer_interval 4 (layer 3 NoPE), layer_types derived."""
    model_type = "llama4"

    def config(self, case):
        cfg = super().config(case)
        for key in ("moe_layers", "no_rope_layers"):
            del cfg[key]
        cfg["interleave_moe_layer_step"] = 2
        return cfg

    PREFIX = "language_model."

    def text_dict(self, cfg_dict):
        return dict(cfg_dict["text_config"], model_type="llama4_text")

    VISION = [("multi_modal_projector.linear_1.weight", (32, 24)),
              ("vision_model.patch_embedding.linear.weight", (24, 48)),
              ("vision_model.layernorm_pre.weight", (24,))]

    def wrap_checkpoint(self, files, rng):
        """Text tensors under language_model.*, then the vision side (BF16 like the release)."""
        out = [("language_model." + n, t, sd) for n, t, sd in files]
        for name, shape in self.VISION:
            v = torch.from_numpy(rng.standard_normal(shape) * 0.02).to(torch.bfloat16).to(torch.float64)
            out.append((name, v, "BF16"))
        return sorted(out, key=lambda nt: natural_key(nt[0]))

    def wrap_config(self, text_cfg, dtype_name):
        """config.json as Llama-4-Scout ships it: the wrapper's fields, text_config, a (tiny) vision_config."""
        text = dict(text_cfg, model_type="llama4_text")
        vision = {"attention_dropout": 0.0, "hidden_act": "gelu", "hidden_size": 24, "image_size": 16,
                  "intermediate_size": 48, "model_type": "llama4_vision_model", "multi_modal_projector_bias": False,
                  "norm_eps": 1e-5, "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 1,
                  "patch_size": 4, "pixel_shuffle_ratio": 0.5, "projector_dropout": 0.0, "projector_input_dim": 24,
                  "projector_output_dim": 32, "rope_theta": 10000, "vision_feature_layer": -1,
                  "vision_feature_select_strategy": "default", "vision_output_dim": 24}
        return {"architectures": ["Llama4ForConditionalGeneration"], "boi_token_index": 90, "eoi_token_index": 91,
                "image_token_index": 92, "model_type": "llama4", "text_config": dict(sorted(text.items())),
                "tie_word_embeddings": False, "torch_dtype": dtype_name, "transformers_version": "4.51.0",
                "vision_config": vision}


FP4_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def mxfp4_dequantise(blocks, scales, dtype=torch.float64):
    """[E, ..., G, 16] bytes (low nibble first) and [E, ..., G] E8M0 exponents -> [E, ..., G * 32], one expert at a
    time (a full-size layer would not fit in memory as int64 indices)."""
    lut = torch.tensor(FP4_VALUES, dtype=dtype)
    out = torch.empty(*blocks.shape[:-2], blocks.shape[-2] * 32, dtype=dtype)
    for e in range(blocks.shape[0]):
        b = blocks[e].to(torch.int64)
        vals = torch.stack([lut[b & 0xF], lut[b >> 4]], -1).reshape(*b.shape[:-1], 32)
        vals = vals * torch.pow(2.0, scales[e].to(torch.float64) - 127).to(dtype)[..., None]
        out[e] = vals.reshape(*b.shape[:-2], b.shape[-2] * 32)
    return out


def mxfp4_quantise(w):
    """w [..., rows, cols] float64 (cols % 32 == 0) -> (blocks uint8-valued int64 [..., rows, cols/32, 16], scales
    [..., rows, cols/32], the dequantised values): per block of 32 the power of two that brings its largest |value|
    to at most 6, each value rounded to the nearest FP4 (E2M1) value (ties to the lower magnitude)."""
    *lead, cols = w.shape
    g = w.reshape(*lead, cols // 32, 32)
    amax = g.abs().amax(-1)
    e = torch.ceil(torch.log2(torch.clamp(amax, min=1e-30) / 6.0))
    e = torch.where(amax > 0, e, torch.zeros_like(e)).clamp(-127, 127)
    x = g / torch.pow(2.0, e)[..., None]
    mags = torch.tensor(FP4_VALUES[:8], dtype=torch.float64)
    idx = (x.abs()[..., None] - mags).abs().argmin(-1)  # first (lower) magnitude on ties
    code = idx + 8 * ((x < 0) & (idx > 0)).to(torch.int64)
    deq = torch.tensor(FP4_VALUES, dtype=torch.float64)[code] * torch.pow(2.0, e)[..., None]
    pairs = code.reshape(*lead, cols // 32, 16, 2)
    blocks = pairs[..., 0] | (pairs[..., 1] << 4)
    return blocks, (e + 127).to(torch.int64), deq.reshape(*lead, cols)


ARCHS = {a.model_type: a for a in (Mixtral(), Olmoe(), Qwen2Moe(), Qwen3Moe(), DeepseekV2(), DeepseekV3(), Glm4Moe(),
                                   Phimoe(), GraniteMoe(), GptOss(), Llama4(), Llama4Nested())}


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
        elif rest in arch.hub_renames:
            out.append((block + arch.hub_renames[rest], t))
        elif rest.startswith("gate."):
            out.append((block + rest, t))
        else:
            out.append((name, t))  # dense MLP and shared experts keep their names
    return sorted(out, key=lambda nt: natural_key(nt[0]))


def hub_to_state(arch, tensors, E):
    """{hub name: (dtype, tensor)} (per-expert, or v5 fused) -> transformers 5.2's state dict {name: tensor}."""
    if hasattr(arch, "to_state"):
        return arch.to_state(tensors, E)
    out, experts = {}, {}
    for name, (_, t) in tensors.items():
        parts = name.split(".")
        if "experts" in parts and parts[parts.index("experts") + 1].isdigit():
            i = parts.index("experts")
            block = ".".join(parts[:i]).replace(arch.hub_block.rstrip("."), "mlp")
            experts.setdefault(block, {})[(int(parts[i + 1]), ".".join(parts[i + 2:]))] = t
            continue
        out[name.replace("." + arch.hub_block, ".mlp.")] = t
    g, u, d = (n for n in arch.per_expert)
    for block, ex in experts.items():
        gate = torch.stack([ex[(e, g.split(".", 2)[2])] for e in range(E)])
        up = torch.stack([ex[(e, u.split(".", 2)[2])] for e in range(E)])
        down = torch.stack([ex[(e, d.split(".", 2)[2])] for e in range(E)])
        out[block + ".experts.gate_up_proj"] = torch.cat([gate, up], 1)
        out[block + ".experts.down_proj"] = down
    return out


def natural_key(name):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
