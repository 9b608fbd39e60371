"""HardwareProfile: the bandwidths and flop rates the cost model needs, from a preset or a file.

`measure_profile` (in profiler.py) fills the same fields by timing this machine.
All bandwidths are bytes/s, all rates flop/s.
"""
from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields, replace

from .sizes import parse_size

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


# -- measuring this machine ------------------------------------------------------------


def measure_profile(offload_dir: str, device: str | None = None, *, link_bytes: int = 64 << 20,
                    disk_bytes: int = 64 << 20, min_time: float = 0.2, name: str = "measured") -> HardwareProfile:
    """Time the links, the offload directory's disk and the matmul rates of this machine.

    Sizes are small (tens of MiB, ~1 GFLOP) so a run takes seconds; each figure is the mean of
    repeats lasting at least `min_time`, after one warm-up.
    """
    import platform
    import time

    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    os.makedirs(offload_dir, exist_ok=True)
    dev = torch.device(device)
    dtype = torch.float16 if device == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    timeit = lambda fn: _mean_time(fn, sync, min_time)  # noqa: E731

    link = _measure_links(dev, link_bytes, timeit)
    disk_method, disk = _measure_disk(offload_dir, disk_bytes)
    big, dec = ((4096, 4096, 4096), (32, 8192, 8192)) if device == "cuda" else ((1024, 1024, 1024), (16, 2048, 2048))
    bmm_p, bmm_d = ((64, 1024, 128, 1024), (2048, 1, 128, 2048)) if device == "cuda" else \
        ((32, 512, 64, 512), (256, 1, 64, 1024))
    rates = dict(
        gemm_flops_prefill=_gemm_rate(dev, dtype, *big, timeit),
        gemm_flops_decode=_gemm_rate(dev, dtype, *dec, timeit),
        bmm_flops_prefill=_bmm_rate(dev, dtype, *bmm_p, timeit),
        bmm_flops_decode=_bmm_rate(dev, dtype, *bmm_d, timeit),
        device_mem_bw=_read_bw(dev, dtype, 256 << 20, timeit),
        gemv_bw=_gemv_bw(dev, dtype, 8192 if device == "cuda" else 4096, timeit),
        dequant_rate=_dequant_rate(dev, dtype, 8192 if device == "cuda" else 4096, timeit),
    )
    disk["disk_cache_op_s"] = _disk_cache_op_s(offload_dir)
    cpu = torch.device("cpu")
    cpu_time = lambda fn: _mean_time(fn, lambda: None, min_time)  # noqa: E731
    if device == "cuda":
        rates["layer_call_s"] = _layer_call_s(device, offload_dir)
        rates["cpu_attn_bw"] = _cpu_attention_bw(torch.float16, cpu_time)
    if device == "cpu":
        host = dict(cpu_gemm_flops=rates["gemm_flops_prefill"], cpu_attn_flops=rates["bmm_flops_decode"],
                    cpu_mem_bw=rates["device_mem_bw"])
    else:
        host = dict(cpu_gemm_flops=_gemm_rate(cpu, torch.float32, 1024, 1024, 1024, cpu_time),
                    cpu_attn_flops=_bmm_rate(cpu, torch.float32, 256, 1, 64, 1024, cpu_time),
                    cpu_mem_bw=_read_bw(cpu, torch.float32, 256 << 20, cpu_time))
    where = torch.cuda.get_device_name(dev) if device == "cuda" else f"{os.cpu_count()}-core CPU"
    source = (f"measured by flexgen-eval profile on {platform.node() or 'unknown host'} ({where}), "
              f"{time.strftime('%Y-%m-%d')}; disk {disk_method} on {os.path.abspath(offload_dir)}"
              + ("; no GPU, so the links are memcpy" if device == "cpu" else ""))
    return HardwareProfile(name=name, source=source, device=device, **link, **disk, **rates, **host)


def _mean_time(fn, sync, min_time: float) -> float:
    import time

    fn()
    sync()
    start, runs = time.perf_counter(), 0
    while True:
        fn()
        runs += 1
        sync()
        elapsed = time.perf_counter() - start
        if runs >= 2 and elapsed >= min_time:
            return elapsed / runs


def _measure_links(dev, nbytes: int, timeit) -> dict:
    import torch

    from .tiers import staged_to_host

    if dev.type == "cpu":  # the "gpu" tier is CPU memory: streaming is a memcpy
        src, dst = torch.ones(nbytes, dtype=torch.uint8), torch.empty(nbytes, dtype=torch.uint8)
        memcpy = nbytes / timeit(lambda: dst.copy_(src))
        cache = _strided_bw(src.view(torch.float32), dst.view(torch.float32), timeit)
        return dict(h2d_bw=memcpy, d2h_bw=memcpy, d2h_cache_bw=cache, h2d_bw_pageable=memcpy,
                    d2h_bw_pageable=memcpy)
    pinned = torch.ones(nbytes, dtype=torch.uint8).pin_memory()
    pageable = torch.ones(nbytes, dtype=torch.uint8)
    on_dev = torch.ones(nbytes, dtype=torch.uint8, device=dev)
    rate = lambda dst, src: nbytes / timeit(lambda: dst.copy_(src, non_blocking=True))  # noqa: E731
    return dict(
        h2d_bw=rate(on_dev, pinned), h2d_bw_pageable=rate(on_dev, pageable),
        d2h_bw=rate(pinned, on_dev), d2h_bw_pageable=rate(pageable, on_dev),
        d2h_cache_bw=_strided_bw(on_dev.view(torch.float16), pinned.view(torch.float16), timeit, staged_to_host),
    )


def _strided_bw(src, dst, timeit, copy=None) -> float:
    """Write a block of positions into every cache row (8 KiB pieces at a 16 KiB stride) from
    contiguous rows, with `copy(dst, src)` as the runtime does it (default: a plain copy)."""
    copy = copy or (lambda d, s: d.copy_(s, non_blocking=True))
    rows = src.numel() // (128 * 64)
    part = src[:rows * 64 * 64].view(rows, 64, 64)
    b = dst[:rows * 128 * 64].view(rows, 128, 64)
    return part.numel() * part.element_size() / timeit(lambda: copy(b[:, :64], part))


def _measure_disk(offload_dir: str, nbytes: int) -> tuple[str, dict]:
    """Write then read a scratch file, large chunks (weights) and small ones (cache rows).

    O_DIRECT keeps the page cache out when the filesystem allows it; otherwise the file is
    fsynced and dropped from the page cache with posix_fadvise before it is read.
    """
    import mmap
    import time

    path = os.path.join(offload_dir, f".flexgen-profile-{os.getpid()}.bin")
    direct = getattr(os, "O_DIRECT", 0)
    methods, out = set(), {}
    try:
        for label, chunk in (("", 8 << 20), ("_cache", 256 << 10)):
            total = max(chunk, nbytes // chunk * chunk)
            buf = mmap.mmap(-1, chunk)  # page aligned, as O_DIRECT needs
            buf.write(os.urandom(chunk))
            for use_direct in ((True, False) if direct else (False,)):
                try:
                    start = time.perf_counter()
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (direct if use_direct else 0))
                    try:
                        for _ in range(total // chunk):
                            os.write(fd, buf)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    write_time = time.perf_counter() - start
                    if not use_direct:
                        _drop_page_cache(path)
                    fd = os.open(path, os.O_RDONLY | (direct if use_direct else 0))
                    start = time.perf_counter()
                    try:
                        while os.readv(fd, [buf]) > 0:
                            pass
                    finally:
                        os.close(fd)
                    read_time = time.perf_counter() - start
                except OSError:
                    if use_direct:
                        continue  # e.g. tmpfs: EINVAL; fall back to fadvise
                    raise
                methods.add("O_DIRECT" if use_direct else "fsync+fadvise(DONTNEED)")
                out[f"disk_write{label}_bw"] = total / write_time
                out[f"disk_read{label}_bw"] = total / read_time
                break
            buf.close()
    finally:
        if os.path.exists(path):
            os.remove(path)
    return " and ".join(sorted(methods)), out


def _drop_page_cache(path: str):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _gemm_rate(dev, dtype, m: int, k: int, n: int, timeit) -> float:
    import torch

    a, b = torch.randn(m, k, device=dev).to(dtype), torch.randn(k, n, device=dev).to(dtype)
    return 2 * m * k * n / timeit(lambda: torch.matmul(a, b))


def _bmm_rate(dev, dtype, batch: int, q: int, d: int, keys: int, timeit) -> float:
    """Attention-shaped: scores = Q K^T over `keys` positions per (sequence, head)."""
    import torch

    a, b = torch.randn(batch, q, d, device=dev).to(dtype), torch.randn(batch, d, keys, device=dev).to(dtype)
    return 2 * batch * q * d * keys / timeit(lambda: torch.bmm(a, b))


def _gemv_bw(dev, dtype, n: int, timeit, rows: int = 4) -> float:
    """Weight bytes per second of a `rows`-row matmul over an n x n matrix larger than the caches:
    what decode with a small GPU batch gets, well below a plain read on a CPU."""
    import torch

    w = torch.randn(n, n, device=dev).to(dtype)
    x = torch.randn(rows, n, device=dev).to(dtype)
    return w.numel() * w.element_size() / timeit(lambda: torch.nn.functional.linear(x, w))


def _cpu_attention_bw(dtype, timeit, rows: int = 512, length: int = 512, d: int = 128) -> float:
    """Cache bytes per second through the CPU attention kernel the runtime runs, on cache-shaped
    data (strided views of rows with room for more positions). Its rate can be far below the memory
    bandwidth: on the H200 host OPT-30B's decode attended ~3.5 GB/s where a fp32 matmul test ran at
    87 GFLOP/s."""
    import torch

    from .attention import cpu_decode_attention_rows

    gen = torch.Generator().manual_seed(0)
    k, v = (torch.randn(rows, length + 32, d, generator=gen).to(dtype)[:, :length] for _ in range(2))
    q = torch.randn(rows, 1, d, generator=gen).to(dtype)
    valid = torch.ones(rows, length, dtype=torch.bool)
    nbytes = 2 * rows * length * d * k.element_size()
    return nbytes / timeit(lambda: cpu_decode_attention_rows(q, k, v, valid))


def _dequant_rate(dev, dtype, n: int, timeit) -> float:
    """Values per second of the runtime's own 4-bit group-wise dequantization of an n x n matrix."""
    import torch

    from .compression import QuantConfig, dequantize, quantize

    cfg = QuantConfig(4, 64)
    packed = quantize(torch.randn(n, n, device=dev), cfg)
    return n * n / timeit(lambda: dequantize(packed, n, cfg, dtype))


def _layer_call_s(device: str, offload_dir: str, steps: int = 8) -> float:
    """Host time per layer call of our own decode loop: OPT-125M (dummy weights, all on the
    device) decoding one sequence, where the device work per layer is a few microseconds."""
    import time

    import torch

    from .llm import LLM
    from .sampling import SamplingParams

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with LLM.from_pretrained("opt-125m", device=device, dtype="float16" if device == "cuda" else "float32",
                             dummy_weights=True, offload_dir=offload_dir) as llm:
        def run(n):
            sync()
            start = time.perf_counter()
            llm.generate([[5, 6, 7, 8, 9, 10, 11, 12]], SamplingParams(max_new_tokens=n, ignore_eos=True))
            sync()
            return time.perf_counter() - start
        run(2)
        one = min(run(1) for _ in range(3))
        many = min(run(steps + 1) for _ in range(3))
        calls = len(llm.layers)  # embedding, decoder layers, head
    return max(0.0, (many - one) / steps / calls)


def _disk_cache_op_s(offload_dir: str, rows: int = 12, positions: int = 256, width: int = 64) -> float:
    """Seconds per KV-cache operation on the disk tier, done as the runtime does it (a slice of a
    memory-mapped file read, one position written): a fixed cost the bulk rates do not show."""
    import time

    import torch

    from .tiers import DiskArray

    path = os.path.join(offload_dir, f".flexgen-profile-cache-{os.getpid()}.bin")
    try:
        arr = DiskArray(path, (rows, positions, width), torch.float32)
        new = torch.randn(rows, 1, width)
        arr.tensor[:] = torch.randn(rows, positions, width)
        ops, start = 0, time.perf_counter()
        while ops < 8 or time.perf_counter() - start < 0.2:
            t = ops % positions
            arr.tensor[:, t:t + 1] = new
            arr.tensor[:, :t + 1].clone()
            ops += 2
        return (time.perf_counter() - start) / ops
    finally:
        if os.path.exists(path):
            os.remove(path)


def _read_bw(dev, dtype, nbytes: int, timeit) -> float:
    import torch

    x = torch.ones(nbytes // torch.empty((), dtype=dtype).element_size(), dtype=dtype, device=dev)
    return nbytes / timeit(lambda: x.sum())
