"""The KV cache of one block: per decoder layer and GPU batch, K and V split across tiers.

Rows are (sequence, kv head) pairs, so attention is independent per row and each
tier's rows can be attended where they live (CPU attention) or brought to the
compute device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import decode_attention_rows
from .tiers import TieredRows, TierSet


@dataclass
class Segment:
    start: int
    end: int
    tier: str
    keys: torch.Tensor  # [rows, t + 1, d] on the device where this segment is attended
    values: torch.Tensor
    is_view: bool  # a view of the tier's storage: writing the new token writes the cache itself


class BlockCache:
    def __init__(self, tiers: TierSet, num_layers: int, batch_shapes: list[tuple[int, int]], num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, percents, cpu_attention: bool):
        self.tiers, self.kv, self.cpu_attention = tiers, num_kv_heads, cpu_attention
        self.entries: dict[tuple[int, int], tuple[TieredRows, TieredRows]] = {}
        for j in range(num_layers):
            for k, (b, max_len) in enumerate(batch_shapes):  # (sequences, cache positions) per GPU batch
                shape = (b * num_kv_heads, max_len, head_dim)
                self.entries[j, k] = tuple(
                    TieredRows(tiers, shape, dtype, percents, f"{kind}{j}-{k}") for kind in "kv"
                )

    def store_prefill(self, j: int, k: int, keys: torch.Tensor, values: torch.Tensor):
        """keys, values [b, kv, s, d] for cache positions 0..s-1."""
        s = keys.shape[2]
        for buf, new in zip(self.entries[j, k], (keys, values)):
            buf.write(_rows(new), slice(0, s))

    def load(self, j: int, k: int, t: int) -> list[Segment]:
        """Positions 0..t-1 of every part, each with an empty slot t for the token being decoded."""
        kbuf, vbuf = self.entries[j, k]
        segments = []
        for i, (tier, start, end, storage) in enumerate(kbuf.parts):
            where = "cpu" if self.cpu_attention and tier != "gpu" else "gpu"
            if tier == "gpu" or (tier == "cpu" and where == "cpu"):
                keys, values = storage[:, :t + 1], vbuf.parts[i][3][:, :t + 1]
                segments.append(Segment(start, end, tier, keys, values, True))
                continue
            pair = []
            for buf in (kbuf, vbuf):
                dev = self.tiers.device if where == "gpu" else torch.device("cpu")
                out = torch.empty((end - start, t + 1) + buf.shape[2:], dtype=buf.dtype, device=dev)
                out[:, :t].copy_(buf.read_part(i, slice(0, t), to=where), non_blocking=True)
                pair.append(out)
            segments.append(Segment(start, end, tier, pair[0], pair[1], False))
        return segments

    def store_token(self, j: int, k: int, segment_index: int, keys_rows, values_rows, t: int):
        for buf, rows in zip(self.entries[j, k], (keys_rows, values_rows)):
            buf.write_part(segment_index, rows, slice(t, t + 1))

    def free(self):
        for pair in self.entries.values():
            for buf in pair:
                buf.free()
        self.entries = {}


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[b, kv, s, d] -> [b * kv, s, d]"""
    return x.reshape(-1, x.shape[2], x.shape[3])


def decode_over_segments(q, new_k, new_v, segments: list[Segment], key_valid: torch.Tensor, t: int,
                         store_token) -> torch.Tensor:
    """q [b, h, 1, d], new_k/new_v [b, kv, 1, d], key_valid [b, t + 1] -> [b, h, 1, d].

    Each segment is attended where it lives; only q and the output cross the link for
    CPU-attended rows. `store_token(i, k_rows, v_rows)` persists the new token of segments
    that are copies rather than views of their tier."""
    b, h, _, d = q.shape
    kv = new_k.shape[1]
    q_rows = q.reshape(b, kv, h // kv, d).reshape(b * kv, h // kv, d)
    k_rows, v_rows = _rows(new_k)[:, 0], _rows(new_v)[:, 0]
    valid_rows = key_valid.repeat_interleave(kv, dim=0)
    out = torch.empty_like(q_rows)
    for i, seg in enumerate(segments):
        dev = seg.keys.device
        sl = slice(seg.start, seg.end)
        seg.keys[:, t] = k_rows[sl].to(dev)
        seg.values[:, t] = v_rows[sl].to(dev)
        if not seg.is_view:
            store_token(i, k_rows, v_rows)
        out[sl] = decode_attention_rows(q_rows[sl].to(dev), seg.keys, seg.values, valid_rows[sl].to(dev)).to(q.device)
    return out.reshape(b, h, 1, d)
