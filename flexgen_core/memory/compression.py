"""Asymmetric group-wise quantization (4 or 8 bits), as in the FlexGen paper.

Values are cut into groups of `group_size` along the last dimension; each group
stores its minimum and step in fp16 and one unsigned code per value, two codes per
byte at 4 bits. A group with max == min stores step 0 and decodes to its minimum.

Each group's range is its min and max (`ranges="minmax"`, the paper's), or the range of least
squared error (`ranges="mse"`): min-max, the range shrunk about its middle by each of SHRINKS, then
least-squares refits of minimum and step to the codes of the best so far, whichever reconstructs
the group best (so never worse than min-max). The stored format and dequantization are the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

STATS_DTYPE = torch.float16  # per-group minimum and step: the paper's layout (4 bytes a group)


RANGES = ("minmax", "mse")
SHRINKS = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)  # of a group's min-max range, tried by ranges="mse"
REFITS = 2


@dataclass(frozen=True)
class QuantConfig:
    bits: int = 4
    group_size: int = 64
    ranges: str = "minmax"

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"quantization bits must be 4 or 8, got {self.bits}")
        if self.group_size < 2 or self.group_size % 2:
            raise ValueError(f"quantization group size must be an even number >= 2, got {self.group_size}")
        if self.ranges not in RANGES:
            raise ValueError(f"quantization ranges must be one of {', '.join(RANGES)}, got {self.ranges!r}")

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    def groups(self, n: int) -> int:
        return -(-n // self.group_size)

    def packed_bytes(self, n: int) -> int:
        """Bytes for a row of n values: codes plus fp16 minimum and step per group."""
        g = self.groups(n)
        return g * self.group_size * self.bits // 8 + g * 2 * STATS_DTYPE.itemsize


# Tensors are (de)quantized a block of rows at a time, about this many values each: it bounds the
# fp32 temporaries (~9 bytes per value of a block) where a whole OPT-30B prompt cache batch (~0.5 G
# values) would need several GB of scratch on the GPU, and on a CPU a block stays in cache
# (dequantization 2.4x faster on a 4096 x 4096 matrix, 2 cores).
BLOCK_VALUES = {"cpu": 1 << 20, "cuda": 1 << 24}
SCRATCH_BYTES_PER_VALUE = 9


# Where dequantization multiplies the codes into fp32 and adds the minimum straight into the output
# (two elementwise passes after unpacking, ~15 bytes of memory traffic per value instead of ~31; the same bits):
# on a GPU, memory-bound, that is the fast way; on a CPU torch's mixed-dtype kernels are not
# vectorised and it measured 1.6-8x slower (4096 x 4096, 2 cores).
TWO_PASS_DEVICES = {"cuda"}


def block_values(device_type: str) -> int:
    return BLOCK_VALUES.get(device_type, BLOCK_VALUES["cuda"])


def scratch_bytes(device_type: str, values: float) -> float:
    """Temporary memory a (de)quantization of at most `values` values holds on a device."""
    return min(values, block_values(device_type)) * SCRATCH_BYTES_PER_VALUE


def quantize(x: torch.Tensor, cfg: QuantConfig) -> torch.Tensor:
    """[..., n] -> uint8 [..., packed_bytes(n)] (codes, then minimums, then steps)."""
    n = x.shape[-1]
    out = torch.empty((*x.shape[:-1], cfg.packed_bytes(n)), dtype=torch.uint8, device=x.device)
    for src, dest in _blocks(x, out, n):
        dest.copy_(_quantize_rows(src.reshape(-1, n), cfg).view(dest.shape))
    return out


def dequantize(packed: torch.Tensor, n: int, cfg: QuantConfig, dtype: torch.dtype,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [..., packed_bytes(n)] -> [..., n] of dtype; into `out` (that shape, any strides) if given,
    which saves a copy when the values land in part of a larger buffer."""
    shape = (*packed.shape[:-1], n)
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=packed.device)
    elif tuple(out.shape) != shape:
        raise ValueError(f"dequantize: out has shape {tuple(out.shape)}, expected {shape}")
    two_pass = packed.device.type in TWO_PASS_DEVICES and cfg.groups(n) * cfg.group_size == n
    for src, dest in _blocks(packed, out, n):
        rows = src.reshape(-1, src.shape[-1])
        if two_pass:
            _dequantize_rows_into(dest, rows, n, cfg)
        else:
            dest.copy_(_dequantize_rows(rows, n, cfg).view(dest.shape))  # rounds once
    return out


def _blocks(src: torch.Tensor, dest: torch.Tensor, values_per_row: int):
    """(source, destination) pairs of blocks along the first dimension, about BLOCK_VALUES values
    each, so every block's result goes straight to its place in `dest`."""
    if src.dim() == 1:
        src, dest = src[None], dest[None]
    per_item = max(1, math.prod(src.shape[1:-1]) * values_per_row)
    step = max(1, block_values(src.device.type) // per_item)
    for r in range(0, src.shape[0], step):
        yield src[r:r + step], dest[r:r + step]


def _quantize_rows(x: torch.Tensor, cfg: QuantConfig) -> torch.Tensor:
    """[r, n] -> uint8 [r, packed_bytes(n)]."""
    n, gs = x.shape[-1], cfg.group_size
    g = cfg.groups(n)
    xf = x.float()
    if g * gs != n:  # pad with the row's last value so padding never widens a group's range
        xf = torch.cat([xf, xf[:, -1:].expand(-1, g * gs - n)], dim=-1)
    groups = xf.reshape(-1, g, gs)
    lo, step = _minmax_range(groups, groups.amin(-1), groups.amax(-1), cfg.levels)
    if cfg.ranges == "mse":
        lo, step = _least_error_range(groups, lo, step, cfg.levels)
    codes = _codes(groups, lo.float(), step.float(), cfg.levels).to(torch.uint8).reshape(-1, g * gs)
    if cfg.bits == 4:
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    stats = torch.cat([lo, step], dim=-1).contiguous().view(torch.uint8)
    return torch.cat([codes, stats], dim=-1)


def _minmax_range(groups, low, high, levels):
    """fp16 minimum and step covering [low, high]: the minimum rounded down and the step up, so fp16
    storage cannot push a value outside the representable range of its group."""
    lo = low.to(STATS_DTYPE)
    lo = torch.where(lo.float() > low, torch.nextafter(lo, torch.full_like(lo, -torch.inf)), lo)
    step = ((high - lo.float()) / levels).to(STATS_DTYPE)
    step = torch.where(step.float() * levels < high - lo.float(),
                       torch.nextafter(step, torch.full_like(step, torch.inf)), step)
    return lo, step


def _codes(groups, lo, step, levels):
    """Codes [r, g, gs] (float) of fp32 values for a fp32 minimum and step [r, g]; 0 where step is 0."""
    safe = torch.where(step > 0, step, torch.ones_like(step))
    codes = groups - lo[..., None]  # a new tensor: the in-place steps below never touch the values
    codes.div_(safe[..., None]).round_().clamp_(0, levels)
    return codes.masked_fill_(~(step[..., None] > 0), 0)


def _squared_error(groups, lo, step, levels):
    codes = _codes(groups, lo, step, levels)
    return (codes.mul_(step[..., None]).add_(lo[..., None]) - groups).pow_(2).sum(-1)


def _least_error_range(groups, lo, step, levels):
    """Per group, the fp16 (minimum, step) of least squared reconstruction error among: the min-max
    range (lo, step), that range shrunk about its middle by each of SHRINKS, and REFITS least-squares
    refits of minimum and step to the best codes so far."""
    best_lo, best_step = lo, step
    best = _squared_error(groups, lo.float(), step.float(), levels)

    def consider(lo, step):
        nonlocal best, best_lo, best_step
        lo, step = lo.to(STATS_DTYPE), step.clamp_min(0).to(STATS_DTYPE)
        err = _squared_error(groups, lo.float(), step.float(), levels)
        better = err < best
        best = torch.where(better, err, best)
        best_lo, best_step = torch.where(better, lo, best_lo), torch.where(better, step, best_step)

    low, high = groups.amin(-1), groups.amax(-1)
    middle, width = (low + high) / 2, high - low
    for shrink in SHRINKS:
        consider(middle - shrink * width / 2, shrink * width / levels)
    for _ in range(REFITS):  # least squares of x ~ lo + step * code over the group, codes held fixed
        codes = _codes(groups, best_lo.float(), best_step.float(), levels)
        code_mean, mean = codes.mean(-1), groups.mean(-1)
        spread = (codes - code_mean[..., None]).pow_(2).sum(-1)
        covariance = ((codes - code_mean[..., None]) * (groups - mean[..., None])).sum(-1)
        step = torch.where(spread > 0, covariance / spread.clamp_min(1e-30), best_step.float())
        consider(mean - step * code_mean, step)
    return best_lo, best_step


def _codes_and_stats(packed: torch.Tensor, n: int, cfg: QuantConfig):
    """uint8 [r, packed_bytes(n)] -> codes uint8 [r, g, group_size], minimum and step fp32 [r, g]."""
    g, gs = cfg.groups(n), cfg.group_size
    code_bytes = g * gs * cfg.bits // 8
    codes, stats = packed[:, :code_bytes], packed[:, code_bytes:]
    stats = stats.contiguous().view(STATS_DTYPE).float()
    if cfg.bits == 4:  # low nibble first, as quantize packs them
        codes = torch.stack([codes & 0x0F, codes >> 4], dim=-1)
    return codes.reshape(-1, g, gs), stats[:, :g], stats[:, g:]


def _dequantize_rows_into(dest: torch.Tensor, packed: torch.Tensor, n: int, cfg: QuantConfig):
    """_dequantize_rows's values written into dest ([..., n], any dtype, last dim contiguous or not):
    float(code) * step and + minimum in fp32, as there, rounded once into dest's dtype. n must be a
    whole number of groups."""
    codes, lo, step = _codes_and_stats(packed, n, cfg)
    scaled = torch.mul(codes, step[..., None])  # uint8 x fp32 -> fp32
    grouped = dest.unflatten(-1, codes.shape[1:])
    torch.add(scaled.view(grouped.shape), lo.view(*grouped.shape[:-1], 1), out=grouped)


def _dequantize_rows(packed: torch.Tensor, n: int, cfg: QuantConfig) -> torch.Tensor:
    """uint8 [r, packed_bytes(n)] -> float32 [r, n]: minimum + code * step, in place."""
    codes, lo, step = _codes_and_stats(packed, n, cfg)
    values = codes.float()
    values.mul_(step[..., None]).add_(lo[..., None])
    return values.reshape(values.shape[0], -1)[:, :n]
