"""Gemma 2: Llama with four RMSNorms per layer (before and after attention and MLP) that scale by
1 + weight, a GeGLU MLP (tanh gelu), embeddings scaled by sqrt(hidden), attention scores scaled by
query_pre_attn_scalar^-0.5 and capped by tanh, capped final logits, a tied head, and layers that
alternate between a sliding window and global attention (transformers' modular_gemma2.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from ..attention import soft_cap
from . import llama

MODEL_TYPES = ("gemma2",)
ARCHITECTURES = ("Gemma2ForCausalLM",)
widths = llama.widths


@dataclass(frozen=True)
class GemmaSettings(llama.LlamaSettings):
    query_pre_attn_scalar: float = 256.0
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None


def spec_from_config(config: dict, name: str = "", family: str = "gemma2", defaults: dict | None = None):
    """Gemma 2's defaults under the config's own fields; `defaults` are a family extending it's."""
    if config.get("use_bidirectional_attention"):
        raise ValueError("use_bidirectional_attention (Gemma's encoder variants) is not supported: "
                         "only causal language models are")
    n = config["num_hidden_layers"]
    config = {"head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 4096, "tie_word_embeddings": True,
              "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
              "layer_types": ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)],
              **(defaults or {}), **config}
    config["hidden_act"] = config.get("hidden_activation") or config.get("hidden_act") or "gelu_pytorch_tanh"
    spec = llama.spec_from_config(config, name, family=family)
    return replace(spec, arch=GemmaSettings(**asdict(spec.arch),
                                            query_pre_attn_scalar=float(config["query_pre_attn_scalar"]),
                                            attn_logit_softcapping=config["attn_logit_softcapping"],
                                            final_logit_softcapping=config["final_logit_softcapping"]))


class Embedding(llama.Embedding):
    def forward(self, token_ids, w, ctx):
        h = super().forward(token_ids, w, ctx)
        return h * torch.tensor(self.spec.hidden_size ** 0.5, dtype=h.dtype)  # rounded to the dtype, as HF does


class DecoderLayer(llama.DecoderLayer):
    NORMS = {"pre_attention": "input_layernorm", "post_attention": "post_attention_layernorm",
             "pre_mlp": "pre_feedforward_layernorm", "post_mlp": "post_feedforward_layernorm"}
    NORM_OFFSET = 1.0

    def __init__(self, spec, index, rope):
        super().__init__(spec, index, rope)
        self.scale = spec.arch.query_pre_attn_scalar ** -0.5
        self.softcap = spec.arch.attn_logit_softcapping


class Head(llama.Head):
    NORM_OFFSET = 1.0

    def forward(self, h, w, ctx):
        return soft_cap(super().forward(h, w, ctx), self.spec.arch.final_logit_softcapping)


def build_layers(spec, decoder=DecoderLayer, rotary=None):
    return llama.build_layers(spec, decoder, Embedding, Head, rotary)
