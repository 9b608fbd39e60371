"""Page-locked host memory of the size asked for: the CPU tier's buffers on CUDA.

torch's pinned allocator rounds every request up to a power of two and keeps the
block: 80% of an OPT-30B layer (0.99 GB) takes 1 GiB, a 70 MB cache buffer takes
128 MiB, so the CPU tier can lock up to twice the memory the plan budgets (and the
bench reports). Here a buffer is fresh host memory locked in place with
cudaHostRegister, kept for reuse when given back, and the pool never keeps
much more locked (1/8) than the most that was ever in use at once.
"""
from __future__ import annotations

import math
import mmap
import threading
import warnings
import weakref

import torch

REUSE_SLACK = 1.25  # a free block serves a request up to 25% smaller than itself
# free blocks stay locked while the total is within 1/8 over the most ever in use at once: a block
# whose shape comes back each run (a prompt's hidden states, freed when decoding starts) is not
# unlocked and locked again every run
KEEP_OVER_PEAK = 1 / 8


def cuda_lock(ptr: int, nbytes: int):
    err = int(torch.cuda.cudart().cudaHostRegister(ptr, nbytes, 0))
    if err != 0:
        raise RuntimeError(f"cudaHostRegister of {nbytes} bytes failed with CUDA error {err}")


def cuda_unlock(ptr: int):
    torch.cuda.cudart().cudaHostUnregister(ptr)


class _Block:
    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        # its own pages (page-aligned, shared with no other allocation), touched by torch's threads
        # so that locking finds them present
        self.map = mmap.mmap(-1, nbytes)
        self.raw = torch.frombuffer(self.map, dtype=torch.uint8)
        self.raw.zero_()
        self.ptr = self.raw.data_ptr()


class PinnedPool:
    """take() a page-locked tensor of a shape and dtype; give() it back when done with it.

    A block given back may still be read or written by copies in flight on some stream, so
    before one is reused or unlocked the pool waits for the device (`settle`), at most once
    per batch of frees."""

    def __init__(self, lock=cuda_lock, unlock=cuda_unlock, settle=None, fallback=None):
        self._lock_fn, self._unlock_fn = lock, unlock
        self._settle_fn = settle or torch.cuda.synchronize
        self._fallback = fallback or (lambda shape, dtype: torch.empty(shape, dtype=dtype, pin_memory=True))
        self._mutex = threading.Lock()
        self._in_use: dict[int, _Block] = {}  # data pointer -> block
        self._free: dict[int, list[_Block]] = {}  # block size -> blocks, oldest first
        self._unsettled = False  # a block was given back since the last settle
        self.in_use_bytes = self.free_bytes = self.high_water = 0
        self.disabled = None  # why locking is off (then buffers come from torch's pinned allocator)
        # unlock at exit too: freeing locked memory without unlocking it leaks the lock
        self._finalizer = weakref.finalize(self, _unlock_all, self._in_use, self._free, self._unlock_fn)

    @property
    def locked_bytes(self) -> int:
        return self.in_use_bytes + self.free_bytes

    def take(self, shape, dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if nbytes == 0 or self.disabled:
            return self._fallback(shape, dtype)
        with self._mutex:
            block = self._reuse(nbytes)
            if block is None:
                block = self._new(nbytes)
                if block is None:
                    return self._fallback(shape, dtype)
            self._in_use[block.ptr] = block
            self.in_use_bytes += block.nbytes
            self.high_water = max(self.high_water, self.in_use_bytes)
        return block.raw[:nbytes].view(dtype).view(tuple(shape))

    def give(self, tensor: torch.Tensor):
        """Done with a tensor take() returned (a tensor of another origin is ignored)."""
        with self._mutex:
            block = self._in_use.pop(tensor.data_ptr(), None)
            if block is None:
                return
            self.in_use_bytes -= block.nbytes
            self._free.setdefault(block.nbytes, []).append(block)
            self.free_bytes += block.nbytes
            self._unsettled = True

    def clear(self):
        """Unlock every free block (blocks in use stay locked until given back)."""
        with self._mutex:
            self._evict(self.free_bytes)

    def _reuse(self, nbytes: int) -> _Block | None:
        sizes = [s for s, blocks in self._free.items() if blocks and nbytes <= s <= nbytes * REUSE_SLACK]
        if not sizes:
            return None
        size = min(sizes)
        self._settle()
        block = self._free[size].pop(0)
        self.free_bytes -= size
        return block

    def _new(self, nbytes: int) -> _Block | None:
        peak = max(self.high_water, self.in_use_bytes + nbytes)
        over = self.in_use_bytes + nbytes + self.free_bytes - int(peak * (1 + KEEP_OVER_PEAK))
        if over > 0:
            self._evict(over)
        block = _Block(nbytes)
        try:
            self._lock_fn(block.ptr, nbytes)
        except Exception as err:  # e.g. a platform without cudaHostRegister: torch's pinned memory
            self.disabled = str(err)
            warnings.warn(f"page-locking host memory in place failed ({err}); using torch's pinned "
                          "allocator, which rounds each buffer up to a power of two", RuntimeWarning, stacklevel=3)
            return None
        return block

    def _evict(self, nbytes: int):
        """Unlock free blocks, oldest sizes first, until at least nbytes are unlocked."""
        if nbytes <= 0 or not self.free_bytes:
            return
        self._settle()
        for size in list(self._free):
            blocks = self._free[size]
            while blocks and nbytes > 0:
                block = blocks.pop(0)
                self._unlock_fn(block.ptr)
                self.free_bytes -= block.nbytes
                nbytes -= block.nbytes
            if not blocks:
                del self._free[size]
            if nbytes <= 0:
                break

    def _settle(self):
        if self._unsettled:
            self._settle_fn()
            self._unsettled = False


def _unlock_all(in_use: dict, free: dict, unlock):
    for block in list(in_use.values()) + [b for blocks in free.values() for b in blocks]:
        try:
            unlock(block.ptr)
        except Exception:  # at interpreter exit the CUDA runtime may be gone already
            pass
    in_use.clear()
    free.clear()
