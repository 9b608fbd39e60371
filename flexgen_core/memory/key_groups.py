"""Keys quantized per channel (KIVI, ICML 2024): a group is G consecutive tokens of one channel.

A few key channels carry outliers; grouped per token (as values are), every token's range is
widened by them, so the other channels lose their precision. Grouped along the tokens instead,
each channel has a range of its own. A group's bytes (each channel's codes of G tokens, then its
fp16 minimum and step: `QuantConfig.packed_bytes(G)` per channel) are laid out over the G cache
slots it covers, `slot_bytes` each, so the cache stays [rows, slots, bytes] on every tier and a
read of whole groups is a read of a run of slots. The newest group is kept in full precision
(BlockCache's `recent` buffers) and encoded when the token after it arrives.
"""
from __future__ import annotations

import torch

from .compression import QuantConfig, dequantize, quantize


def used(quant: QuantConfig | None, channel_keys: bool, window: int | None) -> bool:
    """Whether a layer keeps its keys per channel: a compressed cache asked to, on a layer without a
    sliding window (a window's ring reuses its slots one token at a time, so it keeps per-token keys)."""
    return quant is not None and channel_keys and window is None


def slot_bytes(head_dim: int, cfg: QuantConfig) -> int:
    """Bytes per cache slot of encoded groups (a group's bytes spread over its G slots, rounded up)."""
    return -(-head_dim * cfg.packed_bytes(cfg.group_size) // cfg.group_size)


def encode(keys: torch.Tensor, cfg: QuantConfig) -> torch.Tensor:
    """keys [r, n * G, d] (whole groups) -> uint8 [r, n * G, slot_bytes(d)]."""
    r, s, d = keys.shape
    g = cfg.group_size
    if s % g:
        raise ValueError(f"per-channel keys are encoded in whole groups of {g} tokens, got {s}")
    width = slot_bytes(d, cfg)
    if s == 0:
        return keys.new_empty((r, 0, width), dtype=torch.uint8)
    per_channel = keys.reshape(r, s // g, g, d).transpose(-1, -2)  # [r, n, d, G]
    packed = quantize(per_channel, cfg).reshape(r, s // g, -1)  # [r, n, d * packed_bytes(G)]
    pad = g * width - packed.shape[-1]
    if pad:
        packed = torch.cat([packed, packed.new_zeros(r, s // g, pad)], dim=-1)
    return packed.reshape(r, s, width)


def decode(stored: torch.Tensor, head_dim: int, cfg: QuantConfig, dtype: torch.dtype,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [r, n * G, slot_bytes(d)] -> [r, n * G, d] of dtype, into `out` (that shape) if given."""
    r, s, width = stored.shape
    g, d = cfg.group_size, head_dim
    n = s // g
    if out is None:
        out = torch.empty((r, s, d), dtype=dtype, device=stored.device)
    if s == 0:
        return out
    packed = stored.reshape(r, n, g * width)[..., :d * cfg.packed_bytes(g)].reshape(r, n, d, -1)
    dequantize(packed, g, cfg, dtype, out=out.view(r, n, g, d).transpose(-1, -2))
    return out


def stored_and_seen(keys: torch.Tensor, cfg: QuantConfig, pads: list[int] | None = None):
    """A prompt's keys [b, kv, s, d] -> ((encoded groups [b, kv, v + e, slot bytes], the last group in
    full precision [b, kv, G, d], v), what the cache gives back for them).

    Groups end where the prompt ends (slot = column + v, v = -s mod G), so a row's groups depend on
    its own tokens only, not on the padding its block gives it; the last G keys wait in full
    precision (the group filling, until the next token starts a new one), the e = s - G before them
    are encoded. Left padding and the v slots before column 0 hold the row's first real key, so
    they never widen a channel's range."""
    b, kv, s, d = keys.shape
    g = cfg.group_size
    v = -s % g
    source = keys
    if pads and any(pads[:b]):
        source = keys.clone()
        for row, pad in enumerate(pads[:b]):
            if 0 < pad < s:
                source[row, :, :pad] = keys[row, :, pad:pad + 1]
    rows = source.reshape(b * kv, s, d)
    slots = torch.cat([rows[:, :1].expand(-1, v, -1), rows], dim=1)  # [r, v + s, d], whole groups
    encoded = encode(slots[:, :v + s - g], cfg)
    seen = torch.empty_like(slots)
    decode(encoded, d, cfg, keys.dtype, out=seen[:, :v + s - g])
    seen[:, v + s - g:] = slots[:, v + s - g:]
    stored = (encoded.view(b, kv, v + s - g, encoded.shape[-1]), slots[:, v + s - g:].reshape(b, kv, g, d), v)
    return stored, seen[:, v:].reshape(b, kv, s, d)
