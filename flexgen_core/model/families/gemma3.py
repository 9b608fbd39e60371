"""Gemma 3 (text): Gemma 2 with an RMSNorm on q and on k over each head, a rotary base of its own for
the sliding layers (rope_local_base_freq; the global layers' may be scaled), five sliding layers to
each global one by default, and no soft-capping by default."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from . import gemma2, llama

MODEL_TYPES = ("gemma3_text",)
ARCHITECTURES = ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")  # the latter refused by name
widths = llama.widths


@dataclass(frozen=True)
class Gemma3Settings(gemma2.GemmaSettings):
    local_rope_theta: float = 10000.0


def _ropes(config: dict) -> tuple[dict, dict]:
    """(global, local) rope parameters: transformers 5 keeps one dict per layer type in
    rope_parameters; older configs say rope_theta, rope_scaling and rope_local_base_freq."""
    params = dict(config.get("rope_parameters") or {})
    if "full_attention" in params or "sliding_attention" in params:
        return dict(params.get("full_attention") or {}), dict(params.get("sliding_attention") or {})
    full = {**params, **(config.get("rope_scaling") or {}), "rope_theta": config.get("rope_theta", 1_000_000.0)}
    return full, {"rope_theta": config.get("rope_local_base_freq", 10_000.0)}


def spec_from_config(config: dict, name: str = ""):
    if config.get("model_type") == "gemma3" or "text_config" in config:
        raise ValueError("Gemma 3 multimodal checkpoints (Gemma3ForConditionalGeneration) are not supported: use "
                         "the text model (model_type gemma3_text, Gemma3ForCausalLM)")
    full, local = _ropes(config)
    if local.get("rope_type", "default") != "default":
        raise ValueError(f"unsupported rope type {local['rope_type']!r} for Gemma 3's sliding layers (supported: default)")
    n = config["num_hidden_layers"]
    pattern = config.get("sliding_window_pattern", config.get("_sliding_window_pattern", 6))
    config = {k: v for k, v in config.items() if k not in ("rope_theta", "rope_scaling")}
    config["rope_parameters"] = {"rope_theta": 1_000_000.0, **full}
    defaults = {"attn_logit_softcapping": None, "final_logit_softcapping": None,
                "layer_types": ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]}
    spec = gemma2.spec_from_config(config, name, family="gemma3", defaults=defaults)
    return replace(spec, arch=Gemma3Settings(**asdict(spec.arch),
                                             local_rope_theta=float(local.get("rope_theta", 10_000.0))))


class DecoderLayer(gemma2.DecoderLayer):
    QK_NORM = "head"


def build_layers(spec):
    global_rope, local_rope = llama.Rotary.of(spec), llama.Rotary(spec.head_dim, spec.arch.local_rope_theta)
    return gemma2.build_layers(spec, DecoderLayer, lambda i: global_rope if spec.window(i) is None else local_rope)
