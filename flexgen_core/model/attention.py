"""Attention maths: prefill over fresh keys, decode over cache segments wherever they live."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def prefill_mask(key_valid: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor | None = None,
                 window: int | None = None) -> torch.Tensor:
    """[b, s] valid-key flags (left padding) and positions -> [b, 1, s, s] boolean mask (True = attend).

    `segments` packs several continuations after one shared context (prefix sharing):
    segment 0 is the context, visible to all; segment i > 0 sees the context and itself.
    Every query may attend itself, so no row is empty and softmax never sees only -inf."""
    s = key_valid.shape[1]
    idx = torch.arange(s, device=key_valid.device)
    mask = (idx[None, :] <= idx[:, None])[None] & key_valid[:, None, :]
    if segments is not None:
        seg_q, seg_k = segments[:, :, None], segments[:, None, :]
        mask &= (seg_k == 0) | (seg_k == seg_q)
    if window is not None:
        mask &= (positions[:, :, None] - positions[:, None, :]) < window
    mask |= torch.eye(s, dtype=torch.bool, device=key_valid.device)[None]
    return mask[:, None]


def causal_mask_from_pads(pads: list[int], s: int, device) -> torch.Tensor:
    valid = torch.arange(s, device=device)[None, :] >= torch.tensor(pads, device=device)[:, None]
    idx = torch.arange(s, device=device)
    return prefill_mask(valid, idx.expand(len(pads), s))


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """x squashed into (-cap, cap) by tanh (Gemma 2's scores and logits); unchanged without a cap."""
    return x if not cap else torch.tanh(x / cap) * cap


def attention_scores(q, k, scale: float | None = None, softcap: float | None = None) -> torch.Tensor:
    """q k^T in fp32, scaled (by head_dim^-0.5 unless the family says otherwise) and, where the family
    caps its logits, soft-capped before any mask."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * (q.shape[-1] ** -0.5 if scale is None else scale)
    return soft_cap(scores, softcap)


def prefill_attention(q, k, v, mask=None, pads: list[int] | None = None, sparsity: float = 1.0,
                      scale: float | None = None, softcap: float | None = None) -> torch.Tensor:
    """q [b, h, s, d]; k, v [b, kv, s, d]; grouped heads share their key/value head.

    Plain causal attention over left-padded rows (`pads`, no mask) runs the fused causal
    kernel on each run of equally padded rows, skipping the padding instead of masking it;
    packed or windowed rows pass an explicit `mask`. With sparsity < 1 each query keeps only
    its top fraction of (unmasked) scores, the rule decode applies, so scoring measures it.
    Capped scores (`softcap`) have no fused kernel: they take the explicit path."""
    fused = sparsity >= 1.0 and not softcap
    if mask is None and fused:
        return _causal_over_pads(q, k, v, pads or [0] * q.shape[0], scale)
    if mask is None:
        mask = causal_mask_from_pads(pads or [0] * q.shape[0], q.shape[2], q.device)
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True, scale=scale)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = attention_scores(q, k, scale, softcap).masked_fill(~mask, torch.finfo(torch.float32).min)
    if sparsity < 1.0:
        keep = torch.ceil(mask.sum(-1, keepdim=True).double() * sparsity).long().clamp(min=1)  # per query
        keep = keep.expand(*scores.shape[:-1], 1)
        threshold = scores.sort(dim=-1, descending=True).values.gather(-1, keep - 1)
        scores = scores.masked_fill(scores < threshold, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)


def _causal_over_pads(q, k, v, pads: list[int], scale: float | None = None) -> torch.Tensor:
    if not any(pads):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=scale)
    out = torch.zeros_like(q)  # padded query positions produce zeros; no real token attends them
    start = 0
    while start < len(pads):
        end = start
        while end < len(pads) and pads[end] == pads[start]:
            end += 1
        p = pads[start]
        out[start:end, :, p:] = F.scaled_dot_product_attention(
            q[start:end, :, p:], k[start:end, :, p:], v[start:end, :, p:], is_causal=True, enable_gqa=True,
            scale=scale)
        start = end
    return out


def decode_attention_rows(q_rows, k_rows, v_rows, key_valid_rows, scale=None, softcap=None) -> torch.Tensor:
    """One new query per row group. q_rows [r, g, d]; k_rows, v_rows [r, L, d];
    key_valid_rows [r, L] -> [r, g, d]. A row is (sequence, kv head); g query heads share it."""
    scores = attention_scores(q_rows, k_rows, scale, softcap)
    scores = scores.masked_fill(~key_valid_rows[:, None, :], torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, dim=-1).to(v_rows.dtype)
    return torch.matmul(probs, v_rows)


# fp32 keys per chunk and per intra-op thread: a chunk is converted and used while it is still in the
# cores' caches; more threads take a larger chunk, so each op (with its thread wake-up) does more work
CPU_ATTENTION_CHUNK_BYTES_PER_THREAD = 2 << 20


def cpu_decode_attention_rows(q_rows, k_rows, v_rows, key_valid_rows, scale=None, softcap=None) -> torch.Tensor:
    """decode_attention_rows over rows in CPU memory, computed in fp32 a chunk of rows at a time.
    CPU matmuls in fp16 / bf16 run several times slower than in fp32 (and copy strided operands
    first), and converting the whole cache at once would triple its memory traffic: each chunk is
    converted into the same scratch buffers while it sits in cache (fresh buffers per chunk would
    page-fault their way in at a few GB/s). fp32 rows take the plain path."""
    if k_rows.dtype == torch.float32:
        return decode_attention_rows(q_rows, k_rows, v_rows, key_valid_rows, scale, softcap)
    r, length, d = k_rows.shape
    chunk_bytes = CPU_ATTENTION_CHUNK_BYTES_PER_THREAD * torch.get_num_threads()
    step = max(1, min(r, chunk_bytes // max(1, length * d * 4)))
    q32, invalid = q_rows.float(), ~key_valid_rows[:, None, :]
    keys = torch.empty((step, length, d), dtype=torch.float32)
    values = torch.empty((step, length, d), dtype=torch.float32)
    scores = torch.empty((step, q_rows.shape[1], length), dtype=torch.float32)
    out = torch.empty(q_rows.shape, dtype=torch.float32)
    scale, lowest = d ** -0.5 if scale is None else scale, torch.finfo(torch.float32).min
    for s in range(0, r, step):
        n = min(step, r - s)
        k32, v32, sc = keys[:n], values[:n], scores[:n]
        k32.copy_(k_rows[s:s + n])
        v32.copy_(v_rows[s:s + n])
        torch.bmm(q32[s:s + n], k32.transpose(1, 2), out=sc)
        sc.mul_(scale)
        if softcap:
            sc.div_(softcap).tanh_().mul_(softcap)
        sc.masked_fill_(invalid[s:s + n], lowest)
        torch.bmm(torch.softmax(sc, dim=-1), v32, out=out[s:s + n])
    return out.to(q_rows.dtype)


def sparse_decode_attention_rows(q_rows, k_rows, key_valid_rows, sparsity: float, gather_values,
                                 scale=None, softcap=None) -> torch.Tensor:
    """Top-k attention (the paper's sparse mode): each query head keeps the highest
    `sparsity` fraction of its row's real (unpadded) scores, and only the values at those
    positions are read, via `gather_values(positions [r, m]) -> values [r, m, d]`."""
    r, g, d = q_rows.shape
    scores = attention_scores(q_rows, k_rows, scale, softcap)
    scores = scores.masked_fill(~key_valid_rows[:, None, :], torch.finfo(torch.float32).min)
    keep = torch.ceil(key_valid_rows.sum(-1).double() * sparsity).long().clamp(min=1)  # per row: padding-independent
    top, positions = scores.topk(int(keep.max()), dim=-1)  # [r, g, m], sorted high to low
    rank = torch.arange(top.shape[-1], device=top.device)
    top = top.masked_fill(rank[None, None, :] >= keep[:, None, None], float("-inf"))
    probs = torch.softmax(top, dim=-1)
    values = gather_values(positions.reshape(r, -1)).reshape(r, g, -1, d)
    return (probs.to(values.dtype)[..., None] * values).sum(dim=2)
