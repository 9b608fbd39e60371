"""The KV cache of one block: per decoder layer and GPU batch, K and V split across tiers.

Rows are (sequence, kv head) pairs, so attention is independent per row and each
tier's rows can be attended where they live (CPU attention) or brought to the
compute device. With compression the cache holds group-quantized bytes on every
tier and is expanded where it is attended: values grouped per token, keys per token too or
per channel (key_groups.py: groups of G tokens, encoded as each fills; a layer's newest keys wait
in a `recent` buffer of G full-precision slots, on the same tiers). With sparse attention only the
values at each query's top-scoring positions are read. A sliding-window layer keeps only its window: its
buffers are a ring of `window` positions (cache column c at slot c mod window), so keys that no
query attends to cost no memory and no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.attention import cpu_decode_attention_rows, decode_attention_rows, sparse_decode_attention_rows
from . import key_groups
from .compression import QuantConfig, dequantize, quantize
from .tiers import TieredRows, TierSet, check_free_space


@dataclass
class Segment:
    index: int  # part number within the tiered buffers
    start: int
    end: int
    tier: str
    keys: torch.Tensor  # [rows, t + 1, d] on the device where this segment is attended
    values: torch.Tensor | None  # same, or None when values are gathered lazily (sparse attention)
    is_view: bool  # a view of the tier's storage: writing the new token writes the cache itself
    rows: slice  # this segment's rows within its part
    slot: int  # where the token being decoded goes (its column, or that modulo a sliding layer's window)


class BlockCache:
    def __init__(self, tiers: TierSet, num_layers: int, batch_shapes: list[tuple[int, int]], num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, percents, cpu_attention: float,
                 quant: QuantConfig | None = None, sparsity: float = 1.0, windows: list | None = None,
                 channel_keys: bool = False):
        self.tiers, self.kv, self.cpu_attention = tiers, num_kv_heads, float(cpu_attention)
        self.dtype, self.head_dim, self.quant, self.sparsity = dtype, head_dim, quant, sparsity
        self.entries: dict[tuple[int, int], tuple[TieredRows, TieredRows]] = {}
        self.recent: dict[tuple[int, int], TieredRows] = {}  # per-channel layers: keys of the newest group
        self.offset: dict[tuple[int, int], int] = {}  # per-channel layers: slot - column (set by the prompt)
        self.slots: dict[tuple[int, int], int] = {}  # positions kept per (layer, batch)
        # every row on the compute device, uncompressed: loads are views of the cache itself
        self.resident = percents[0] >= 100 and quant is None
        width, store_dtype = (head_dim, dtype) if quant is None else (quant.packed_bytes(head_dim), torch.uint8)
        # keys per channel on layers without a window (a sliding layer's ring keeps per-token keys)
        self.channel = [key_groups.used(quant, channel_keys, windows[j] if windows else None) for j in range(num_layers)]
        buffers = {}  # (layer, batch) -> [(name, shape, dtype)] of its keys, values (and recent keys)
        for j in range(num_layers):
            window = windows[j] if windows else None
            for k, (b, max_len) in enumerate(batch_shapes):  # (sequences, cache positions) per GPU batch
                slots = self.slots[j, k] = max_len if window is None else min(max_len, window)
                rows = b * num_kv_heads
                if self.channel[j]:  # slots = columns + v (< G): groups end where the prompt ends
                    key_shape = (rows, slots + quant.group_size, key_groups.slot_bytes(head_dim, quant))
                else:
                    key_shape = (rows, slots, width)
                buffers[j, k] = [("k", key_shape, store_dtype), ("v", (rows, slots, width), store_dtype)]
                if self.channel[j]:
                    buffers[j, k].append(("r", (rows, quant.group_size, head_dim), dtype))
        on_disk = sum(TieredRows.disk_bytes(shape, dt, percents) for specs in buffers.values() for _, shape, dt in specs)
        if on_disk:  # the whole block's cache, before any of it is written
            check_free_space(tiers.scratch_dir, on_disk, "the KV cache of this block (its disk share)")
        self._made: list[TieredRows] = []
        try:
            for (j, k), specs in buffers.items():
                for name, shape, dt in specs:
                    self._made.append(TieredRows(tiers, shape, dt, percents, f"{name}{j}-{k}"))
                made = self._made[-len(specs):]
                self.entries[j, k] = (made[0], made[1])
                if len(made) > 2:
                    self.recent[j, k] = made[2]
        except BaseException:
            self.free()  # nothing of a cache that could not be made stays on any tier
            raise

    # -- encoding ------------------------------------------------------------------------
    def decode(self, stored: torch.Tensor) -> torch.Tensor:
        return stored if self.quant is None else dequantize(stored, self.head_dim, self.quant, self.dtype)

    # -- writes (of stored forms: see stored_and_seen) --------------------------------------
    def store_prefill(self, j: int, k: int, keys, values: torch.Tensor):
        """keys, values [b, kv, s, width] for cache positions 0..s-1 (a window keeps the last of them);
        a per-channel layer's keys: (encoded groups, the newest group, offset) of key_groups.stored_and_seen."""
        if self.channel[j]:
            encoded, newest, self.offset[j, k] = keys
            kbuf, vbuf = self.entries[j, k]
            if encoded.shape[2]:
                kbuf.write(_rows(encoded), slice(0, encoded.shape[2]))
            self.recent[j, k].write(_rows(newest))
            vbuf.write(_rows(values), slice(0, values.shape[2]))
            return
        s, slots = keys.shape[2], self.slots[j, k]
        for buf, new in zip(self.entries[j, k], (keys, values)):
            if s > slots:  # columns s - slots .. s - 1, each at its slot in the ring
                new = torch.roll(new[:, :, s - slots:], s % slots, dims=2)
            buf.write(_rows(new), slice(0, min(s, slots)))

    def store_token(self, j: int, k: int, part: int, rows: slice, keys_rows, values_rows, t: int):
        """Rows [r, width] of the token at position t (all rows of the batch), for a run of a part's rows.
        A per-channel layer's key (in full precision) joins the newest group, or starts the next one
        once that group, full, is encoded into its slots."""
        slot = t % self.slots[j, k]
        kbuf, vbuf = self.entries[j, k]
        vbuf.write_part(part, values_rows[:, None], slice(slot, slot + 1), rows)
        if not self.channel[j]:
            kbuf.write_part(part, keys_rows[:, None], slice(slot, slot + 1), rows)
            return
        g, recent, slot = self.quant.group_size, self.recent[j, k], t + self.offset[j, k]
        if slot % g == 0:  # the newest group is full: encoded into its slots before this key starts the next
            group = recent.read_part(part, None, rows=rows)  # on the compute device
            # kbuf and recent split the same rows alike, so the group's rows are kbuf's too
            kbuf.write_rows(part, key_groups.encode(group, self.quant), slice(slot - g, slot), rows)
        recent.write_part(part, keys_rows[:, None], slice(slot % g, slot % g + 1), rows)

    def slot_valid(self, j: int, k: int, key_valid: torch.Tensor, t: int) -> torch.Tensor:
        """[b, t + 1] valid flags of cache columns -> the flags of what `load` gives back: the same
        columns, or for a ring the column each slot holds once the token at t is in place."""
        slots = self.slots[j, k]
        if t < slots:
            return key_valid
        held = t - (t - torch.arange(slots, device=key_valid.device)) % slots
        return key_valid[:, held]

    # -- reads -------------------------------------------------------------------------------
    def cpu_rows(self, tier: str, rows: int) -> int:
        """How many of an off-device part's rows (its first) are attended on the CPU: the
        cpu_attention share; the link brings the rest to the device."""
        return 0 if tier == "gpu" else round(rows * self.cpu_attention)

    def load(self, j: int, k: int, t: int) -> list[Segment]:
        """Positions 0..t-1 of every part (a window's last ones), each with an empty slot for the token
        being decoded: slot t, or in a full ring the oldest one, which leaves the window now."""
        kbuf, vbuf = self.entries[j, k]
        slots = self.slots[j, k]
        span, slot = min(t + 1, slots), t % slots
        lazy_values = self.sparsity < 1.0
        segments = []
        for i, (tier, start, end, storage) in enumerate(kbuf.parts):
            on_cpu = self.cpu_rows(tier, end - start)
            for lo, hi, where in ((0, on_cpu, "cpu"), (on_cpu, end - start, "gpu")):
                if hi <= lo:
                    continue
                rows = slice(lo, hi)
                if self.quant is None and (tier == "gpu" or (tier == "cpu" and where == "cpu")):
                    keys, values = storage[rows, :span], vbuf.parts[i][3][rows, :span]
                    segments.append(Segment(i, start + lo, start + hi, tier, keys, values, True, rows, slot))
                    continue
                keys = (self._expanded_channel_keys(j, k, i, rows, t, where) if self.channel[j]
                        else self._expanded(kbuf, i, rows, span, slot, where))
                values = None if lazy_values else self._expanded(vbuf, i, rows, span, slot, where)
                segments.append(Segment(i, start + lo, start + hi, tier, keys, values, False, rows, slot))
        return segments

    def _expanded(self, buf: TieredRows, part: int, rows: slice, span: int, slot: int, where: str) -> torch.Tensor:
        """Slots 0..span-1 of a run of rows, as a copy on `where`; `slot` is for the new token."""
        if self.quant is None:  # one read of every slot: the new token's is overwritten, no second buffer
            return buf.read_part(part, slice(0, span), to=where, rows=rows)
        dev = self.tiers.device if where == "gpu" else torch.device("cpu")
        out = torch.empty((rows.stop - rows.start, span, self.head_dim), dtype=self.dtype, device=dev)
        kept = slice(0, span - 1) if slot == span - 1 else slice(0, span)  # a new column, or a full ring
        dequantize(buf.read_part(part, kept, to=where, rows=rows), self.head_dim, self.quant, self.dtype,
                   out=out[:, kept])
        return out

    def _expanded_channel_keys(self, j: int, k: int, part: int, rows: slice, t: int, where: str) -> torch.Tensor:
        """Keys of positions 0..t-1 of a per-channel layer (its encoded groups decoded, then the newest
        group in full precision) and a slot for the new token, as a copy on `where`."""
        dev = self.tiers.device if where == "gpu" else torch.device("cpu")
        v, g = self.offset[j, k], self.quant.group_size
        out = torch.empty((rows.stop - rows.start, v + t + 1, self.head_dim), dtype=self.dtype, device=dev)  # by slot
        newest = (t + v - 1) // g * g  # the first slot of the newest group
        if newest:
            kbuf = self.entries[j, k][0]
            key_groups.decode(kbuf.read_part(part, slice(0, newest), to=where, rows=rows), self.head_dim, self.quant,
                              self.dtype, out=out[:, :newest])
        out[:, newest:t + v] = self.recent[j, k].read_part(part, slice(0, t + v - newest), to=where, rows=rows)
        return out[:, v:]

    def gather_values(self, j: int, k: int, seg: Segment, positions: torch.Tensor,
                      new_rows: torch.Tensor) -> torch.Tensor:
        """Values at slots `positions` [r, m] of one segment, reading only those rows."""
        if seg.values is not None:
            idx = positions[..., None].expand(-1, -1, seg.values.shape[-1]).to(seg.values.device)
            return seg.values.gather(1, idx)
        vbuf = self.entries[j, k][1]
        tier, _, _, storage = vbuf.parts[seg.index]
        old = positions.cpu() if tier == "disk" else positions  # the new token's slot is replaced below
        source = storage.tensor if tier == "disk" else storage
        rows = seg.rows.start + torch.arange(old.shape[0], device=old.device)[:, None]
        picked = source[rows.to(source.device), old.to(source.device)]  # [r, m, width]
        vbuf.tiers.moved(tier, read=picked.numel() * picked.element_size())
        picked = self.decode(picked.to(seg.keys.device))
        is_new = (positions == seg.slot).to(seg.keys.device)[..., None]
        return torch.where(is_new, new_rows.to(seg.keys.device)[:, None, :], picked)

    def free(self):
        for buf in self._made:
            buf.free()
        self._made, self.entries, self.recent, self.offset = [], {}, {}, {}


def stored_and_seen(x: torch.Tensor, quant: QuantConfig | None) -> tuple[torch.Tensor, torch.Tensor]:
    """What the cache stores of new keys or values [..., d], and what it gives back, which the new
    tokens are attended as too (so results do not depend on the tier a row lives in). Quantized
    once: the stored form is what BlockCache's store_* methods take."""
    if quant is None:
        return x, x
    stored = quantize(x, quant)
    return stored, dequantize(stored, x.shape[-1], quant, x.dtype)


def prompt_stored_and_seen(keys: torch.Tensor, values: torch.Tensor, quant: QuantConfig | None, channel_keys: bool,
                           pads: list[int] | None = None):
    """stored_and_seen of a prompt's keys and values [b, kv, s, d] (rows left-padded by `pads`); keys
    per channel where `channel_keys` (key_groups.used), which the attention over the prompt sees as
    the cache will give them back after it: all but the last G decoded, those as they are."""
    k = key_groups.stored_and_seen(keys, quant, pads) if channel_keys else stored_and_seen(keys, quant)
    return k, stored_and_seen(values, quant)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[b, kv, s, d] -> [b * kv, s, d]"""
    return x.reshape(-1, x.shape[2], x.shape[3])


def decode_over_segments(q, new_k, new_v, segments: list[Segment], key_valid: torch.Tensor, t: int,
                         cache: BlockCache, j: int, k: int, store_token, scale=None, softcap=None) -> torch.Tensor:
    """q [b, h, 1, d], new_k/new_v [b, kv, 1, d], key_valid [b, t + 1] (of cache columns) -> [b, h, 1, d].

    Each segment is attended where it lives; only q and the output cross the link for
    CPU-attended rows. `store_token(part, rows, k_rows, v_rows)` persists the new token (in the
    cache's stored form) of segments that are copies rather than views of their tier."""
    b, h, _, d = q.shape
    kv = new_k.shape[1]
    q_rows = q.reshape(b, kv, h // kv, d).reshape(b * kv, h // kv, d)
    k_rows, v_rows = _rows(new_k)[:, 0], _rows(new_v)[:, 0]
    # a per-channel layer's newest key waits in full precision until its group fills
    k_stored, k_seen = (k_rows, k_rows) if cache.channel[j] else stored_and_seen(k_rows, cache.quant)
    v_stored, v_seen = stored_and_seen(v_rows, cache.quant)
    valid_rows = cache.slot_valid(j, k, key_valid, t).repeat_interleave(kv, dim=0)
    out = torch.empty_like(q_rows)
    for seg in segments:
        dev = seg.keys.device
        sl = slice(seg.start, seg.end)
        seg.keys[:, seg.slot] = k_seen[sl].to(dev)
        if seg.values is not None:
            seg.values[:, seg.slot] = v_seen[sl].to(dev)
        if not seg.is_view:
            store_token(seg.index, seg.rows, k_stored, v_stored)
        q_seg, valid = q_rows[sl].to(dev), valid_rows[sl].to(dev)
        if cache.sparsity < 1.0:
            gather = lambda pos, seg=seg, sl=sl: cache.gather_values(j, k, seg, pos, v_seen[sl])  # noqa: E731
            result = sparse_decode_attention_rows(q_seg, seg.keys, valid, cache.sparsity, gather, scale, softcap)
        elif dev.type == "cpu":
            result = cpu_decode_attention_rows(q_seg, seg.keys, seg.values, valid, scale, softcap)
        else:
            result = decode_attention_rows(q_seg, seg.keys, seg.values, valid, scale, softcap)
        out[sl] = result.to(q.device)
    return out.reshape(b, h, 1, d)
