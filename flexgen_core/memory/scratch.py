"""Scratch directories owned by one process: marked with their owner, removed when it ends (exit,
Ctrl-C, SIGTERM, close) and, when it was killed outright (SIGKILL, out of memory), by the next
process that starts where it left them. A directory without an owner mark is never touched."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading

import psutil

log = logging.getLogger("flexgen")

OWNER_FILE = "flexgen-owner.json"
DEFAULT_PREFIX = "flexgen-offload-"  # an offload directory of our own, in the system's temp dir
SCRATCH_PREFIX = "scratch-"  # a process's scratch inside an offload directory


def this_process() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": psutil.Process().create_time()}


def make_owned_dir(prefix: str, parent: str | None = None) -> str:
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    with open(os.path.join(path, OWNER_FILE), "w") as f:
        json.dump(this_process(), f)
    return path


def read_owner(path: str) -> dict | None:
    """The owner mark of a directory, or None when it has none (not ours)."""
    try:
        with open(os.path.join(path, OWNER_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def owner_alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # another machine's, on a shared disk: not ours to judge
    try:
        process = psutil.Process(int(owner["pid"]))
        if process.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent
            return False
        started = process.create_time()
    except (psutil.NoSuchProcess, KeyError, ValueError):
        return False
    except psutil.Error:  # exists, but we may not look at it
        return True
    return abs(started - float(owner.get("started", started))) < 1.0  # else its pid was reused


def orphans(parent: str, prefix: str) -> list[str]:
    """The directories `parent/prefix*` whose owner process is gone."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False):
            owner = read_owner(entry.path)
            if owner is not None and not owner_alive(owner):
                found.append(entry.path)
    return found


def remove_orphans(parent: str, prefix: str) -> list[str]:
    """Remove the orphans under `parent`; the paths removed."""
    removed = orphans(parent, prefix)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    if removed:
        log.info("removed %d scratch director%s left by processes that are gone: %s", len(removed),
                 "y" if len(removed) == 1 else "ies", ", ".join(removed))
    return removed


def end_on_sigterm_like_ctrl_c():
    """SIGTERM (as `timeout`, Slurm and `docker stop` send it) ends the process the way Ctrl-C does,
    so exit handlers run and remove its scratch. Only from the main thread, and only where nobody
    else handles SIGTERM."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_signal)


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)
