"""The small interface between model families and the scheduler.

A model is a list of layers: an embedding layer, the decoder layers, a head. The
scheduler streams each layer's weights and calls `forward`; it knows nothing else
about the family. Decoder layers reach the KV cache only through `ctx.attend`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

_tanh_gelu = lambda x: F.gelu(x, approximate="tanh")  # noqa: E731
# HF's hidden_act names -> the function; a family accepts those its checkpoints use
ACTIVATIONS = {"relu": F.relu, "silu": F.silu, "gelu": F.gelu, "gelu_new": _tanh_gelu, "gelu_pytorch_tanh": _tanh_gelu}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r} (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


@dataclass(frozen=True)
class WeightSpec:
    name: str  # checkpoint key (HF naming)
    shape: tuple[int, ...]
    init: str = "normal"  # dummy-weight fill: "normal", "ones" or "zeros"
    # read by row index only (an embedding table): never streamed whole, only the rows a step
    # looks up are read from wherever the table lives
    lookup: bool = False
    # share of a batch's tokens this matrix multiplies: an expert's k of E (each token routed to k)
    token_share: float = 1.0
    # the expert of a mixture this tensor belongs to: each expert is a placement unit of its own,
    # loaded only when the router sends tokens to it (None: the layer's own weights, streamed every step)
    expert: int | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def linear_specs(prefix: str, shapes, bias: bool, token_share: float = 1.0, expert: int | None = None) -> list[WeightSpec]:
    """Weights (and biases, when the family has them) of linear maps: `shapes` is [(name, (out, in))]."""
    specs = []
    for name, shape in shapes:
        specs.append(WeightSpec(f"{prefix}{name}.weight", shape, token_share=token_share, expert=expert))
        if bias:
            specs.append(WeightSpec(f"{prefix}{name}.bias", (shape[0],), "zeros", expert=expert))
    return specs


# The key under which a layer with experts finds them in its weights: an object whose
# `each(experts)` yields (expert, its tensors by checkpoint name) for the experts asked for, those
# already on the compute device first, the others as their loads arrive.
EXPERTS = "<experts>"


def unrouted_share(token_share: float, tokens: float) -> float:
    """The share of a layer's experts that `tokens` tokens, each routed to a `token_share` (k of E) of
    them uniformly, leave untouched."""
    return (1 - token_share) ** tokens


def by_expert(specs: list[WeightSpec]) -> tuple[list[WeightSpec], dict[int, list[WeightSpec]]]:
    """A layer's own tensors, and each expert's, in expert order: what the weight store places apart."""
    own, experts = [], {}
    for spec in specs:
        if spec.expert is None:
            own.append(spec)
        else:
            experts.setdefault(spec.expert, []).append(spec)
    return own, dict(sorted(experts.items()))


def routed_experts(w: dict, experts: list[int]):
    """(expert, tensors) for each of `experts`: loaded on demand where the weight store placed
    experts apart, or from the layer's own weights."""
    if EXPERTS in w:
        yield from w[EXPERTS].each(experts)
    else:
        yield from ((e, w) for e in experts)


def rows_in_few_shapes(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`index` (rows of `like` a matmul takes) padded by repeating its first row to one of 8 row counts per
    power of two, on a CPU in bf16 / fp16, where oneDNN builds a kernel for every new matmul shape: each
    expert's share of a batch is a new row count (measured, 2-core Xeon, x [~1000, 2048] by [2048, 1024]:
    15.3 ms a call at new row counts, 2.9 ms at one seen before; fp32 goes to MKL and pays nothing). At
    most 1/8 of the rows are padding; the caller drops their outputs."""
    n = index.shape[0]
    if like.device.type != "cpu" or like.dtype not in (torch.bfloat16, torch.float16) or n <= 16:
        return index
    step = 1 << (n.bit_length() - 4)
    padded = -(-n // step) * step
    return torch.cat([index, index[:1].expand(padded - n)]) if padded > n else index


@dataclass(frozen=True)
class Widths:
    """Values per token a decoder layer holds beside its weights, which no weight list shows; a
    family module whose layers differ from the default (planning/sizes.py) says so in `widths(spec)`."""

    kv: int  # keys (and as many values) it caches
    mlp: int  # its MLP's working tensors at their widest


class LayerContext(Protocol):
    positions: torch.Tensor  # [batch, seq] absolute token positions
    select: torch.Tensor | None  # head only: flat indices into batch*seq whose logits are wanted

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
               softcap: float | None = None) -> torch.Tensor:
        """q [b, heads, s, d], new k/v [b, kv_heads, s, d] -> attention output [b, heads, s, d]. Scores
        are scaled by `scale` (default head_dim^-0.5) and, with `softcap`, capped by tanh (Gemma 2); the
        layer's window is the spec's (`spec.window(i)`), which the cache is sized by."""


class Layer(Protocol):
    name: str
    kind: str  # "embed", "decoder" or "head"

    def weight_specs(self) -> list[WeightSpec]: ...

    def forward(self, x: torch.Tensor, w: dict[str, torch.Tensor], ctx: LayerContext) -> torch.Tensor: ...


def selected_rows(hidden: torch.Tensor, select: torch.Tensor | None) -> torch.Tensor:
    """[b, s, h] -> [n, h]: only the positions whose logits are needed reach the head."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    return flat if select is None else flat.index_select(0, select)


def lookup(table, ids: torch.Tensor) -> torch.Tensor:
    """Rows `ids` of an embedding table: a tensor, or a `RowTable` that reads only those rows."""
    if isinstance(table, torch.Tensor):
        return torch.nn.functional.embedding(ids, table)
    return table.lookup(ids)


def storage_plan(layers) -> list[tuple[list[WeightSpec], list[WeightSpec]]]:
    """Per layer: the tensors it streams whole every step, and the lookup tables it stores. A
    table that another layer streams (a tied embedding, which the head multiplies with) is
    stored there, once, and looked up from there."""
    streamed_names = {s.name for layer in layers for s in layer.weight_specs() if not s.lookup}
    plan = []
    for layer in layers:
        specs = layer.weight_specs()
        plan.append(([s for s in specs if not s.lookup],
                     [s for s in specs if s.lookup and s.name not in streamed_names]))
    return plan
