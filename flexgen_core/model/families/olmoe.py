"""OLMoE: Mixtral's mixture with OLMo 2's q/k norm over the whole projection (and Llama's norms before
each branch), experts named mlp.experts.E.{gate,up,down}_proj, weights not renormalised by default.
clip_qkv is refused by name (the released checkpoints leave it off)."""
from __future__ import annotations

from . import mixtral, olmo2

MODEL_TYPES = ("olmoe",)
ARCHITECTURES = ("OlmoeForCausalLM",)
widths = mixtral.widths


def spec_from_config(config: dict, name: str = ""):
    if config.get("clip_qkv") is not None:
        raise ValueError(f"OLMoE with clip_qkv={config['clip_qkv']} is not supported (only clip_qkv null)")
    return mixtral.spec_from_config(config, name, family="olmoe", experts="num_experts",
                                    expert_ffn="intermediate_size", norm_topk_prob=False)


class DecoderLayer(mixtral.DecoderLayer):
    QK_NORM = olmo2.DecoderLayer.QK_NORM
    MOE, EXPERT = "mlp", ("gate_proj", "up_proj", "down_proj")


def build_layers(spec):
    return mixtral.build_layers(spec, DecoderLayer)
