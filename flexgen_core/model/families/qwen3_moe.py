"""Qwen3-MoE: Mixtral's mixture with Qwen3's attention (q and k normalised per head), experts named
mlp.experts.E.{gate,up,down}_proj of moe_intermediate_size, and the chosen experts' weights
renormalised only where norm_topk_prob says so."""
from __future__ import annotations

from . import mixtral, qwen3

MODEL_TYPES = ("qwen3_moe",)
ARCHITECTURES = ("Qwen3MoeForCausalLM",)
widths = mixtral.widths


def spec_from_config(config: dict, name: str = ""):
    return mixtral.spec_from_config({"attention_bias": False, **config}, name, family="qwen3_moe",
                                    experts="num_experts", expert_ffn="moe_intermediate_size", norm_topk_prob=False)


class DecoderLayer(mixtral.DecoderLayer):
    QK_NORM = qwen3.DecoderLayer.QK_NORM
    MOE, EXPERT = "mlp", ("gate_proj", "up_proj", "down_proj")


def build_layers(spec):
    return mixtral.build_layers(spec, DecoderLayer)
