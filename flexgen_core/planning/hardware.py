"""HardwareProfile: the bandwidths and flop rates the cost model needs, from a preset or a file.

`measure.measure_rates` fills the same fields by timing this machine (`flexgen_core.profiler`
adds what only running the model shows).
All bandwidths are bytes/s, all rates flop/s.
"""
from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields, replace

from ..units import parse_size

GiB = 1 << 30  # FlexGen's fitted constants are in GiB/s (its utils.GB is 1 << 30)
T = 1e12


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    source: str  # where the numbers come from: a datasheet, a fit, or a measurement
    device: str  # the compute device: "cuda" or "cpu" (then the "gpu" tier is resident CPU memory)
    # links between the compute device and CPU memory
    h2d_bw: float  # CPU -> device, pinned (weights, cache, activations)
    d2h_bw: float  # device -> CPU, pinned, contiguous (activations)
    d2h_cache_bw: float  # device -> CPU for KV cache rows (strided: one position per row at decode)
    # the offload directory
    disk_read_bw: float  # disk -> CPU (weights, activations)
    disk_write_bw: float  # CPU -> disk (activations)
    disk_read_cache_bw: float  # disk -> CPU for KV cache
    disk_write_cache_bw: float  # CPU -> disk for KV cache
    # the compute device
    device_mem_bw: float  # memory read bandwidth: the roofline for small-batch decode
    gemm_flops_prefill: float  # large-batch matmul
    gemm_flops_decode: float  # matmul with one new token per sequence
    bmm_flops_prefill: float  # attention scores and weighted sum, prompt
    bmm_flops_decode: float  # attention, one query per sequence
    # the host CPU
    cpu_gemm_flops: float
    cpu_attn_flops: float  # CPU attention over CPU-resident cache (decode)
    cpu_mem_bw: float
    # small-batch matmul over weights that are not in cache (decode with a few sequences per GPU
    # batch), as bytes of weights per second; None: device_mem_bw
    gemv_bw: float | None = None
    # fixed cost of one KV-cache read or write on the disk tier (a memory-mapped slice), seconds
    disk_cache_op_s: float = 0.0
    # bytes of half-precision KV cache per second that the runtime's own CPU attention kernel
    # (attention.cpu_decode_attention_rows) attends; None: cpu_mem_bw
    cpu_attn_bw: float | None = None
    # host time of one layer call for one GPU batch (Python, kernel launches, hand-offs), seconds:
    # what a layer costs when its device work is negligible; 0 = not charged
    layer_call_s: float = 0.0
    # values per second the runtime's 4-bit dequantization (compression.dequantize) produces on the
    # compute device: elementwise passes in fp32 (two on a GPU), far below one read of the packed bytes
    # (measured on the 2-core VM: 0.36 G values/s where memory bandwidth would give 5.8); None:
    # device_mem_bw over the packed plus unpacked bytes (a fused kernel)
    dequant_rate: float | None = None
    # informational: the unpinned link rates (the runtime pins what it streams)
    h2d_bw_pageable: float | None = None
    d2h_bw_pageable: float | None = None
    # default memory of the machine ({"gpu": bytes, ...}); plan flags override it
    memory: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"HardwareProfile.device must be 'cuda' or 'cpu', got {self.device!r}")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith(("_bw", "_flops", "_pageable", "_rate")) and v is not None and not v > 0:
                raise ValueError(f"HardwareProfile.{f.name} must be positive, got {v!r}")
        for name in ("disk_cache_op_s", "layer_call_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"HardwareProfile.{name} must be >= 0, got {getattr(self, name)!r}")
        object.__setattr__(self, "memory", {k: parse_size(v) for k, v in dict(self.memory).items()})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HardwareProfile":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown hardware profile fields: {', '.join(unknown)}")
        missing = sorted(f.name for f in fields(cls)
                         if f.name not in data and f.default is MISSING and f.default_factory is MISSING)
        if missing:
            raise ValueError(f"hardware profile lacks: {', '.join(missing)}")
        return cls(**data)

    def save(self, path: str):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    def with_(self, **changes) -> "HardwareProfile":
        return replace(self, **changes)

    def describe(self) -> str:
        gbs = lambda v: "-" if v is None else f"{v / GiB:.4g} GiB/s"  # noqa: E731
        tfl = lambda v: f"{v / 1e12:.3g} TFLOP/s"  # noqa: E731
        rows = [
            ("compute device", self.device),
            ("CPU->device (pinned / pageable)", f"{gbs(self.h2d_bw)} / {gbs(self.h2d_bw_pageable)}"),
            ("device->CPU (pinned / pageable)", f"{gbs(self.d2h_bw)} / {gbs(self.d2h_bw_pageable)}"),
            ("device->CPU, KV cache", gbs(self.d2h_cache_bw)),
            ("disk read / write", f"{gbs(self.disk_read_bw)} / {gbs(self.disk_write_bw)}"),
            ("disk read / write, KV cache", f"{gbs(self.disk_read_cache_bw)} / {gbs(self.disk_write_cache_bw)}"),
            ("device memory", gbs(self.device_mem_bw)),
            ("device GEMM prefill / decode", f"{tfl(self.gemm_flops_prefill)} / {tfl(self.gemm_flops_decode)}"),
            ("device BMM prefill / decode", f"{tfl(self.bmm_flops_prefill)} / {tfl(self.bmm_flops_decode)}"),
            ("CPU GEMM / attention", f"{tfl(self.cpu_gemm_flops)} / {tfl(self.cpu_attn_flops)}"),
            ("CPU memory", gbs(self.cpu_mem_bw)),
            ("CPU attention (cache bytes)", gbs(self.cpu_attn_bw) if self.cpu_attn_bw else "= CPU memory"),
            ("host time per layer call", f"{self.layer_call_s * 1e3:.3f} ms"),
            ("4-bit dequantization", f"{self.dequant_rate / 1e9:.3g} G values/s" if self.dequant_rate
             else "= device memory"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"hardware profile {self.name!r} ({self.source})"]
        lines += [f"  {k:<{width}}  {v}" for k, v in rows]
        return "\n".join(lines)


# The host side of the GPU presets other than t4 (CPU, disk) is the paper's GCP machine:
# these are different GPUs in the same kind of box, not measurements of any real box.
_PAPER_HOST = dict(
    disk_read_bw=0.473 * GiB, disk_write_bw=2.015 * GiB,
    disk_read_cache_bw=0.473 * GiB, disk_write_cache_bw=0.746 * GiB,
    cpu_gemm_flops=0.0123 * T, cpu_attn_flops=0.0123 * T, cpu_mem_bw=20e9,
)


def _gpu_preset(name, *, hbm, fp16_peak, link, gpu_mem, datasheet):
    """A GPU in the paper's host. Device rates: 70% of dense fp16 peak for prefill GEMM, and the
    T4 fit's ratios for the rest (decode GEMM 0.20x, prefill BMM 0.47x of prefill GEMM; decode
    BMM scaled from the T4's 0.079 TFLOP/s by the memory-bandwidth ratio, as it is memory bound).
    d2h of cache rows: the T4 fit's 0.20x of the contiguous rate."""
    prefill = 0.7 * fp16_peak
    return HardwareProfile(
        name=name, device="cuda",
        source=(f"derived: {datasheet}; PCIe pinned ~{link / 1e9:.0f} GB/s typical; device rates scaled "
                "from the FlexGen T4 fit; host CPU and disk as the paper's GCP T4 machine"),
        h2d_bw=link, d2h_bw=link, d2h_cache_bw=0.2 * link,
        device_mem_bw=hbm,
        gemm_flops_prefill=prefill, gemm_flops_decode=prefill * 4.3 / 21.24,
        bmm_flops_prefill=prefill * 9.97 / 21.24, bmm_flops_decode=0.079 * T * hbm / 320e9,
        memory={"gpu": gpu_mem},
        **_PAPER_HOST,
    )


PRESETS: dict[str, HardwareProfile] = {
    "t4": HardwareProfile(
        name="t4", device="cuda",
        source=("the FlexGen authors' constants fitted on their GCP T4 machine (the CostModelConfig of their "
                "LP script, in GiB/s; machine per Sheng et al. ICML 2023 Table 1: T4 16GB, 208 GB DRAM, "
                "1.5 TB SSD); device memory 320 GB/s from the NVIDIA T4 datasheet; CPU memory 20 GB/s assumed"),
        h2d_bw=12.89 * GiB, d2h_bw=4.82 * GiB, d2h_cache_bw=0.97 * GiB,
        device_mem_bw=320e9,
        gemm_flops_prefill=21.24 * T, gemm_flops_decode=4.3 * T,
        bmm_flops_prefill=9.97 * T, bmm_flops_decode=0.079 * T,
        memory={"gpu": 15 * GiB, "cpu": 208 * 10**9, "disk": 1500 * 10**9},  # 15 GiB usable of 16 GB
        **_PAPER_HOST,
    ),
    "a100-40g": _gpu_preset("a100-40g", hbm=1555e9, fp16_peak=312 * T, link=24e9, gpu_mem="40GiB",
                            datasheet="NVIDIA A100 40GB datasheet (1555 GB/s HBM2, 312 TFLOP/s dense fp16)"),
    "a100-80g": _gpu_preset("a100-80g", hbm=2039e9, fp16_peak=312 * T, link=24e9, gpu_mem="80GiB",
                            datasheet="NVIDIA A100 80GB SXM datasheet (2039 GB/s HBM2e, 312 TFLOP/s dense fp16)"),
    "h100": _gpu_preset("h100", hbm=3350e9, fp16_peak=989 * T, link=50e9, gpu_mem="79GiB",
                        datasheet="NVIDIA H100 SXM5 80GB datasheet (3.35 TB/s HBM3, 989 TFLOP/s dense fp16), PCIe 5.0"),
    "rtx4090": _gpu_preset("rtx4090", hbm=1008e9, fp16_peak=165 * T, link=24e9, gpu_mem="23GiB",
                           datasheet="NVIDIA Ada whitepaper, RTX 4090 (1008 GB/s GDDR6X, 165 TFLOP/s dense fp16 "
                                     "with fp32 accumulate)"),
    # Measured with `flexgen-eval profile --device cpu` on the project's 2-core x86 VM (no GPU), with
    # the machine otherwise idle; a CPU-only run streams with memcpy, so the link rates are memcpy rates.
    "cpu": HardwareProfile(
        name="cpu", device="cpu",
        source=("measured by `flexgen-eval profile --device cpu` on the project's 2-core x86 VM, no GPU, "
                "fp32, disk with O_DIRECT, 2026-11-26; rates vary with load: measure your own"),
        h2d_bw=7.2e9, d2h_bw=7.2e9, d2h_cache_bw=3.8e9, h2d_bw_pageable=7.2e9, d2h_bw_pageable=7.2e9,
        disk_read_bw=1.27e9, disk_write_bw=2.13e9, disk_read_cache_bw=1.07e9, disk_write_cache_bw=1.18e9,
        device_mem_bw=15e9, gemv_bw=8.7e9, disk_cache_op_s=1e-5,
        gemm_flops_prefill=59.6e9, gemm_flops_decode=11.5e9, bmm_flops_prefill=34.5e9, bmm_flops_decode=4.0e9,
        cpu_gemm_flops=59.6e9, cpu_attn_flops=4.0e9, cpu_mem_bw=15e9,
    ),
}


def load_profile(name_or_path) -> HardwareProfile:
    """A preset by name (t4, a100-40g, a100-80g, h100, rtx4090, cpu) or a JSON file written by `profile`."""
    if isinstance(name_or_path, HardwareProfile):
        return name_or_path
    key = str(name_or_path)
    if key.lower() in PRESETS:
        return PRESETS[key.lower()]
    if os.path.isfile(key):
        try:
            with open(key) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"hardware profile {key!r} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"hardware profile {key!r} must hold a JSON object")
        return HardwareProfile.from_dict(data)
    raise ValueError(f"no hardware preset or file {key!r}; presets: {', '.join(PRESETS)}")



def guess_preset(device) -> HardwareProfile:
    """The preset closest to a compute device (`flexgen-eval profile` measures the real one)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return PRESETS["cpu"]
    name = torch.cuda.get_device_name(device).lower()
    total = torch.cuda.get_device_properties(device).total_memory
    if "h100" in name or "h200" in name:
        return PRESETS["h100"]
    if "a100" in name:
        return PRESETS["a100-80g" if total > 60 * 2**30 else "a100-40g"]
    if "4090" in name:
        return PRESETS["rtx4090"]
    return PRESETS["t4"]
