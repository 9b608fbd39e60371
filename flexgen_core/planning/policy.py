"""Where each tensor kind lives and how a block is shaped: the knobs of the runtime."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..memory.compression import RANGES

CACHE_KEYS = ("token", "channel")


def parse_cpu_attention(value) -> float:
    """cpu_attention as typed (a CLI flag, an lm-eval model_arg): true / false (also on / off, yes / no)
    or the share in [0, 1] of the off-device cache attended on the CPU."""
    named = {"true": 1.0, "on": 1.0, "yes": 1.0, "false": 0.0, "off": 0.0, "no": 0.0}
    if isinstance(value, str) and value.strip().lower() in named:
        return named[value.strip().lower()]
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"cpu_attention must be true, false or a share in [0, 1], got {value!r}")
    return share


def _split(name: str, value) -> tuple[float, float, float]:
    try:
        parts = tuple(float(v) for v in value)
    except TypeError as e:
        raise ValueError(f"Policy.{name} must be three percentages (gpu, cpu, disk), got {value!r}") from e
    if len(parts) == 2:  # FlexGen's --percent gives gpu and cpu; disk is the rest
        parts = (parts[0], parts[1], 100.0 - parts[0] - parts[1])
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 100.0) > 1e-6:
        raise ValueError(
            f"Policy.{name} must be three non-negative percentages (gpu, cpu, disk) summing to 100, got {value!r}"
        )
    return parts


@dataclass(frozen=True)
class Policy:
    weights: tuple[float, float, float] = (100.0, 0.0, 0.0)
    cache: tuple[float, float, float] = (100.0, 0.0, 0.0)
    activations: tuple[float, float, float] = (100.0, 0.0, 0.0)
    gpu_batch_size: int = 8
    num_gpu_batches: int = 1
    # share of the off-device cache rows attended on the CPU (True = 1: FlexGen's CPU attention); the
    # link brings the rest to the device, so both work at once
    cpu_attention: float = 0.0
    overlap: bool = True
    compress_weight: bool = False
    compress_cache: bool = False
    compression_bits: int = 4
    compression_group_size: int = 64
    # how a weight group's 4/8-bit range is chosen: "minmax" (the paper's) or "mse" (least squared error)
    weight_ranges: str = "minmax"
    # how a compressed cache groups keys: "channel" (each channel over compression_group_size tokens,
    # the newest group in full precision: KIVI; SmolLM2's LAMBADA within a point of fp32 where per
    # token lost 6, results/compression_cpu.md) or "token" (each key's channels, as values: the paper's)
    cache_keys: str = "channel"
    attn_sparsity: float = 1.0  # fraction of attention scores kept per decode step (1.0: dense)

    def __post_init__(self):
        for name in ("weights", "cache", "activations"):
            object.__setattr__(self, name, _split(name, getattr(self, name)))
        for name in ("gpu_batch_size", "num_gpu_batches"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Policy.{name} must be a positive integer, got {v!r}")
        share = self.cpu_attention
        if not isinstance(share, (bool, int, float)) or not 0.0 <= share <= 1.0:
            raise ValueError(f"Policy.cpu_attention must be a share in [0, 1] (or a bool), got {share!r}")
        object.__setattr__(self, "cpu_attention", float(share))
        if self.compression_bits not in (4, 8):
            raise ValueError(f"Policy.compression_bits must be 4 or 8, got {self.compression_bits!r}")
        if self.compression_group_size < 1:
            raise ValueError(f"Policy.compression_group_size must be positive, got {self.compression_group_size!r}")
        if self.weight_ranges not in RANGES:
            raise ValueError(f"Policy.weight_ranges must be one of {', '.join(RANGES)}, got {self.weight_ranges!r}")
        if self.cache_keys not in CACHE_KEYS:
            raise ValueError(f"Policy.cache_keys must be one of {', '.join(CACHE_KEYS)}, got {self.cache_keys!r}")
        if not 0.0 < self.attn_sparsity <= 1.0:
            raise ValueError(f"Policy.attn_sparsity must be in (0, 1], got {self.attn_sparsity!r}")

    @property
    def block_size(self) -> int:
        return self.gpu_batch_size * self.num_gpu_batches

    @classmethod
    def from_percent(cls, percent, **kwargs) -> "Policy":
        """FlexGen's `--percent w_gpu w_cpu c_gpu c_cpu a_gpu a_cpu` (disk takes the rest)."""
        p = [float(x) for x in percent]
        if len(p) != 6:
            raise ValueError(f"percent needs six numbers (w_gpu, w_cpu, c_gpu, c_cpu, a_gpu, a_cpu), got {percent!r}")
        return cls(weights=p[0:2], cache=p[2:4], activations=p[4:6], **kwargs)

    def with_(self, **changes) -> "Policy":
        return replace(self, **changes)

    def describe(self) -> str:
        fmt = lambda t: "/".join(f"{x:g}" for x in t)  # noqa: E731
        text = (
            f"weights {fmt(self.weights)}, cache {fmt(self.cache)}, activations {fmt(self.activations)} "
            f"(% gpu/cpu/disk); block {self.gpu_batch_size}x{self.num_gpu_batches}"
        )
        flags = [n for n in ("cpu_attention", "compress_weight", "compress_cache") if getattr(self, n)]
        if 0 < self.cpu_attention < 1:
            flags[0] = f"cpu_attention {self.cpu_attention:.0%}"
        if self.compress_weight and self.weight_ranges != "minmax":
            flags[flags.index("compress_weight")] = f"compress_weight ({self.weight_ranges} ranges)"
        if self.compress_cache:
            flags[flags.index("compress_cache")] = f"compress_cache (keys per {self.cache_keys})"
        if not self.overlap:
            flags.append("no-overlap")
        return text + (f"; {', '.join(flags)}" if flags else "")
