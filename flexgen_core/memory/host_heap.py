"""Freed host memory handed back to the system once a run's heaps hold too much of it.

glibc serves each thread from an arena of its own and takes blocks up to its mmap threshold from
the arena's heaps (the threshold rises to 32 MiB as larger blocks are freed, so a layer's
activations, cache reads and experts all come from heaps). The I/O threads allocate what the
compute thread frees, and a heap gives memory back only from its top: freed memory piles up.
Measured (OLMoE-1B-7B in bf16, experts and KV cache on disk, 3 GiB budget, 2-core EPYC VM): a
prefill of 64 sequences held 10.5 GB of anonymous memory and grew with every batch (256 sequences:
19 GB in 341 arena heaps, and the VM's 24 GB thrashed); with malloc_trim(0) after each layer step it
held 2.1-2.7 GB, in the same time (144 s against 146 s). malloc_trim also returns free pages inside
a heap, not only at its top. Returned pages are faulted in again when reused (trimming after every
layer step made a batch-1 prefill 6.1-7.0 -> 7.4-8.7 s, its decode steps 0.73 -> 0.78 s: each layer
frees the experts it read and the next reads as many), so the caller trims only once the resident
freed memory exceeds what its next steps will reuse (the scheduler keeps two layers' weights; a
batch-1 OLMoE prefill peaks at 1.4 GB). Elsewhere than glibc (or Linux's /proc) this does nothing."""
from __future__ import annotations

import ctypes
import ctypes.util
import os

KEEP_RESIDENT_FREE = 512 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc_functions():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None, None
    trim, info = getattr(libc, "malloc_trim", None), getattr(libc, "mallinfo2", None)  # mallinfo2: glibc 2.33
    if trim is None or info is None:
        return None, None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    info.argtypes, info.restype = [], _Mallinfo2
    return trim, info


_TRIM, _INFO = _libc_functions()


def resident_free_bytes() -> int | None:
    """Resident anonymous memory beyond what malloc has handed out and not had back (None without
    glibc or /proc): freed memory the arenas still hold in RAM, plus the interpreter's own arenas
    and thread stacks."""
    if _INFO is None:
        return None
    try:
        with open("/proc/self/statm") as f:
            resident, shared = (int(x) for x in f.read().split()[1:3])
    except OSError:
        return None
    info = _INFO()
    return (resident - shared) * _PAGE - int(info.uordblks) - int(info.hblkhd)


def give_back(keep: int = KEEP_RESIDENT_FREE) -> bool:
    """Return the arenas' free pages to the system once more than `keep` bytes of them are resident;
    whether it did."""
    free = resident_free_bytes()
    if free is None or free <= keep:
        return False
    _TRIM(0)
    return True
