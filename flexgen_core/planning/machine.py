"""What this machine has: a memory budget per tier and a hardware profile, read at load.

A budget the user names always wins. Every other tier gets what the machine has now, less a
margin for what the run needs beside the runtime's own tensors (the planner then keeps its own
10% margin inside each budget):

- compute device on CUDA: the driver's free memory less DEVICE_RESERVE (the CUDA context is
  already counted as used once torch has touched the device; the reserve covers the caching
  allocator's fragmentation, cuBLAS workspaces and the kernels' scratch);
- compute device on a CPU: DEVICE_SHARE_OF_RAM of the usable RAM (available RAM less
  HOST_RESERVE); the two tiers are one RAM there, so the CPU tier gets the rest and together
  they never count a byte twice;
- CPU memory beside a GPU: available RAM less HOST_RESERVE (the process itself, the tokenizer,
  the evaluation harness and its data sets, page-locked staging);
- disk: free space on the offload directory's filesystem less DISK_RESERVE (other writers, and
  the page cache's dirty pages that have not reached the disk yet).
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass, field

from ..memory.tiers import TIERS
from ..model.store import cache_root
from ..units import format_size, parse_size
from .hardware import HardwareProfile, guess_preset
from .measure import measure_rates

log = logging.getLogger(__name__)

GiB = 1 << 30
DEVICE_RESERVE = GiB // 2
HOST_RESERVE_MIN, HOST_RESERVE_SHARE = 2 * GiB, 0.10
DEVICE_SHARE_OF_RAM = 0.75
DISK_RESERVE_MIN, DISK_RESERVE_SHARE = 2 * GiB, 0.05


@dataclass(frozen=True)
class Budgets:
    """Bytes per tier for the planner, and where each figure came from."""

    bytes: dict  # {tier: bytes}
    sources: dict  # {tier: "named" or "detected: ..."}
    warnings: list = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"{t} {format_size(self.bytes[t])} ({self.sources[t]})" for t in TIERS]
        return "memory budgets: " + ", ".join(parts)


# -- readings (small functions, so tests can replace them) ---------------------------------
def cuda_free_bytes(device) -> tuple[int, int]:
    """(free, total) bytes of a CUDA device, as the driver reports them."""
    import torch

    return torch.cuda.mem_get_info(device)


def available_ram_bytes() -> int:
    """RAM that can be used without swapping (MemAvailable on Linux)."""
    import psutil

    return int(psutil.virtual_memory().available)


def free_disk_bytes(path: str) -> int:
    """Free space of the filesystem that holds `path` (or would, once created)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return int(shutil.disk_usage(path).free)


# -- budgets ----------------------------------------------------------------------------
def detected_budgets(device, offload_dir: str | None) -> dict:
    """{tier: (bytes, how it was read)} for this machine now."""
    import torch

    device = torch.device(device)
    ram = available_ram_bytes()
    host_usable = max(0, ram - max(HOST_RESERVE_MIN, int(HOST_RESERVE_SHARE * ram)))
    found = {}
    if device.type == "cuda":
        free, total = cuda_free_bytes(device)
        found["gpu"] = (max(0, free - DEVICE_RESERVE),
                        f"detected: {format_size(free)} free of {format_size(total)} on {device}, less "
                        f"{format_size(DEVICE_RESERVE)}")
        found["cpu"] = (host_usable, f"detected: {format_size(ram)} RAM available, less a reserve")
    else:
        device_share = int(DEVICE_SHARE_OF_RAM * host_usable)
        found["gpu"] = (device_share, f"detected: {DEVICE_SHARE_OF_RAM:.0%} of {format_size(ram)} RAM available "
                                      "less a reserve; the compute device is the CPU")
        found["cpu"] = (host_usable - device_share, "detected: the rest of that RAM")
    where = offload_dir or tempfile.gettempdir()
    disk = free_disk_bytes(where)
    found["disk"] = (max(0, disk - max(DISK_RESERVE_MIN, int(DISK_RESERVE_SHARE * disk))),
                     f"detected: {format_size(disk)} free on {where}, less a reserve")
    return found


def resolve_budgets(named: dict | None, device, offload_dir: str | None) -> Budgets:
    """The named budgets, and what the machine has for every tier not named."""
    named = {t: v for t, v in (named or {}).items() if v is not None}
    unknown = sorted(set(named) - set(TIERS))
    if unknown:
        raise ValueError(f"unknown memory tiers {unknown}; use {', '.join(TIERS)}")
    found = detected_budgets(device, offload_dir)
    sizes, sources, warnings = {}, {}, []
    for tier in TIERS:
        have, how = found[tier]
        if tier in named:
            sizes[tier], sources[tier] = parse_size(named[tier]), "named"
            if sizes[tier] > have:
                warnings.append(f"the {tier} budget {format_size(sizes[tier])} is more than this machine has for it "
                                f"({format_size(have)}, {how.removeprefix('detected: ')}); a plan that uses it all "
                                "may run out of memory")
        else:
            sizes[tier], sources[tier] = have, how
    for text in warnings:
        log.warning(text)
    return Budgets(sizes, sources, warnings)


# -- the hardware profile ------------------------------------------------------------------
def default_hardware(device, offload_dir: str | None = None, cache_dir: str | None = None):
    """The hardware profile to plan with when none is given. On a CPU device this machine is
    measured (a few seconds) and the profile kept under the cache, keyed by CPU model, cores and
    torch, so later runs plan alike; CPU machines differ by 6x in matmul rate, more than any preset
    could stand for. On CUDA, the preset closest to the card (measuring it runs a model, which
    `flexgen-eval profile` does)."""
    import torch


    device = torch.device(device)
    if device.type == "cuda":
        return guess_preset(device)
    path = os.path.join(cache_root(cache_dir), "hardware", f"{machine_key()}.json")
    if os.path.isfile(path):
        try:
            with open(path) as f:
                return HardwareProfile.from_dict(json.load(f))
        except (OSError, ValueError, TypeError) as e:
            log.warning("ignoring the cached hardware profile %s (%s); measuring again", path, e)
    scratch = tempfile.mkdtemp(prefix="flexgen-profile-", dir=offload_dir if offload_dir and os.path.isdir(offload_dir)
                               else None)
    try:
        profile = measure_rates(scratch, "cpu", name=f"measured {machine_key()}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        profile.save(tmp)
        os.replace(tmp, path)  # readers see a whole file or none
    except OSError as e:
        log.warning("could not keep the measured hardware profile at %s (%s)", path, e)
    return profile


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; else what the platform module says)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_key() -> str:
    """CPU model, cores, torch threads and version: what the CPU rates depend on."""
    import torch

    text = f"{cpu_name()}-{os.cpu_count()}cores-{torch.get_num_threads()}threads-torch{torch.__version__}"
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")
