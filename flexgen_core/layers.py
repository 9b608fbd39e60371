"""The small interface between model families and the scheduler.

A model is a list of layers: an embedding layer, the decoder layers, a head. The
scheduler streams each layer's weights and calls `forward`; it knows nothing else
about the family. Decoder layers reach the KV cache only through `ctx.attend`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class WeightSpec:
    name: str  # checkpoint key (HF naming)
    shape: tuple[int, ...]
    init: str = "normal"  # dummy-weight fill: "normal", "ones" or "zeros"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class LayerContext(Protocol):
    positions: torch.Tensor  # [batch, seq] absolute token positions
    select: torch.Tensor | None  # head only: flat indices into batch*seq whose logits are wanted

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [b, heads, s, d], new k/v [b, kv_heads, s, d] -> attention output [b, heads, s, d]."""


class Layer(Protocol):
    name: str
    kind: str  # "embed", "decoder" or "head"

    def weight_specs(self) -> list[WeightSpec]: ...

    def forward(self, x: torch.Tensor, w: dict[str, torch.Tensor], ctx: LayerContext) -> torch.Tensor: ...


def selected_rows(hidden: torch.Tensor, select: torch.Tensor | None) -> torch.Tensor:
    """[b, s, h] -> [n, h]: only the positions whose logits are needed reach the head."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    return flat if select is None else flat.index_select(0, select)
