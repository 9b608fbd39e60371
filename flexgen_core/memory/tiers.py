"""Memory tiers (compute device, CPU, disk) and tensors split across them by rows.

A `TieredRows` holds a [rows, *inner] tensor whose first rows live on the compute
device, the next on the CPU and the rest in a file, in the policy's proportions.
Every byte allocated or moved is counted per tier, so a run can report its peak
memory and prove that the disk was really read.
"""
from __future__ import annotations

import errno
import functools
import os
import shutil
import tempfile
import threading
import weakref
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from ..units import format_size
from .pinned import PinnedPool
from .scratch import DEFAULT_PREFIX, SCRATCH_PREFIX, end_on_sigterm_like_ctrl_c, make_owned_dir, remove_orphans

TIERS = ("gpu", "cpu", "disk")  # "gpu" is the compute device; the CPU when there is no GPU

_NUMPY_VIEW = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16,
               torch.int8: np.int8, torch.uint8: np.uint8, torch.int32: np.int32, torch.int64: np.int64}


@dataclass
class TierStats:
    resident: dict = field(default_factory=lambda: defaultdict(int))
    peak: dict = field(default_factory=lambda: defaultdict(int))
    read: dict = field(default_factory=lambda: defaultdict(int))  # bytes read out of a tier
    written: dict = field(default_factory=lambda: defaultdict(int))

    def as_dict(self) -> dict:
        return {k: {t: int(getattr(self, k)[t]) for t in TIERS} for k in ("resident", "peak", "read", "written")}


class DiskFull(OSError):
    """Not enough free space in the offload directory: says where, how much was needed and how much
    was free, and what to change. Raised before anything is written where the need is known."""

    def __init__(self, what: str, directory: str, needed: int, free: int):
        super().__init__(errno.ENOSPC, f"{what} needs {format_size(needed)} in {directory}, which has "
                                       f"{format_size(free)} free: free space there, point offload_dir at a "
                                       "larger disk, or put less on disk (a smaller disk share in the policy, "
                                       "or a smaller disk budget)")
        self.directory, self.needed, self.free = directory, needed, free


def free_bytes(directory: str) -> int:
    return int(shutil.disk_usage(directory).free)


def check_free_space(directory: str, needed: int, what: str):
    """Refuse up front what the disk cannot hold."""
    free = free_bytes(directory)
    if needed > free:
        raise DiskFull(what, directory, needed, free)


def split_rows(rows: int, percents) -> list[int]:
    """Rows per tier, cut at cumulative boundaries so rounding never loses a row."""
    first = round(rows * percents[0] / 100)
    second = round(rows * (percents[0] + percents[1]) / 100)
    return [first, second - first, rows - second]


def _row_range(rows: slice | None, n: int) -> tuple[int, int]:
    if rows is None:
        return 0, n
    lo, hi, step = rows.indices(n)
    if step != 1:
        raise ValueError("a run of rows takes a slice without a step")
    return lo, max(lo, hi)


WHOLE_ROWS_MAX_RATIO = 4  # move whole rows for a prefix read unless that moves > 4x the bytes asked for
DISK_READERS = 4  # reads in flight on the disk tier
READ_PIECE = 4 << 20  # bytes: a larger read is cut into pieces read at once
# bytes per row from which a write of part of a disk buffer goes around the page cache (pwrite, then
# dropped); a token's few bytes a row go through the memory map, since a pwrite into a page the cache
# had dropped would first read that page back from the disk
WRITE_AROUND_MIN = 64 << 10


@functools.lru_cache(maxsize=None)
def _disk_readers():
    from concurrent.futures import ThreadPoolExecutor
    return ThreadPoolExecutor(max_workers=DISK_READERS, thread_name_prefix="flexgen-disk")


def pread_pieces(requests: list[tuple[str, memoryview, int]]):
    """Each (file, buffer, byte position) filled from its file and dropped from the page cache, with
    several reads in flight: one read at a time left this VM's disk at about half the rate it reaches
    with 4 (0.9 vs 1.7 GB/s, 12 MiB reads from a cold 1 GiB file). Large requests are cut into pieces
    of READ_PIECE bytes."""
    pieces = [(path, buf[i:i + READ_PIECE], pos + i) for path, buf, pos in requests
              for i in range(0, len(buf), READ_PIECE)]
    fds = {}
    try:
        for path, _, _ in pieces:
            if path not in fds:
                fds[path] = os.open(path, os.O_RDONLY)

        def read(piece):
            path, buf, pos = piece
            n = os.preadv(fds[path], [buf], pos)
            if n != len(buf):
                raise ValueError(f"offload file {path!r} is truncated at byte {pos + n}")
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fds[path], pos, n, os.POSIX_FADV_DONTNEED)
        if len(pieces) == 1:
            read(pieces[0])
        else:
            for _ in _disk_readers().map(read, pieces):
                pass
    finally:
        for fd in fds.values():
            os.close(fd)


def read_each(buffers: list["TieredRows"]) -> list[torch.Tensor]:
    """Each buffer whole on the compute device, as its `read()` gives it, with the disk reads of all
    of them in flight together: read one by one, the disk waits between buffers for the next to
    start (a layer's experts: 64 reads of 12.6 MB)."""
    outs, requests, on_disk = [], [], []
    for i, buffer in enumerate(buffers):
        if buffer.only_tier() != "disk":
            outs.append(buffer.read())
            continue
        host, request = buffer.disk_request()
        requests.append(request)
        outs.append(host)
        on_disk.append(i)
    pread_pieces(requests)
    for i in on_disk:
        if buffers[i].tiers.on_cuda:
            outs[i] = outs[i].to(buffers[i].tiers.device, non_blocking=True)
    return outs


def _row_prefix_worth_whole_rows(index, storage) -> bool:
    if not isinstance(index, slice) or index.start not in (None, 0) or index.step not in (None, 1):
        return False
    if not storage.is_contiguous() or storage.dim() < 2:
        return False
    wanted = len(range(*index.indices(storage.shape[1])))
    return 0 < wanted < storage.shape[1] <= WHOLE_ROWS_MAX_RATIO * wanted


def staged_to_host(dst: torch.Tensor, src: torch.Tensor):
    """dst (host, strided: some positions of every cache row) <- src (CUDA). torch copies a strided
    device<->host pair through a pageable buffer (~1.4 GB/s on an H200 host); a contiguous copy into
    pinned memory runs at link speed, and then the CPU scatters it."""
    staging = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
    staging.copy_(src)
    dst.copy_(staging)


class TierSet:
    """The compute device, host memory and an offload directory, with byte accounting."""

    def __init__(self, device: torch.device, offload_dir: str | None = None):
        self.device = torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        self._own_dir = offload_dir is None
        remove_orphans(tempfile.gettempdir(), DEFAULT_PREFIX)  # what killed runs left behind
        if offload_dir is not None:
            os.makedirs(offload_dir, exist_ok=True)
            remove_orphans(offload_dir, SCRATCH_PREFIX)
        self.offload_dir = offload_dir or make_owned_dir(DEFAULT_PREFIX)
        self.scratch_dir = make_owned_dir(SCRATCH_PREFIX, self.offload_dir)
        end_on_sigterm_like_ctrl_c()
        # also at interpreter exit: lm_eval and helm-run end without closing the model
        self._remove_files = weakref.finalize(self, shutil.rmtree, self.offload_dir if self._own_dir else self.scratch_dir,
                                              ignore_errors=True)
        self.stats = TierStats()
        self._lock = threading.Lock()
        self._counter = 0
        # the CPU tier's buffers on CUDA, locked at their size
        self.pinned = PinnedPool(settle=functools.partial(torch.cuda.synchronize, self.device)) if self.on_cuda else None

    # -- accounting ------------------------------------------------------------------
    def allocated(self, tier: str, nbytes: int):
        with self._lock:
            self.stats.resident[tier] += nbytes
            self.stats.peak[tier] = max(self.stats.peak[tier], self.stats.resident[tier])

    def released(self, tier: str, nbytes: int):
        with self._lock:
            self.stats.resident[tier] -= nbytes

    def moved(self, tier: str, read: int = 0, written: int = 0):
        with self._lock:
            self.stats.read[tier] += read
            self.stats.written[tier] += written

    def reset_peaks(self):
        with self._lock:
            for t in TIERS:
                self.stats.peak[t] = self.stats.resident[t]

    # -- allocation ------------------------------------------------------------------
    def host_empty(self, shape, dtype) -> torch.Tensor:
        """Host staging for one transfer (pinned on CUDA, through torch's caching allocator)."""
        return torch.empty(shape, dtype=dtype, pin_memory=self.on_cuda)

    def memory(self, tier: str, shape, dtype) -> torch.Tensor:
        """A tier's long-lived buffer; give it back with `free_memory`."""
        if tier == "gpu":
            return torch.empty(shape, dtype=dtype, device=self.device)
        if self.pinned is not None:
            return self.pinned.take(shape, dtype)
        return torch.empty(shape, dtype=dtype)

    def free_memory(self, tier: str, storage: torch.Tensor):
        if tier == "cpu" and self.pinned is not None:
            self.pinned.give(storage)

    def scratch_path(self, name: str) -> str:
        with self._lock:
            self._counter += 1
            return os.path.join(self.scratch_dir, f"{self._counter:06d}-{name}.bin")

    def close(self):
        if self.pinned is not None:
            self.pinned.clear()
        self._remove_files()


class DiskArray:
    """A tensor in a file: memory-mapped for indexed access, plain reads for whole loads."""

    def __init__(self, path: str, shape, dtype: torch.dtype, create: bool = True):
        self.path, self.shape, self.dtype = path, tuple(shape), dtype
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        if create:
            self._allocate()
        self._map = None

    def _allocate(self):
        """The file's blocks allocated for real: a sparse file's memory map takes the disk's blocks
        as it is written, and a full disk then kills the process with SIGBUS instead of raising.
        Without posix_fallocate the free space is checked instead (the file is then sparse)."""
        try:
            with open(self.path, "wb") as f:
                if self.nbytes and hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(f.fileno(), 0, self.nbytes)
                else:
                    check_free_space(self._directory, self.nbytes, os.path.basename(self.path))
                    f.truncate(self.nbytes)
        except OSError as e:
            self.remove()
            self._raise_if_full(e, self.nbytes)
            raise

    @property
    def _directory(self) -> str:
        return os.path.dirname(self.path) or "."

    def _raise_if_full(self, error: OSError, nbytes: int):
        """A full disk (or quota) as DiskFull, naming this file; other errors are left to the caller."""
        if isinstance(error, DiskFull):
            raise error
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(os.path.basename(self.path), self._directory, nbytes, free_bytes(self._directory)) from None

    @property
    def tensor(self) -> torch.Tensor:
        if self._map is None:
            arr = np.memmap(self.path, dtype=_NUMPY_VIEW[self.dtype], mode="r+", shape=self.shape)
            self._map = torch.from_numpy(arr).view(self.dtype)
        return self._map

    def read_into(self, out: torch.Tensor, offset_elems: int = 0):
        """Read a contiguous range straight into `out` (CPU), then drop it from the page cache:
        the disk tier exists because RAM is short, so later reads must come from the disk."""
        pread_pieces([self.request(out, offset_elems)])
        return out

    def request(self, out: torch.Tensor, offset_elems: int = 0) -> tuple[str, memoryview, int]:
        """The (file, buffer, byte position) of a pread_pieces request filling contiguous CPU `out`."""
        view = out.view(torch.uint8).numpy() if out.dtype != torch.uint8 else out.numpy()
        return self.path, memoryview(view.reshape(-1)).cast("B"), offset_elems * out.element_size()

    def read_spans(self, offsets: list[int], span: int) -> torch.Tensor:
        """[len(offsets), span] elements from these element offsets of the file (flat), read with
        pread (a few rows of a table, the first positions of cache rows) and dropped from the page
        cache like every disk read."""
        out = torch.empty((len(offsets), span), dtype=self.dtype)
        raw = out.view(torch.uint8).numpy()
        pread_pieces([(self.path, memoryview(raw[i]), off * out.element_size()) for i, off in enumerate(offsets)])
        return out

    def write_all(self, value: torch.Tensor, durable: bool = True):
        """Write the whole file. Durable (weights, reused across runs) waits for the disk; a
        transient write (activations) lets the kernel write back in its own time."""
        data = value.contiguous().cpu().view(torch.uint8).numpy()
        try:  # into the allocated file, not truncating it (its blocks stay ours)
            with open(self.path, "r+b" if os.path.exists(self.path) else "wb") as f:
                f.write(memoryview(data).cast("B"))
                f.flush()
                if durable:
                    os.fsync(f.fileno())
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as e:
            self._raise_if_full(e, data.nbytes)
            raise

    def write_region(self, src: torch.Tensor, first_row: int, index: slice | None = None):
        """Rows first_row.. of the file (along dim 1 only `index`, a slice of step 1) from `src`, written
        with pwrite and dropped from the page cache once on the disk, so that later reads come from the
        disk (see read_into). Written through the memory map instead, a prefill's disk KV cache stayed
        in memory, mapped into the process, and decode read it from there: 256 OLMoE-1B-7B sequences
        under a 2.7 GiB budget grew the process by 18.8 GB, and a run read 55 GB from the disk where its
        steps had asked for about 100."""
        data = src.contiguous().cpu().view(torch.uint8).numpy().reshape(src.shape[0], -1)
        row = self.nbytes // self.shape[0]
        offset = 0
        if index is not None:
            start, _, step = index.indices(self.shape[1])
            if step != 1:
                raise ValueError("write_region takes a slice of step 1")
            offset = start * (row // self.shape[1])
        fd = os.open(self.path, os.O_WRONLY)
        try:
            for i in range(data.shape[0]):
                pos, view = (first_row + i) * row + offset, memoryview(data[i])
                if os.pwrite(fd, view, pos) != len(view):
                    raise OSError(errno.ENOSPC, f"short write to {self.path}")
            if hasattr(os, "posix_fadvise"):  # written back first: dirty pages are not dropped
                os.fdatasync(fd)
                os.posix_fadvise(fd, first_row * row, data.shape[0] * row, os.POSIX_FADV_DONTNEED)
        except OSError as e:
            self._raise_if_full(e, data.nbytes)
            raise
        finally:
            os.close(fd)

    def close(self):
        self._map = None

    def remove(self):
        self._map = None
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


class TieredRows:
    """A [rows, *inner] tensor split along dim 0 into gpu / cpu / disk parts."""

    def __init__(self, tiers: TierSet, shape, dtype, percents, name: str, disk_path: str | None = None):
        self.tiers, self.shape, self.dtype, self.name = tiers, tuple(shape), dtype, name
        self.row_elems = int(np.prod(self.shape[1:], dtype=np.int64))
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        counts = split_rows(self.shape[0], percents)
        self.parts: list[tuple[str, int, int, object]] = []  # (tier, first row, end row, storage)
        self.scratch = disk_path is None  # its disk file is this run's alone: removed when freed
        start = 0
        try:
            for tier, n in zip(TIERS, counts):
                if n == 0:
                    continue
                shape_t = (n,) + self.shape[1:]
                if tier == "disk":
                    path = disk_path or tiers.scratch_path(name)
                    storage = DiskArray(path, shape_t, dtype, create=not (disk_path and os.path.exists(disk_path)))
                else:
                    storage = tiers.memory(tier, shape_t, dtype)
                tiers.allocated(tier, n * self.row_elems * self.itemsize)
                self.parts.append((tier, start, start + n, storage))
                start += n
        except BaseException:
            self.free()
            raise

    @staticmethod
    def disk_bytes(shape, dtype, percents) -> int:
        """Bytes a TieredRows of this shape and placement puts in its file."""
        row = int(np.prod(tuple(shape)[1:], dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        return split_rows(shape[0], percents)[2] * row

    def rows_on(self, tier: str) -> int:
        return sum(end - start for t, start, end, _ in self.parts if t == tier)

    def on_device(self, stop: int | None = None) -> bool:
        """Whether rows [0, stop) (all rows by default) live on the compute device, so reading
        them gives a view."""
        stop = self.shape[0] if stop is None else stop
        return bool(self.parts) and self.parts[0][0] == "gpu" and self.parts[0][2] >= stop

    def only_tier(self) -> str | None:
        return self.parts[0][0] if len(self.parts) == 1 else None

    def disk_request(self) -> tuple[torch.Tensor, tuple[str, memoryview, int]]:
        """Of a buffer wholly on disk: the CPU tensor a whole read fills (pinned staging on CUDA, to
        be moved to the device) and the pread_pieces request that fills it; its bytes counted as read."""
        self.tiers.moved("disk", read=self._bytes(self.shape[0], None))
        host = (self.tiers.host_empty(self.shape, self.dtype) if self.tiers.on_cuda
                else torch.empty(self.shape, dtype=self.dtype))
        return host, self.parts[0][3].request(host)

    def _bytes(self, rows: int, index) -> int:
        inner = self.row_elems
        if index is not None and len(self.shape) > 1:
            n = len(range(*index.indices(self.shape[1])))
            inner = inner // self.shape[1] * n
        return rows * inner * self.itemsize

    def write(self, value: torch.Tensor, index: slice | None = None):
        """value: [rows, ...] for all rows; `index` selects along dim 1 (e.g. new cache positions)."""
        for i in range(len(self.parts)):
            self.write_part(i, value, index)

    def write_part(self, i: int, value: torch.Tensor, index: slice | None = None, rows: slice | None = None):
        """Part i from `value` (all rows of the tensor); `rows` (within the part) limits it to a
        run of the part's rows."""
        _, start, end, _ = self.parts[i]
        lo, hi = _row_range(rows, end - start)
        self.write_rows(i, value[start + lo:start + hi], index, rows)

    def write_rows(self, i: int, src: torch.Tensor, index: slice | None = None, rows: slice | None = None):
        """Part i's rows `rows` (all of them by default) from `src`, which holds just those rows."""
        tier, start, end, storage = self.parts[i]
        lo, hi = _row_range(rows, end - start)
        whole = (lo, hi) == (0, end - start)
        if tier == "disk":
            if index is None and whole:
                storage.write_all(src, durable=False)
            elif self._bytes(1, index) >= WRITE_AROUND_MIN:
                storage.write_region(src, lo, index)
            else:
                storage.tensor[lo:hi, index if index is not None else slice(None)] = src.cpu()
        else:
            dst = storage[lo:hi] if index is None else storage[lo:hi, index]
            if tier == "cpu" and src.is_cuda and not dst.is_contiguous():
                staged_to_host(dst, src)
            else:
                # Device-to-host copies block: the CPU may read this memory next (CPU attention).
                dst.copy_(src, non_blocking=self.tiers.on_cuda and tier == "gpu")
        self.tiers.moved(tier, written=self._bytes(hi - lo, index))

    def read_part(self, i: int, index: slice | None = None, to: str = "gpu", rows: slice | None = None) -> torch.Tensor:
        """One part (or the run `rows` of its rows), delivered to the compute device (to="gpu") or
        to host memory (to="cpu"). Memory-resident rows already where they are wanted come back as
        views, not copies."""
        tier, start, end, storage = self.parts[i]
        lo, hi = _row_range(rows, end - start)
        if tier != "disk":
            storage = storage[lo:hi]
        if tier == "cpu" and to == "gpu" and self.tiers.on_cuda and _row_prefix_worth_whole_rows(index, storage):
            # the first positions of every row (decode reading the cache): DMA the whole pinned rows,
            # one contiguous copy at link speed, and slice on the device; gathering the prefix on the
            # CPU first costs a host memcpy of it, slower than the link
            self.tiers.moved(tier, read=self._bytes(hi - lo, None))
            return storage.to(self.tiers.device, non_blocking=True)[:, index]
        if tier != "disk" or index is None:  # a disk read of some positions counts what it reads
            self.tiers.moved(tier, read=self._bytes(hi - lo, index))
        if tier == "disk":
            if index is None:
                host = self.tiers.host_empty((hi - lo,) + self.shape[1:], self.dtype)
                storage.read_into(host, offset_elems=lo * self.row_elems)
            else:
                host = self._disk_positions(storage, lo, hi, index)
                host = host.pin_memory() if self.tiers.on_cuda and to == "gpu" else host
        else:
            host = storage if index is None else storage[:, index]
        if tier == "cpu" and to == "gpu" and self.tiers.on_cuda and not host.is_contiguous():
            host = self.tiers.host_empty(host.shape, host.dtype).copy_(host)  # see staged_to_host
        if to == "gpu" or tier == "gpu":
            return host.to(self.tiers.device, non_blocking=True)
        return host

    def _disk_positions(self, storage: "DiskArray", lo: int, hi: int, index) -> torch.Tensor:
        """Rows lo..hi of a disk part at positions `index` along dim 1, read with pread: the run
        each row holds there (a cache row's first positions), or whole rows when that asks for
        little more; never page faults of a memory map."""
        one_run_a_row = len(self.shape) >= 2 and isinstance(index, slice) and index.indices(self.shape[1])[2] == 1
        if not one_run_a_row:
            self.tiers.moved("disk", read=self._bytes(hi - lo, index))
            return storage.tensor[lo:hi, index].clone()
        start, stop, _ = index.indices(self.shape[1])
        wanted = max(0, stop - start)
        if self.shape[1] <= WHOLE_ROWS_MAX_RATIO * wanted:
            self.tiers.moved("disk", read=self._bytes(hi - lo, None))
            rows = torch.empty((hi - lo,) + self.shape[1:], dtype=self.dtype)
            storage.read_into(rows, offset_elems=lo * self.row_elems)
            return rows[:, index].contiguous()
        self.tiers.moved("disk", read=self._bytes(hi - lo, index))
        inner = self.row_elems // self.shape[1]  # elements per position
        runs = storage.read_spans([(lo + r) * self.row_elems + start * inner for r in range(hi - lo)], wanted * inner)
        return runs.view((hi - lo, wanted) + self.shape[2:])

    def read(self, index: slice | None = None, stop: int | None = None) -> torch.Tensor:
        """The whole tensor, or its rows [0, stop), on the compute device (a view when they live
        there)."""
        stop = self.shape[0] if stop is None else stop
        if self.on_device(stop):
            self.tiers.moved("gpu", read=self._bytes(stop, index))
            first = self.parts[0][3]
            return first[:stop] if index is None else first[:stop, index]
        inner = self.shape[1:]
        if index is not None:
            inner = (len(range(*index.indices(self.shape[1]))),) + self.shape[2:]
        out = torch.empty((stop,) + inner, dtype=self.dtype, device=self.tiers.device)
        for tier, start, end, storage in self.parts:
            if start >= stop:
                break
            end = min(end, stop)
            self.tiers.moved(tier, read=self._bytes(end - start, index))
            if tier == "disk":
                if index is not None:
                    out[start:end].copy_(storage.tensor[: end - start, index])
                elif self.tiers.on_cuda:
                    host = self.tiers.host_empty((end - start,) + inner, self.dtype)
                    out[start:end].copy_(storage.read_into(host), non_blocking=True)
                else:
                    storage.read_into(out[start:end])  # straight into the compute buffer
            else:
                src = storage[: end - start] if index is None else storage[: end - start, index]
                out[start:end].copy_(src, non_blocking=True)
        return out

    def gather(self, offset: int, span: int, index: torch.Tensor) -> torch.Tensor:
        """Of a 1-D buffer: the spans [offset + i * span, offset + (i + 1) * span) for each i in
        `index`, as [len(index), span] on the compute device. Reads only those bytes, wherever
        they live (a lookup into a table that is not resident)."""
        if len(self.shape) != 1:
            raise ValueError("gather reads spans of a 1-D buffer")
        index = index.to("cpu", torch.int64)
        out = torch.empty((len(index), span), dtype=self.dtype, device=self.tiers.device)
        begin = offset + index * span
        done = torch.zeros(len(index), dtype=torch.bool)
        for tier, start, end, storage in self.parts:
            inside = (begin >= start) & (begin + span <= end)
            if not bool(inside.any()):
                continue
            rows = inside.nonzero().squeeze(1)
            self.tiers.moved(tier, read=len(rows) * span * self.itemsize)
            if tier == "disk":
                out[rows] = storage.read_spans((begin[rows] - start).tolist(), span).to(self.tiers.device)
            else:
                # the spans wholly inside this part, from span i0 on, as one [n, span] view
                i0 = max(0, -(-(start - offset) // span))
                first = offset + i0 * span - start
                n = (end - start - first) // span
                table = storage[first:first + n * span].view(n, span)
                picked = index[rows] - i0
                out[rows.to(out.device)] = table[picked.to(table.device)].to(self.tiers.device)
            done |= inside
        for r in (~done).nonzero().squeeze(1).tolist():  # a span across a tier boundary
            lo = int(begin[r])
            for tier, start, end, storage in self.parts:
                a, b = max(lo, start), min(lo + span, end)
                if a >= b:
                    continue
                self.tiers.moved(tier, read=(b - a) * self.itemsize)
                if tier == "disk":
                    piece = storage.read_spans([a - start], b - a)[0]
                else:
                    piece = storage[a - start:b - start]
                out[r, a - lo:b - lo] = piece.to(self.tiers.device)
        return out

    def free(self):
        for tier, start, end, storage in self.parts:
            self.tiers.released(tier, (end - start) * self.row_elems * self.itemsize)
            if isinstance(storage, DiskArray) and self.scratch:
                storage.remove()
            elif isinstance(storage, DiskArray):
                storage.close()
            else:
                self.tiers.free_memory(tier, storage)
        self.parts = []
