"""`flexgen-eval cache list|clean`: what flexgen-eval keeps on disk, and freeing it."""
from __future__ import annotations

import os
import shutil
import tempfile
import time

from flexgen_core.memory import scratch, weight_copies
from flexgen_core.model.store import cache_root
from flexgen_core.units import format_size, parse_size


def register(subparsers):
    p = subparsers.add_parser(
        "cache", help="list or free what flexgen-eval keeps on disk",
        description="List or free what flexgen-eval keeps on disk: copies of disk weights kept in offload "
                    "directories for later runs, scratch left by processes that are gone, and (list only, "
                    "unless --models) the converted models and hardware profiles under the cache root.")
    p.add_argument("action", choices=("list", "clean"))
    p.add_argument("--offload-dir", action="append", default=[], metavar="DIR",
                   help="an offload directory to look in (repeatable); the system temp dir is always looked in")
    p.add_argument("--keep", type=parse_size, default=0, metavar="SIZE",
                   help="clean: keep the most recently used weight copies up to this size (default 0: remove "
                        "every copy no live process uses)")
    p.add_argument("--models", action="store_true",
                   help="clean: also remove the converted models under the cache root")
    p.set_defaults(func=run)


def _split(about: dict) -> str:
    """% gpu/cpu/disk of the weights, as the policy says it."""
    split = about.get("split")
    return "/".join(f"{v:g}" for v in split) if split else "?"


def _orphans(dirs: list[str]) -> list[str]:
    """Scratch of processes that are gone: our own offload dirs in the temp dir, scratch in each dir."""
    places = [(tempfile.gettempdir(), scratch.DEFAULT_PREFIX)] + [(d, scratch.SCRATCH_PREFIX) for d in dirs]
    return [path for parent, prefix in places for path in scratch.orphans(parent, prefix)]


def run(args) -> int:
    dirs = [os.path.abspath(d) for d in args.offload_dir]
    missing = [d for d in dirs if not os.path.isdir(d)]
    if missing:
        raise ValueError(f"no such offload directory: {', '.join(missing)}")
    return (_list if args.action == "list" else _clean)(args, dirs)


def _list(args, dirs) -> int:
    for d in dirs:
        found = weight_copies.copies(d)
        print(f"{d}: {len(found)} weight cop{'y' if len(found) == 1 else 'ies'}, "
              f"{format_size(sum(c.nbytes for c in found))}")
        for c in reversed(found):  # most recently used first
            a = c.about
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.last_used))
            print(f"  {os.path.basename(c.path)}  {format_size(c.nbytes):>10}  last used {used}"
                  f"{'  IN USE' if c.in_use else ''}  {a.get('model', '?')}  {a.get('dtype', '?')}  "
                  f"split {_split(a)}  {a.get('compression') or 'uncompressed'}")
    stale = _orphans(dirs)
    print(f"scratch left by processes that are gone: {len(stale)}, "
          f"{format_size(sum(map(weight_copies.folder_bytes, stale)))}")
    for p in stale:
        print(f"  {p}")
    root = cache_root()
    for name in ("models", "hardware"):
        path = root / name
        if path.is_dir():
            print(f"{path}: {format_size(weight_copies.folder_bytes(str(path)))} ({len(os.listdir(path))} entries)")
    return 0


def _clean(args, dirs) -> int:
    freed = 0
    for path in _orphans(dirs):
        freed += weight_copies.folder_bytes(path)
        shutil.rmtree(path, ignore_errors=True)
        print(f"removed {path}")
    for d in dirs:
        for c in weight_copies.prune(d, args.keep):
            freed += c.nbytes
            print(f"removed {c.path} ({format_size(c.nbytes)}, {c.about.get('model', '?')}, split {_split(c.about)})")
        kept = [c for c in weight_copies.copies(d) if c.in_use]
        if kept:
            print(f"kept {len(kept)} cop{'y' if len(kept) == 1 else 'ies'} in use in {d}")
    if args.models:
        path = cache_root() / "models"
        if path.is_dir():
            freed += weight_copies.folder_bytes(str(path))
            shutil.rmtree(path, ignore_errors=True)
            print(f"removed {path}")
    print(f"freed {format_size(freed)}")
    return 0
