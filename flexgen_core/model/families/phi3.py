"""Phi-3: Llama with q, k and v in one projection (qkv_proj) and gate and up in another
(gate_up_proj), rotary over a share of each head where partial_rotary_factor says so, and a sliding
window over every layer where the config has one. The 128k checkpoints' long-context rope
(longrope) is refused by name."""
from __future__ import annotations

from . import llama

MODEL_TYPES = ("phi3",)
ARCHITECTURES = ("Phi3ForCausalLM",)
widths = llama.widths  # gate and up (two MLP-wide halves), then act(gate): three at the widest


def spec_from_config(config: dict, name: str = ""):
    return llama.spec_from_config(config, name, family="phi3")


class DecoderLayer(llama.DecoderLayer):
    def _qkv_specs(self):
        s = self.spec
        width = (s.num_heads + 2 * s.num_kv_heads) * s.head_dim
        return self._projections("self_attn", [("qkv_proj", (width, s.hidden_size))], s.arch.attention_bias)

    def _mlp_specs(self):
        s, h, f = self.spec, self.spec.hidden_size, self.spec.ffn_size
        return self._projections("mlp", [("gate_up_proj", (2 * f, h)), ("down_proj", (h, f))], s.arch.mlp_bias)

    def _qkv(self, x, w):
        s = self.spec
        q, kv = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        return self._linear(x, w, "self_attn.qkv_proj").split([q, kv, kv], dim=-1)

    def _gated(self, x, w):
        gate, up = self._linear(x, w, "mlp.gate_up_proj").chunk(2, dim=-1)
        return self.act(gate).mul_(up)


def build_layers(spec):
    return llama.build_layers(spec, DecoderLayer)
