"""Llama family: Llama 2/3 (incl. rope scaling), Mistral, Qwen2 (qkv bias), SmolLM2.

RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP, tied or untied head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..layers import WeightSpec, Widths, activation, linear_specs, lookup, selected_rows
from ..spec import ModelSpec, hf_fields

MODEL_TYPES = ("llama", "mistral", "qwen2")
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


@dataclass(frozen=True)
class LlamaSettings:
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple = ()  # sorted (key, value) pairs of the HF rope_scaling dict
    attention_bias: bool = False  # bias on q, k, v (Qwen2)
    mlp_bias: bool = False
    partial_rotary: float = 1.0  # share of each head's dimensions rotated (Phi-3's partial_rotary_factor)


def rope_config(config: dict) -> tuple[float, dict, float]:
    """(base, scaling, share of dimensions rotated). transformers 5 moved rope_theta, rope_scaling and
    partial_rotary_factor into `rope_parameters`; read either."""
    params = dict(config.get("rope_parameters") or {})
    scaling = dict(config.get("rope_scaling") or {})
    theta = config.get("rope_theta", params.get("rope_theta", 10000.0))
    merged = {**params, **scaling}
    merged.pop("rope_theta", None)
    partial = merged.pop("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
        raise ValueError(f"unsupported rope scaling type {rope_type!r} (supported: default, linear, llama3; "
                         "long-context variants such as Phi-3's 128k longrope are not: use the 4k checkpoint)")
    merged.pop("type", None)
    merged["rope_type"] = rope_type
    return float(theta), merged, float(partial)


def sliding_layers(config: dict, num_layers: int) -> tuple[int | None, tuple]:
    """(window, the decoder layers that slide; () for all of them), or (None, ()) when none do.
    `layer_types` names each layer; older Qwen2/3 configs say i >= max_window_layers instead, and
    slide only with use_sliding_window."""
    window = config.get("sliding_window")
    if window is None or ("use_sliding_window" in config and not config["use_sliding_window"]):
        return None, ()
    types = config.get("layer_types")
    if types is None and "max_window_layers" in config:
        types = ["sliding_attention" if i >= config["max_window_layers"] else "full_attention"
                 for i in range(num_layers)]
    if types is None:
        return int(window), ()
    unknown = set(types) - {"sliding_attention", "full_attention"}
    if unknown or len(types) != num_layers:
        raise ValueError(f"layer_types must name sliding_attention or full_attention for each of the {num_layers} "
                         f"layers, got {types}")
    sliding = tuple(i for i, kind in enumerate(types) if kind == "sliding_attention")
    if not sliding:
        return None, ()
    return int(window), () if len(sliding) == num_layers else sliding


def spec_from_config(config: dict, name: str = "", family: str = "llama") -> ModelSpec:
    """A Llama-style config; `family` names the module (in model/families) whose layers compute it."""
    model_type = config.get("model_type", "llama")
    act = config.get("hidden_act", "silu")
    activation(act)
    theta, scaling, partial = rope_config(config)
    if model_type == "qwen2":
        config = {"use_sliding_window": False, **config}
    window, slides = sliding_layers(config, config["num_hidden_layers"])
    return ModelSpec(
        family=family,
        **hf_fields(config, name, max_len=4096, tie=False),
        num_kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        ffn_size=config["intermediate_size"],
        hidden_act=act,
        head_dim_override=config.get("head_dim"),
        sliding_window=window,
        sliding_layers=slides,
        arch=LlamaSettings(rms_norm_eps=config.get("rms_norm_eps", 1e-6), rope_theta=theta,
                           rope_scaling=tuple(sorted(scaling.items())),
                           attention_bias=config.get("attention_bias", model_type == "qwen2"),
                           mlp_bias=config.get("mlp_bias", False), partial_rotary=partial),
    )


def widths(spec: ModelSpec) -> Widths:
    """Grouped keys; the MLP counts three tensors of its inner width at its widest (gate, up and
    their product; tests/test_memory_model.py checks it covers what the runtime allocates)."""
    return Widths(kv=spec.num_kv_heads * spec.head_dim, mlp=3 * spec.ffn_size)


def build_layers(spec: ModelSpec, decoder=None, embedding=None, head=None, rotary=None) -> list:
    """Embedding, decoders and head; a family that extends this one passes its own classes, and
    `rotary(layer index)` where its layers rotate differently (one Rotary for all by default)."""
    if rotary is None:
        shared = Rotary.of(spec)
        rotary = lambda i: shared  # noqa: E731
    decoder = decoder or DecoderLayer
    return ([(embedding or Embedding)(spec)] + [decoder(spec, i, rotary(i)) for i in range(spec.num_layers)]
            + [(head or Head)(spec)])


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0) -> torch.Tensor:
    """RMSNorm scaled by `weight`, or (Gemma, which stores weight - 1) by offset + weight in fp32."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    if offset:
        return (x32 * (offset + weight.float())).to(x.dtype)
    return weight * x32.to(x.dtype)


class Rotary:
    """Rotary position embedding over the first `dims` of each head (all by default); inverse
    frequencies follow the config's rope scaling."""

    @classmethod
    def of(cls, spec: ModelSpec) -> "Rotary":
        a = spec.arch
        return cls(spec.head_dim, a.rope_theta, dict(a.rope_scaling), int(spec.head_dim * a.partial_rotary))

    def __init__(self, head_dim: int, theta: float, scaling: dict | None = None, dims: int | None = None):
        d = self.dims = dims or head_dim
        inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        scaling = scaling or {}
        kind = scaling.get("rope_type", "default")
        if kind == "linear":
            inv_freq = inv_freq / scaling["factor"]
        elif kind == "llama3":
            inv_freq = self._llama3(inv_freq, scaling)
        self.inv_freq = inv_freq
        self._device_cache: dict = {}
        self._last = None

    @staticmethod
    def _llama3(inv_freq, cfg):
        factor, low, high = cfg["factor"], cfg["low_freq_factor"], cfg["high_freq_factor"]
        old_len = cfg["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        return torch.where(medium, smoothed, scaled)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype):
        # Every layer of a step sees the same positions tensor: compute its rotation once.
        last = self._last
        if last is not None and last[0] is positions and last[1] == dtype:
            return last[2]
        inv = self._device_cache.get(positions.device)
        if inv is None:
            inv = self._device_cache[positions.device] = self.inv_freq.to(positions.device)
        freqs = positions.float()[..., None] * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        result = emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]  # [b, 1, s, d]
        self._last = (positions, dtype, result)
        return result

    @staticmethod
    def apply(x, cos, sin):
        d = cos.shape[-1]
        if d < x.shape[-1]:  # partial rotary: the rest of each head passes through
            return torch.cat((Rotary.apply(x[..., :d], cos, sin), x[..., d:]), dim=-1)
        half = d // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin


class Embedding:
    kind = "embed"
    name = "embed"
    TABLE = "model.embed_tokens.weight"  # the checkpoint's name for the token table

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def weight_specs(self):
        return [WeightSpec(self.TABLE, (self.spec.vocab_size, self.spec.hidden_size), lookup=True)]

    def forward(self, token_ids, w, ctx):
        return lookup(w[self.TABLE], token_ids)


class DecoderLayer:
    """Attention and a gated MLP, each a residual branch. Families that extend Llama say where their
    RMSNorms sit and whether q and k are normalised; the maths is this one class."""

    kind = "decoder"
    # the RMSNorm (its checkpoint name) before and after each branch; None: no norm there
    NORMS = {"pre_attention": "input_layernorm", "post_attention": None,
             "pre_mlp": "post_attention_layernorm", "post_mlp": None}
    # RMSNorm of q and k before rotary: None, "head" (over each head: Qwen3) or "projection" (over
    # the whole projection: OLMo 2)
    QK_NORM = None
    NORM_OFFSET = 0.0  # every RMSNorm scales by offset + weight (Gemma: 1)

    def __init__(self, spec: ModelSpec, index: int, rope: Rotary):
        self.spec, self.index, self.rope = spec, index, rope
        self.name = f"layer{index}"
        self.p = f"model.layers.{index}."
        self.act = activation(spec.hidden_act or "silu")
        self.scale = self.softcap = None  # attention scores scaled by head_dim^-0.5, not capped

    def weight_specs(self):
        s, p, h = self.spec, self.p, self.spec.hidden_size
        ones = "zeros" if self.NORM_OFFSET else "ones"  # the dummy weights of a norm that scales by 1

        def norm(where):
            return [WeightSpec(f"{p}{self.NORMS[where]}.weight", (h,), ones)] if self.NORMS[where] else []

        specs = norm("pre_attention") + self._qkv_specs()
        if self.QK_NORM:
            d = s.head_dim
            width = {"head": (d, d), "projection": (s.num_heads * d, s.num_kv_heads * d)}[self.QK_NORM]
            specs += [WeightSpec(f"{p}self_attn.{n}_norm.weight", (size,), ones) for n, size in zip("qk", width)]
        specs.append(WeightSpec(p + "self_attn.o_proj.weight", (h, s.num_heads * s.head_dim)))
        return specs + norm("post_attention") + norm("pre_mlp") + self._mlp_specs() + norm("post_mlp")

    def _qkv_specs(self):
        s, h = self.spec, self.spec.hidden_size
        q, kv = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        return self._projections("self_attn", [("q_proj", (q, h)), ("k_proj", (kv, h)), ("v_proj", (kv, h))],
                                 s.arch.attention_bias)

    def _mlp_specs(self):
        s, h, f = self.spec, self.spec.hidden_size, self.spec.ffn_size
        return self._projections("mlp", [("gate_proj", (f, h)), ("up_proj", (f, h)), ("down_proj", (h, f))],
                                 s.arch.mlp_bias)

    def _projections(self, module: str, shapes, bias: bool, token_share: float = 1.0, expert: int | None = None) -> list:
        return linear_specs(f"{self.p}{module}.", shapes, bias, token_share, expert)

    def _linear(self, x, w, name):
        return F.linear(x, w[f"{self.p}{name}.weight"], w.get(f"{self.p}{name}.bias"))

    def _rms_norm(self, x, weight):
        return rms_norm(x, weight, self.spec.arch.rms_norm_eps, self.NORM_OFFSET)

    def _norm(self, x, w, where):
        name = self.NORMS[where]
        return x if name is None else self._rms_norm(x, w[f"{self.p}{name}.weight"])

    def _qkv(self, x, w):
        """q, k and v as projected, [b, n, heads x head_dim] each."""
        return tuple(self._linear(x, w, f"self_attn.{n}_proj") for n in "qkv")

    def _gated(self, x, w):
        """act(gate) x up, the product in place: two MLP-wide tensors at most, then one."""
        gated = self.act(self._linear(x, w, "mlp.gate_proj"))
        return gated.mul_(self._linear(x, w, "mlp.up_proj"))

    def forward(self, h, w, ctx):
        h = h + self._attention(h, w, ctx)  # returning frees its queries, keys and values before the MLP
        return h + self._mlp(h, w)

    def _attention(self, h, w, ctx):
        s = self.spec
        b, n, _ = h.shape
        x = self._norm(h, w, "pre_attention")
        q, k, v = self._qkv(x, w)
        del x
        q, k = self._qk_norm(q, k, w)
        q = q.view(b, n, s.num_heads, s.head_dim).transpose(1, 2)
        k = k.view(b, n, s.num_kv_heads, s.head_dim).transpose(1, 2)
        v = v.view(b, n, s.num_kv_heads, s.head_dim).transpose(1, 2)
        cos, sin = self.rope.cos_sin(ctx.positions, q.dtype)
        q, k = Rotary.apply(q, cos, sin), Rotary.apply(k, cos, sin)
        attn = ctx.attend(q, k, v, self.scale, self.softcap)
        attn = attn.transpose(1, 2).reshape(b, n, s.num_heads * s.head_dim)
        return self._norm(self._linear(attn, w, "self_attn.o_proj"), w, "post_attention")

    def _qk_norm(self, q, k, w):
        """q, k as projected ([b, n, heads x head_dim]), normalised as QK_NORM says."""
        if self.QK_NORM is None:
            return q, k
        out = []
        for x, name in ((q, "q_norm"), (k, "k_norm")):
            weight = w[f"{self.p}self_attn.{name}.weight"]
            if self.QK_NORM == "head":  # over each head's dimensions
                x = self._rms_norm(x.unflatten(-1, (-1, self.spec.head_dim)), weight).flatten(-2)
            else:
                x = self._rms_norm(x, weight)
            out.append(x)
        return tuple(out)

    def _mlp(self, h, w):
        gated = self._gated(self._norm(h, w, "pre_mlp"), w)
        return self._norm(self._linear(gated, w, "mlp.down_proj"), w, "post_mlp")


class Head:
    kind = "head"
    name = "head"
    NORM_OFFSET = 0.0  # as the decoder's

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.lm_head = "model.embed_tokens.weight" if spec.tie_embeddings else "lm_head.weight"

    def weight_specs(self):
        s = self.spec
        return [WeightSpec("model.norm.weight", (s.hidden_size,), "zeros" if self.NORM_OFFSET else "ones"),
                WeightSpec(self.lm_head, (s.vocab_size, s.hidden_size))]

    def forward(self, h, w, ctx):
        x = rms_norm(selected_rows(h, ctx.select), w["model.norm.weight"], self.spec.arch.rms_norm_eps,
                     self.NORM_OFFSET)
        return F.linear(x, w[self.lm_head])
