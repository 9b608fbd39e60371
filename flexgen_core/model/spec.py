"""ModelSpec: the shape of a model, from an HF config or the built-in table.

The fields every family has are the spec's own; what only one family knows (OPT's projected
embeddings, Llama's rotary base) sits in that family's frozen settings, `spec.arch`. Families
register in FAMILIES (model/families/__init__.py, the one table), so the spec reads a config
through its family without importing the families, which import the spec.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

FAMILIES: dict = {}  # name -> family module, filled by model/families/__init__.py


@dataclass(frozen=True)
class ModelSpec:
    family: str  # a key of FAMILIES
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    ffn_size: int
    max_seq_len: int
    tie_embeddings: bool = True
    hidden_act: str = ""
    head_dim_override: int | None = None
    sliding_window: int | None = None  # keys a sliding layer attends to (its own token included)
    sliding_layers: tuple = ()  # decoder layers that slide; () with a window: every layer
    bos_token_id: int | None = None
    eos_token_ids: tuple = ()
    pad_token_id: int | None = None
    name: str = ""
    arch: object = None  # the family's own settings: a frozen dataclass of its module

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden_size // self.num_heads

    def window(self, layer: int) -> int | None:
        """The window decoder layer `layer` attends within, None when it attends to everything."""
        if self.sliding_window is None or (self.sliding_layers and layer not in self.sliding_layers):
            return None
        return self.sliding_window

    def windows(self) -> list[int | None]:
        return [self.window(i) for i in range(self.num_layers)]

    def to_dict(self) -> dict:
        return asdict(self)

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, config: dict, name: str = "") -> "ModelSpec":
        family = family_for_config(config)
        try:
            return family.spec_from_config(config, name=name)
        except KeyError as e:  # a field the family cannot do without
            raise ValueError(f"the {config.get('model_type') or family.__name__.split('.')[-1]} config "
                             f"{('of ' + repr(name) + ' ') if name else ''}lacks {e.args[0]!r}, which it needs; "
                             "is config.json complete?") from None

    @classmethod
    def from_dir(cls, path: str) -> "ModelSpec":
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"no config.json in model directory {path!r}")
        try:
            with open(cfg_path) as f:
                config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"corrupt config.json in {path!r}: {e}") from e
        return cls.from_hf_config(config, name=os.path.basename(os.path.normpath(path)))

    @classmethod
    def from_name(cls, name: str) -> "ModelSpec":
        """Built-in sizes (no download): 'facebook/opt-30b', 'opt-6.7b', 'meta-llama/Llama-2-7b-hf', ..."""
        key = name.split("/")[-1].lower()
        if key not in BUILTIN_CONFIGS:
            raise KeyError(f"no built-in config for {name!r}; known: {', '.join(sorted(BUILTIN_CONFIGS))}")
        return cls.from_hf_config(BUILTIN_CONFIGS[key], name=key)


def hf_fields(config: dict, name: str = "", max_len: int = 2048, tie: bool = True, eos=None) -> dict:
    """The ModelSpec fields every HF config spells the same way; a family adds the rest (defaults for
    the context length, tied head and EOS are the family's)."""
    eos = config.get("eos_token_id", eos)
    return dict(vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
                num_layers=config["num_hidden_layers"], num_heads=config["num_attention_heads"],
                max_seq_len=config.get("max_position_embeddings", max_len),
                tie_embeddings=config.get("tie_word_embeddings", tie), bos_token_id=config.get("bos_token_id"),
                eos_token_ids=() if eos is None else tuple(eos) if isinstance(eos, list) else (eos,),
                pad_token_id=config.get("pad_token_id"), name=name or config.get("_name_or_path", ""))


def family_for_config(config: dict):
    """The family module that reads this HF config; one error that lists the supported ones."""
    model_type = config.get("model_type", "")
    archs = config.get("architectures") or []
    for module in FAMILIES.values():
        if model_type in module.MODEL_TYPES or any(a in module.ARCHITECTURES for a in archs):
            return module
    known = sorted(t for m in FAMILIES.values() for t in m.MODEL_TYPES)
    raise ValueError(
        f"unsupported architecture: model_type={model_type!r} architectures={archs}; supported model types: {known}"
    )


def _opt(hidden, layers, heads, ffn=None, proj=None, max_pos=2048):
    return {
        "model_type": "opt", "architectures": ["OPTForCausalLM"], "vocab_size": 50272,
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "ffn_dim": ffn or 4 * hidden, "max_position_embeddings": max_pos,
        "word_embed_proj_dim": proj or hidden, "do_layer_norm_before": True,
        "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1, "tie_word_embeddings": True,
    }


def _llama(hidden, layers, heads, kv_heads, ffn, vocab=32000, max_pos=4096, theta=10000.0,
           tie=False, eps=1e-5, rope_scaling=None, bos=1, eos=2):
    cfg = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab,
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "intermediate_size": ffn, "max_position_embeddings": max_pos,
        "rope_theta": theta, "tie_word_embeddings": tie, "rms_norm_eps": eps,
        "bos_token_id": bos, "eos_token_id": eos,
    }
    if rope_scaling:
        cfg["rope_scaling"] = rope_scaling
    return cfg


def _family(model_type: str, architecture: str, base: dict, **fields) -> dict:
    """A Llama-style config of another family (its own model_type and architecture)."""
    return {**base, "model_type": model_type, "architectures": [architecture], **fields}


_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

# The published sizes, as plain data (HF config fields).
BUILTIN_CONFIGS: dict[str, dict] = {
    "opt-125m": _opt(768, 12, 12),
    "opt-350m": _opt(1024, 24, 16, proj=512),
    "opt-1.3b": _opt(2048, 24, 32),
    "opt-2.7b": _opt(2560, 32, 32),
    "opt-6.7b": _opt(4096, 32, 32),
    "opt-13b": _opt(5120, 40, 40),
    "opt-30b": _opt(7168, 48, 56),
    "opt-66b": _opt(9216, 64, 72),
    "opt-175b": _opt(12288, 96, 96),
    "opt-iml-1.3b": _opt(2048, 24, 32),
    "opt-iml-max-1.3b": _opt(2048, 24, 32),
    "opt-iml-30b": _opt(7168, 48, 56),
    "opt-iml-max-30b": _opt(7168, 48, 56),
    "llama-2-7b-hf": _llama(4096, 32, 32, 32, 11008),
    "llama-2-13b-hf": _llama(5120, 40, 40, 40, 13824),
    "llama-2-70b-hf": _llama(8192, 80, 64, 8, 28672),
    "meta-llama-3-8b": _llama(4096, 32, 32, 8, 14336, vocab=128256, max_pos=8192, theta=500000.0,
                              bos=128000, eos=128001),
    "meta-llama-3-70b": _llama(8192, 80, 64, 8, 28672, vocab=128256, max_pos=8192, theta=500000.0,
                               bos=128000, eos=128001),
    "llama-3.1-8b": _llama(4096, 32, 32, 8, 14336, vocab=128256, max_pos=131072, theta=500000.0,
                           rope_scaling=_LLAMA3_ROPE, bos=128000, eos=128001),
    "llama-3.1-70b": _llama(8192, 80, 64, 8, 28672, vocab=128256, max_pos=131072, theta=500000.0,
                            rope_scaling=_LLAMA3_ROPE, bos=128000, eos=128001),
    "llama-3.1-405b": _llama(16384, 126, 128, 8, 53248, vocab=128256, max_pos=131072, theta=500000.0,
                             rope_scaling=_LLAMA3_ROPE, bos=128000, eos=128001),
    "mistral-7b-v0.1": {**_llama(4096, 32, 32, 8, 14336, max_pos=32768), "model_type": "mistral",
                        "architectures": ["MistralForCausalLM"], "sliding_window": 4096},
    # Qwen3 dense (Qwen/Qwen3-14B, Qwen3-32B config.json): q/k norm, head_dim 128
    "qwen3-14b": _family("qwen3", "Qwen3ForCausalLM", _llama(5120, 40, 40, 8, 17408, vocab=151936, max_pos=40960,
                                                              theta=1000000.0, eps=1e-6, bos=151643, eos=151645),
                         head_dim=128, attention_bias=False),
    "qwen3-32b": _family("qwen3", "Qwen3ForCausalLM", _llama(5120, 64, 64, 8, 25600, vocab=151936, max_pos=40960,
                                                              theta=1000000.0, eps=1e-6, bos=151643, eos=151645),
                         head_dim=128, attention_bias=False),
    # OLMo 2 (allenai/OLMo-2-1124-13B, OLMo-2-0325-32B): norms after the branches, q/k norm over the projection
    "olmo-2-13b": _family("olmo2", "Olmo2ForCausalLM", _llama(5120, 40, 40, 40, 13824, vocab=100352, max_pos=4096,
                                                               theta=500000.0, eps=1e-6, bos=100257, eos=100257)),
    "olmo-2-32b": _family("olmo2", "Olmo2ForCausalLM", _llama(5120, 64, 40, 8, 27648, vocab=100352, max_pos=4096,
                                                               theta=500000.0, eps=1e-6, bos=100257, eos=100257)),
    # Gemma 2 (google/gemma-2-27b): score scale 144^-0.5, soft caps 50 / 30, every other layer sliding (4096)
    "gemma-2-27b": _family("gemma2", "Gemma2ForCausalLM", _llama(4608, 46, 32, 16, 36864, vocab=256000, max_pos=8192,
                                                                  tie=True, eps=1e-6, bos=2, eos=1),
                           head_dim=128, query_pre_attn_scalar=144, sliding_window=4096,
                           hidden_activation="gelu_pytorch_tanh", pad_token_id=0),
    # Gemma 3 27B, its text model (google/gemma-3-27b-it text_config): 5 sliding layers (1024) to each
    # global one, global rope 1e6 scaled linearly by 8, local 1e4
    "gemma-3-27b": _family("gemma3_text", "Gemma3ForCausalLM",
                           _llama(5376, 62, 32, 16, 21504, vocab=262208, max_pos=131072, theta=1_000_000.0,
                                  tie=True, eps=1e-6, rope_scaling={"rope_type": "linear", "factor": 8.0},
                                  bos=2, eos=1),
                           head_dim=128, query_pre_attn_scalar=168, sliding_window=1024, rope_local_base_freq=10000.0,
                           hidden_activation="gelu_pytorch_tanh", pad_token_id=0),
    # Phi-3-medium-4k (microsoft/Phi-3-medium-4k-instruct): fused projections, a 2047-token window
    "phi-3-medium": _family("phi3", "Phi3ForCausalLM", _llama(5120, 40, 40, 10, 17920, vocab=32064, max_pos=4096,
                                                               bos=1, eos=32000),
                            sliding_window=2047, pad_token_id=32000),
    # Pythia 12B (EleutherAI/pythia-12b): GPT-NeoX, a quarter of each head rotated, parallel residual
    "pythia-12b": {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "vocab_size": 50688,
                   "hidden_size": 5120, "num_hidden_layers": 36, "num_attention_heads": 40,
                   "intermediate_size": 20480, "max_position_embeddings": 2048, "rotary_pct": 0.25,
                   "rotary_emb_base": 10000, "use_parallel_residual": True, "layer_norm_eps": 1e-5,
                   "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0},
    # Mixtral-8x7B (mistralai/Mixtral-8x7B-v0.1): 2 of 8 SwiGLU experts per token
    "mixtral-8x7b": _family("mixtral", "MixtralForCausalLM", _llama(4096, 32, 32, 8, 14336, max_pos=32768,
                                                                     theta=1_000_000.0),
                            num_local_experts=8, num_experts_per_tok=2),
    # Qwen3-30B-A3B: 8 of 128 experts of width 768, q/k norm per head
    "qwen3-30b-a3b": _family("qwen3_moe", "Qwen3MoeForCausalLM",
                             _llama(2048, 48, 32, 4, 6144, vocab=151936, max_pos=40960, theta=1_000_000.0, eps=1e-6,
                                    bos=151643, eos=151645),
                             head_dim=128, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
                             norm_topk_prob=True, attention_bias=False),
    # OLMoE-1B-7B (allenai/OLMoE-1B-7B-0924): 8 of 64 experts, q/k norm over the projection
    "olmoe-1b-7b": _family("olmoe", "OlmoeForCausalLM", _llama(2048, 16, 16, 16, 1024, vocab=50304, max_pos=4096,
                                                                 bos=None, eos=50279),
                           num_experts=64, num_experts_per_tok=8, norm_topk_prob=False, pad_token_id=1),
    "smollm2-135m": _llama(576, 30, 9, 3, 1536, vocab=49152, max_pos=8192, theta=100000.0, tie=True,
                           bos=1, eos=2),
    "smollm2-135m-instruct": _llama(576, 30, 9, 3, 1536, vocab=49152, max_pos=8192, theta=100000.0,
                                    tie=True, bos=1, eos=2),
}
