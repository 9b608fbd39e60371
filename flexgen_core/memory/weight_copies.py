"""Copies of a model's disk weights kept in an offload directory for later runs: one folder per
(checkpoint, dtype, split, compression) under OFFLOAD/weights/, described by about.json (what it
holds, when it was last used, the processes using it). Past a size cap the least recently used
copies that no live process uses are removed, so new splits do not pile up full copies."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass

from ..units import parse_size
from .scratch import owner_alive, this_process

ABOUT = "about.json"
KEEP_ENV = "FLEXGEN_OFFLOAD_KEEP"  # bytes of copies an offload directory keeps: a size, or "unlimited"


@dataclass
class WeightCopy:
    path: str
    about: dict
    nbytes: int
    last_used: float

    @property
    def in_use(self) -> bool:
        return any(owner_alive(u) for u in self.about.get("users", []))


def folder_bytes(path: str) -> int:
    """Bytes of the files under `path`, however deep."""
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:  # removed meanwhile
                pass
    return total


def _read_about(folder: str) -> dict:
    try:
        with open(os.path.join(folder, ABOUT)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_about(folder: str, about: dict):
    tmp = os.path.join(folder, f".{ABOUT}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(about, f, indent=1)
    os.replace(tmp, os.path.join(folder, ABOUT))  # readers see the old or the new, never half


def copies(offload_dir: str) -> list[WeightCopy]:
    """The weight copies under an offload directory, least recently used first."""
    root = os.path.join(offload_dir, "weights")
    found = []
    for entry in (os.scandir(root) if os.path.isdir(root) else []):
        if entry.is_dir(follow_symlinks=False):
            about = _read_about(entry.path)
            found.append(WeightCopy(entry.path, about, folder_bytes(entry.path),
                                    float(about.get("last_used", entry.stat().st_mtime))))
    return sorted(found, key=lambda c: c.last_used)


def record_use(folder: str, description: dict):
    """This process uses the copy in `folder` (the ones still alive keep using theirs)."""
    about = _read_about(folder)
    users = [u for u in about.get("users", []) if owner_alive(u) and u.get("pid") != os.getpid()]
    _write_about(folder, {**about, **description, "last_used": time.time(), "users": users + [this_process()]})


def keep(offload_dir: str, folder: str, description: dict) -> list[WeightCopy]:
    """A load uses the copy in `folder`: record it, and keep the directory under its cap; the copies
    that were removed for it."""
    nbytes = folder_bytes(folder)
    record_use(folder, {**description, "bytes": nbytes})
    return prune(offload_dir, keep_limit(nbytes), spare=folder)


def end_use(folder: str):
    about = _read_about(folder)
    if about:
        _write_about(folder, {**about, "users": [u for u in about.get("users", []) if u.get("pid") != os.getpid()]})


def keep_limit(in_use_bytes: int) -> int | None:
    """Bytes of copies to keep: $FLEXGEN_OFFLOAD_KEEP, by default twice the copy in use (it and about
    one more split of the same size, so alternating between two stays cached); None: no limit."""
    value = os.environ.get(KEEP_ENV, "").strip()
    if value.lower() == "unlimited":
        return None
    if value:
        try:
            return parse_size(value)
        except ValueError as e:
            raise ValueError(f"{KEEP_ENV}={value!r}: {e} (or 'unlimited')") from None
    return 2 * in_use_bytes


def prune(offload_dir: str, keep: int | None, spare: str | None = None) -> list[WeightCopy]:
    """Remove the least recently used copies that no live process uses (nor `spare`) until the rest
    fit in `keep` bytes; the copies removed."""
    if keep is None:
        return []
    found = copies(offload_dir)
    total, removed = sum(c.nbytes for c in found), []
    for c in found:
        if total <= keep:
            break
        if os.path.abspath(c.path) == os.path.abspath(spare or "") or c.in_use:
            continue
        shutil.rmtree(c.path, ignore_errors=True)
        total -= c.nbytes
        removed.append(c)
    return removed
