"""Qwen3 (dense): Llama with an RMSNorm on q and on k over each head before rotary, a head_dim of its
own and no q/k/v bias by default (transformers' modular_qwen3.py says the same difference)."""
from __future__ import annotations

from . import llama

MODEL_TYPES = ("qwen3",)
ARCHITECTURES = ("Qwen3ForCausalLM",)
widths = llama.widths


class DecoderLayer(llama.DecoderLayer):
    QK_NORM = "head"


def spec_from_config(config: dict, name: str = ""):
    return llama.spec_from_config({"attention_bias": False, **config}, name, family="qwen3")


def build_layers(spec):
    return llama.build_layers(spec, DecoderLayer)
