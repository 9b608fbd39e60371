"""GPT-NeoX / Pythia: Llama's rotary attention, over a share of each head (rotary_pct), with q, k and
v fused in one projection laid out per head; LayerNorms with bias, biased projections, a plain
(ungated) MLP, an untied head (embed_out), and attention and MLP either side by side on the same
input (use_parallel_residual) or one after the other."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..layers import WeightSpec, activation, linear_specs, selected_rows
from ..spec import ModelSpec, hf_fields
from . import llama
from .llama import Rotary, rope_config

MODEL_TYPES = ("gpt_neox",)
ARCHITECTURES = ("GPTNeoXForCausalLM",)
PREFIX = "gpt_neox."


@dataclass(frozen=True)
class NeoXSettings:
    rope_theta: float = 10000.0
    rope_scaling: tuple = ()
    partial_rotary: float = 0.25
    layer_norm_eps: float = 1e-5
    parallel_residual: bool = True
    attention_bias: bool = True


def spec_from_config(config: dict, name: str = "") -> ModelSpec:
    act = config.get("hidden_act", "gelu")
    activation(act)
    rope = dict(config)  # older configs: rotary_emb_base and rotary_pct
    if "rotary_emb_base" in config:
        rope.setdefault("rope_theta", config["rotary_emb_base"])
    rope.setdefault("partial_rotary_factor", config.get("rotary_pct", 0.25))
    theta, scaling, partial = rope_config(rope)
    return ModelSpec(
        family="gpt_neox",
        **hf_fields(config, name, tie=False, eos=0),
        num_kv_heads=config["num_attention_heads"],
        ffn_size=config["intermediate_size"],
        hidden_act=act,
        arch=NeoXSettings(rope_theta=theta, rope_scaling=tuple(sorted(scaling.items())), partial_rotary=partial,
                          layer_norm_eps=config.get("layer_norm_eps", 1e-5),
                          parallel_residual=config.get("use_parallel_residual", True),
                          attention_bias=config.get("attention_bias", True)),
    )


def build_layers(spec: ModelSpec) -> list:
    rope = Rotary.of(spec)
    return [Embedding(spec)] + [DecoderLayer(spec, i, rope) for i in range(spec.num_layers)] + [Head(spec)]


def _layer_norm(x, w, name: str, eps: float):
    return F.layer_norm(x, (x.shape[-1],), w[f"{name}.weight"], w[f"{name}.bias"], eps)


class Embedding(llama.Embedding):
    TABLE = PREFIX + "embed_in.weight"


class DecoderLayer:
    kind = "decoder"

    def __init__(self, spec: ModelSpec, index: int, rope: Rotary):
        self.spec, self.index, self.rope = spec, index, rope
        self.name = f"layer{index}"
        self.p = f"{PREFIX}layers.{index}."
        self.act = activation(spec.hidden_act or "gelu")

    def weight_specs(self):
        s, p, h, f = self.spec, self.p, self.spec.hidden_size, self.spec.ffn_size
        specs = []
        for norm in ("input_layernorm", "post_attention_layernorm"):
            specs += [WeightSpec(f"{p}{norm}.weight", (h,), "ones"), WeightSpec(f"{p}{norm}.bias", (h,), "zeros")]
        attention = [("attention.query_key_value", (3 * h, h)), ("attention.dense", (h, h))]
        mlp = [("mlp.dense_h_to_4h", (f, h)), ("mlp.dense_4h_to_h", (h, f))]
        return specs + linear_specs(p, attention, s.arch.attention_bias) + linear_specs(p, mlp, True)

    def _linear(self, x, w, name):
        return F.linear(x, w[f"{self.p}{name}.weight"], w.get(f"{self.p}{name}.bias"))

    def _norm(self, x, w, name):
        return _layer_norm(x, w, self.p + name, self.spec.arch.layer_norm_eps)

    def forward(self, h, w, ctx):
        attn = self._attention(self._norm(h, w, "input_layernorm"), w, ctx)
        if self.spec.arch.parallel_residual:  # both branches read the layer's input
            return h + attn + self._mlp(self._norm(h, w, "post_attention_layernorm"), w)
        h = h + attn
        return h + self._mlp(self._norm(h, w, "post_attention_layernorm"), w)

    def _attention(self, x, w, ctx):
        s = self.spec
        b, n, _ = x.shape
        # per head: its query, key and value side by side
        qkv = self._linear(x, w, "attention.query_key_value").view(b, n, s.num_heads, 3 * s.head_dim).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        cos, sin = self.rope.cos_sin(ctx.positions, q.dtype)
        q, k = Rotary.apply(q, cos, sin), Rotary.apply(k, cos, sin)
        attn = ctx.attend(q, k, v.contiguous()).transpose(1, 2).reshape(b, n, s.hidden_size)
        return self._linear(attn, w, "attention.dense")

    def _mlp(self, x, w):
        return self._linear(self.act(self._linear(x, w, "mlp.dense_h_to_4h")), w, "mlp.dense_4h_to_h")


class Head:
    kind = "head"
    name = "head"

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.lm_head = PREFIX + "embed_in.weight" if spec.tie_embeddings else "embed_out.weight"

    def weight_specs(self):
        h = self.spec.hidden_size
        return [WeightSpec(PREFIX + "final_layer_norm.weight", (h,), "ones"),
                WeightSpec(PREFIX + "final_layer_norm.bias", (h,), "zeros"),
                WeightSpec(self.lm_head, (self.spec.vocab_size, h))]

    def forward(self, h, w, ctx):
        x = _layer_norm(selected_rows(h, ctx.select), w, PREFIX + "final_layer_norm", self.spec.arch.layer_norm_eps)
        return F.linear(x, w[self.lm_head])
