"""What a model weighs and computes, read off its family's own layers.

Bytes per layer come from the layers' WeightSpecs as the runtime stores and streams them, FLOPs
per token from the matrices among them, and the two widths no weight list shows from a small
hook a family module may define (`widths(spec) -> Widths`): so a new family needs no edit here,
in the cost model or in the memory accounting (`Widths` is in model/layers.py, the interface
families implement).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..memory.weight_store import place_experts
from ..model.families import family_of
from ..model.layers import Widths, storage_plan, unrouted_share
from ..model.spec import ModelSpec

KINDS = ("embed", "decoder", "head")


@dataclass(frozen=True)
class LayerSizes:
    streamed: int  # values loaded whole every step (lookup tables are read by row instead)
    stored: int  # values kept: what it streams and the lookup tables it owns
    matmul: float  # values of its matrices, times the share of tokens each multiplies: FLOPs per token = 2x this
    expert_values: int = 0  # of `streamed`, the values of its experts (read only when routed to)
    experts: int = 0
    experts_per_token: int = 0

    def streamed_for(self, tokens: float) -> float:
        """Values a step over `tokens` tokens reads: an expert only when some token is routed to it,
        which under uniform routing misses it with probability (1 - k/E) per token."""
        if not self.experts:
            return self.streamed
        return self.streamed - self.expert_values * unrouted_share(self.experts_per_token / self.experts, tokens)


@dataclass(frozen=True)
class ModelSizes:
    layers: dict  # {kind: LayerSizes} for "embed", "decoder" (one of them) and "head"
    count: dict  # {kind: layers of that kind}
    widths: Widths

    def weight_values(self) -> int:
        return sum(self.layers[k].stored * self.count[k] for k in KINDS)

    def kv_bytes_per_token(self, dtype_bytes: float) -> float:
        """K and V of one token across all decoder layers."""
        return 2 * self.count["decoder"] * self.widths.kv * dtype_bytes

    def flops_per_token(self) -> int:
        """Matrix FLOPs of one token through every layer (attention over the context aside)."""
        return sum(2 * self.layers[k].matmul * self.count[k] for k in KINDS)


def default_widths(spec: ModelSpec) -> Widths:
    """Grouped-query attention's K width, and an MLP holding two tensors of its inner width."""
    return Widths(kv=spec.num_kv_heads * spec.head_dim, mlp=2 * spec.ffn_size)


@lru_cache(maxsize=64)
def model_sizes(spec: ModelSpec) -> ModelSizes:
    family = family_of(spec)
    layers = family.build_layers(spec)
    sizes, count = {}, dict.fromkeys(KINDS, 0)
    for layer, (moving, tables) in zip(layers, storage_plan(layers)):
        count[layer.kind] += 1
        experts = [w for w in moving if w.expert is not None]
        n_experts = len({w.expert for w in experts})
        found = LayerSizes(streamed=sum(w.numel for w in moving), stored=sum(w.numel for w in moving + tables),
                           matmul=sum(w.numel * w.token_share for w in moving if len(w.shape) == 2),
                           expert_values=sum(w.numel for w in experts), experts=n_experts,
                           experts_per_token=round(experts[0].token_share * n_experts) if experts else 0)
        if sizes.setdefault(layer.kind, found) != found:
            raise ValueError(f"{spec.family}: decoder layers of different sizes are not supported yet "
                             f"({layer.name}: {found} against {sizes[layer.kind]})")
    missing = [k for k in KINDS if k not in sizes]
    if missing:
        raise ValueError(f"{spec.family}: build_layers gave no {', '.join(missing)} layer")
    widths = family.widths(spec) if hasattr(family, "widths") else default_widths(spec)
    return ModelSizes(sizes, count, widths)


def experts_per_tier(spec: ModelSpec, weights) -> dict | None:
    """How many of a decoder layer's experts the weight store puts on each tier under the weight
    percentages `weights` (its own weights take the fastest tier first); None without experts."""
    decoder = model_sizes(spec).layers["decoder"]
    if not decoder.experts:
        return None
    each = decoder.expert_values // decoder.experts
    _, tiers = place_experts(decoder.stored - decoder.expert_values, [each] * decoder.experts, weights)
    return {t: tiers.count(i) for i, t in enumerate(("gpu", "cpu", "disk"))}
