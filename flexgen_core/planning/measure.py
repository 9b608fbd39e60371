"""Timing this machine: links, the offload directory's disk, matmul, attention and dequantization
rates, as the cost model's HardwareProfile fields. Small sizes: a run takes seconds."""
from __future__ import annotations

import mmap
import os
import platform
import time

import torch

from ..memory.compression import QuantConfig, dequantize, quantize
from ..memory.tiers import DiskArray, staged_to_host
from ..model.attention import cpu_decode_attention_rows
from .hardware import HardwareProfile


def measure_rates(offload_dir: str, device: str | None = None, *, link_bytes: int = 64 << 20,
                  disk_bytes: int = 64 << 20, min_time: float = 0.2, name: str = "measured",
                  dtype: torch.dtype | None = None) -> HardwareProfile:
    """Time the links, the offload directory's disk and the matmul rates of this machine (all but
    the host's time per layer call, which `flexgen_core.profiler` measures by running a model).

    Sizes are small (tens of MiB, ~1 GFLOP) so a run takes seconds; each figure is the mean of
    repeats lasting at least `min_time`, after one warm-up. The device's rates are measured in `dtype`
    (default the runtime's: fp16 on CUDA, fp32 on a CPU; bf16 on a CPU with AMX is several times fp32).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    os.makedirs(offload_dir, exist_ok=True)
    dev = torch.device(device)
    dtype = dtype or (torch.float16 if device == "cuda" else torch.float32)
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
              f"{time.strftime('%Y-%m-%d')}; matmuls in {str(dtype).split('.')[-1]}; disk {disk_method} on "
              f"{os.path.abspath(offload_dir)}"
              + ("; no GPU, so the links are memcpy" if device == "cpu" else ""))
    return HardwareProfile(name=name, source=source, device=device, **link, **disk, **rates, **host)


def _mean_time(fn, sync, min_time: float) -> float:
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
    a, b = torch.randn(m, k, device=dev).to(dtype), torch.randn(k, n, device=dev).to(dtype)
    return 2 * m * k * n / timeit(lambda: torch.matmul(a, b))


def _bmm_rate(dev, dtype, batch: int, q: int, d: int, keys: int, timeit) -> float:
    """Attention-shaped: scores = Q K^T over `keys` positions per (sequence, head)."""
    a, b = torch.randn(batch, q, d, device=dev).to(dtype), torch.randn(batch, d, keys, device=dev).to(dtype)
    return 2 * batch * q * d * keys / timeit(lambda: torch.bmm(a, b))


def _gemv_bw(dev, dtype, n: int, timeit, rows: int = 4) -> float:
    """Weight bytes per second of a `rows`-row matmul over an n x n matrix larger than the caches:
    what decode with a small GPU batch gets, well below a plain read on a CPU."""
    w = torch.randn(n, n, device=dev).to(dtype)
    x = torch.randn(rows, n, device=dev).to(dtype)
    return w.numel() * w.element_size() / timeit(lambda: torch.nn.functional.linear(x, w))


def _cpu_attention_bw(dtype, timeit, rows: int = 512, length: int = 512, d: int = 128) -> float:
    """Cache bytes per second through the CPU attention kernel the runtime runs, on cache-shaped
    data (strided views of rows with room for more positions). Its rate can be far below the memory
    bandwidth: on the H200 host OPT-30B's decode attended ~3.5 GB/s where a fp32 matmul test ran at
    87 GFLOP/s."""
    gen = torch.Generator().manual_seed(0)
    k, v = (torch.randn(rows, length + 32, d, generator=gen).to(dtype)[:, :length] for _ in range(2))
    q = torch.randn(rows, 1, d, generator=gen).to(dtype)
    valid = torch.ones(rows, length, dtype=torch.bool)
    nbytes = 2 * rows * length * d * k.element_size()
    return nbytes / timeit(lambda: cpu_decode_attention_rows(q, k, v, valid))


def _dequant_rate(dev, dtype, n: int, timeit) -> float:
    """Values per second of the runtime's own 4-bit group-wise dequantization of an n x n matrix."""
    cfg = QuantConfig(4, 64)
    packed = quantize(torch.randn(n, n, device=dev), cfg)
    return n * n / timeit(lambda: dequantize(packed, n, cfg, dtype))


def _disk_cache_op_s(offload_dir: str, rows: int = 12, positions: int = 256, width: int = 64) -> float:
    """Seconds per KV-cache operation on the disk tier, done as the runtime does it (a slice of a
    memory-mapped file read, one position written): a fixed cost the bulk rates do not show."""
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
    x = torch.ones(nbytes // torch.empty((), dtype=dtype).element_size(), dtype=dtype, device=dev)
    return nbytes / timeit(lambda: x.sum())
