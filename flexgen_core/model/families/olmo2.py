"""OLMo 2: Llama with its RMSNorms after the attention and MLP branches instead of before them, and
an RMSNorm on q and on k over the whole projection before rotary."""
from __future__ import annotations

from . import llama

MODEL_TYPES = ("olmo2",)
ARCHITECTURES = ("Olmo2ForCausalLM",)
widths = llama.widths


class DecoderLayer(llama.DecoderLayer):
    NORMS = {"pre_attention": None, "post_attention": "post_attention_layernorm",
             "pre_mlp": None, "post_mlp": "post_feedforward_layernorm"}
    QK_NORM = "projection"


def spec_from_config(config: dict, name: str = ""):
    return llama.spec_from_config(config, name, family="olmo2")


def build_layers(spec):
    return llama.build_layers(spec, DecoderLayer)
