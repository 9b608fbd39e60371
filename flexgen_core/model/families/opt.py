"""OPT (and OPT-IML): learned positions, pre- or post-LayerNorm, ReLU MLP, tied head."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..layers import WeightSpec, activation, lookup, selected_rows
from ..spec import ModelSpec, hf_fields

MODEL_TYPES = ("opt",)
ARCHITECTURES = ("OPTForCausalLM",)
POSITION_OFFSET = 2  # OPT's learned position table starts at index 2
PREFIX = "model.decoder."



@dataclass(frozen=True)
class OptSettings:
    word_embed_proj_dim: int  # embeddings of this width, projected in and out when it is not the hidden size
    do_layer_norm_before: bool = True  # pre-LayerNorm; False: post-LayerNorm and no final norm (opt-350m)


def spec_from_config(config: dict, name: str = "") -> ModelSpec:
    act = config.get("activation_function", "relu")
    activation(act)
    if not config.get("enable_bias", True) or not config.get("layer_norm_elementwise_affine", True):
        raise ValueError("OPT variants without biases or affine layer norms are not supported")
    hidden = config["hidden_size"]
    return ModelSpec(
        family="opt",
        **hf_fields(config, name, eos=2),
        num_kv_heads=config["num_attention_heads"],
        ffn_size=config["ffn_dim"],
        hidden_act=act,
        arch=OptSettings(word_embed_proj_dim=config.get("word_embed_proj_dim", hidden),
                         do_layer_norm_before=config.get("do_layer_norm_before", True)),
    )


def build_layers(spec: ModelSpec) -> list:
    return [Embedding(spec)] + [DecoderLayer(spec, i) for i in range(spec.num_layers)] + [Head(spec)]


class Embedding:
    kind = "embed"
    name = "embed"

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def weight_specs(self):
        s = self.spec
        specs = [
            WeightSpec(PREFIX + "embed_tokens.weight", (s.vocab_size, s.arch.word_embed_proj_dim), lookup=True),
            WeightSpec(PREFIX + "embed_positions.weight", (s.max_seq_len + POSITION_OFFSET, s.hidden_size), lookup=True),
        ]
        if s.arch.word_embed_proj_dim != s.hidden_size:
            specs.append(WeightSpec(PREFIX + "project_in.weight", (s.hidden_size, s.arch.word_embed_proj_dim)))
        return specs

    def forward(self, token_ids, w, ctx):
        h = lookup(w[PREFIX + "embed_tokens.weight"], token_ids)
        if PREFIX + "project_in.weight" in w:
            h = F.linear(h, w[PREFIX + "project_in.weight"])
        return h + lookup(w[PREFIX + "embed_positions.weight"], ctx.positions + POSITION_OFFSET)


class DecoderLayer:
    kind = "decoder"

    def __init__(self, spec: ModelSpec, index: int):
        self.spec, self.index = spec, index
        self.name = f"layer{index}"
        self.p = f"{PREFIX}layers.{index}."
        self.act = activation(spec.hidden_act or "relu")

    def weight_specs(self):
        s, p, h = self.spec, self.p, self.spec.hidden_size
        specs = []
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            specs += [WeightSpec(f"{p}self_attn.{proj}.weight", (h, h)), WeightSpec(f"{p}self_attn.{proj}.bias", (h,), "zeros")]
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            specs += [WeightSpec(f"{p}{norm}.weight", (h,), "ones"), WeightSpec(f"{p}{norm}.bias", (h,), "zeros")]
        specs += [
            WeightSpec(f"{p}fc1.weight", (s.ffn_size, h)), WeightSpec(f"{p}fc1.bias", (s.ffn_size,), "zeros"),
            WeightSpec(f"{p}fc2.weight", (h, s.ffn_size)), WeightSpec(f"{p}fc2.bias", (h,), "zeros"),
        ]
        return specs

    def _norm(self, x, w, name):
        return F.layer_norm(x, (x.shape[-1],), w[f"{self.p}{name}.weight"], w[f"{self.p}{name}.bias"])

    def _linear(self, x, w, name):
        return F.linear(x, w[f"{self.p}{name}.weight"], w[f"{self.p}{name}.bias"])

    def forward(self, h, w, ctx):
        h = self._attention(h, w, ctx)  # returning frees its queries, keys and values before the MLP
        return self._mlp(h, w)

    def _attention(self, h, w, ctx):
        s = self.spec
        b, n, _ = h.shape
        pre = s.arch.do_layer_norm_before
        x = self._norm(h, w, "self_attn_layer_norm") if pre else h
        heads = lambda t: t.view(b, n, s.num_heads, s.head_dim).transpose(1, 2)  # noqa: E731
        q = heads(self._linear(x, w, "self_attn.q_proj"))
        k = heads(self._linear(x, w, "self_attn.k_proj"))
        v = heads(self._linear(x, w, "self_attn.v_proj"))
        attn = ctx.attend(q, k, v).transpose(1, 2).reshape(b, n, s.hidden_size)
        h = h + self._linear(attn, w, "self_attn.out_proj")
        return h if pre else self._norm(h, w, "self_attn_layer_norm")

    def _mlp(self, h, w):
        pre = self.spec.arch.do_layer_norm_before
        # the norm's output is an argument only, freed once fc1 has read it
        hidden = self.act(self._linear(self._norm(h, w, "final_layer_norm") if pre else h, w, "fc1"))
        h = h + self._linear(hidden, w, "fc2")
        return h if pre else self._norm(h, w, "final_layer_norm")


class Head:
    kind = "head"
    name = "head"

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.lm_head = PREFIX + "embed_tokens.weight" if spec.tie_embeddings else "lm_head.weight"

    def weight_specs(self):
        s = self.spec
        specs = []
        if s.arch.do_layer_norm_before:  # post-LN variants (opt-350m) have no final norm
            specs += [WeightSpec(PREFIX + "final_layer_norm.weight", (s.hidden_size,), "ones"),
                      WeightSpec(PREFIX + "final_layer_norm.bias", (s.hidden_size,), "zeros")]
        if s.arch.word_embed_proj_dim != s.hidden_size:
            specs.append(WeightSpec(PREFIX + "project_out.weight", (s.arch.word_embed_proj_dim, s.hidden_size)))
        return specs + [WeightSpec(self.lm_head, (s.vocab_size, s.arch.word_embed_proj_dim))]

    def forward(self, h, w, ctx) -> torch.Tensor:
        x = selected_rows(h, ctx.select)
        if PREFIX + "final_layer_norm.weight" in w:
            x = F.layer_norm(x, (x.shape[-1],), w[PREFIX + "final_layer_norm.weight"], w[PREFIX + "final_layer_norm.bias"])
        if PREFIX + "project_out.weight" in w:
            x = F.linear(x, w[PREFIX + "project_out.weight"])
        return F.linear(x, w[self.lm_head])
