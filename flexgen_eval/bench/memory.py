"""Process memory and page-cache helpers for the baselines (ours counts its own bytes per tier)."""
from __future__ import annotations

import contextlib
import os


def rss_bytes(field: str = "VmRSS") -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def io_read_bytes() -> int | None:
    """Bytes this process made the storage layer fetch (Linux /proc/self/io read_bytes): reads
    served from the page cache do not count, so this shows whether a "disk" read hit the disk."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Largest rise of the process RSS over its level before a run, across runs (0 when unknown).
    It includes file pages mapped in, i.e. mmapped weights read from disk."""

    def __init__(self):
        self.peak_delta = 0
        self.disk_read = 0  # bytes fetched from storage during measured runs
        self.last_disk_read = 0

    @contextlib.contextmanager
    def measure(self):
        before = rss_bytes()
        io_before = io_read_bytes()
        ok = before is not None and reset_peak_rss()
        try:
            yield
        finally:
            if ok:
                peak = rss_bytes("VmHWM") or before
                self.peak_delta = max(self.peak_delta, peak - before)
            if io_before is not None:
                self.last_disk_read = (io_read_bytes() or io_before) - io_before
                self.disk_read += self.last_disk_read


def drop_page_cache(paths):
    """Evict these files from the page cache (clean pages not mapped by anyone)."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
