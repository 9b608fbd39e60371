"""Offload scratch is owned by its process: gone when the process ends by exit, Ctrl-C or SIGTERM, and
removed by the next start when it was killed outright; nothing unmarked or alive is touched."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from flexgen_core.memory import scratch
from flexgen_core.memory.tiers import TierSet

HOLD = """
import sys
from flexgen_core import LLM, Policy
llm = LLM.from_pretrained(sys.argv[1], policy=Policy(weights=(0, 0, 100), cache=(0, 0, 100)))
print(llm.tiers.offload_dir, flush=True)
sys.stdin.read()  # until the test ends it
"""


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def left_behind(parent, prefix, owner) -> str:
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    with open(os.path.join(path, "weights.bin"), "wb") as f:
        f.write(b"\0" * 4096)
    if owner is not None:
        with open(os.path.join(path, scratch.OWNER_FILE), "w") as f:
            json.dump(owner, f)
    return path


def test_scratch_of_processes_that_are_gone_is_removed_at_start(tmp_path):
    me = scratch.this_process()
    gone = left_behind(tmp_path, scratch.SCRATCH_PREFIX, {**me, "pid": dead_pid()})
    reused = left_behind(tmp_path, scratch.SCRATCH_PREFIX, {**me, "started": me["started"] - 3600})  # pid reused
    alive = left_behind(tmp_path, scratch.SCRATCH_PREFIX, me)
    elsewhere = left_behind(tmp_path, scratch.SCRATCH_PREFIX, {**me, "pid": dead_pid(), "host": "another-node"})
    unmarked = left_behind(tmp_path, scratch.SCRATCH_PREFIX, None)
    user_file = left_behind(tmp_path, "weights-", {**me, "pid": dead_pid()})  # not a scratch name
    tiers = TierSet("cpu", str(tmp_path))
    try:
        assert not os.path.exists(gone) and not os.path.exists(reused)
        assert all(os.path.exists(p) for p in (alive, elsewhere, unmarked, user_file))
        with open(os.path.join(tiers.scratch_dir, scratch.OWNER_FILE)) as f:
            assert json.load(f)["pid"] == os.getpid()
    finally:
        tiers.close()
    assert not os.path.exists(tiers.scratch_dir)


def _start_holder(model_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, model_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    offload = proc.stdout.readline().strip()
    assert os.path.isdir(offload) and os.listdir(os.path.join(offload, "weights"))
    return proc, offload


def test_sigterm_cleans_up_like_ctrl_c(tiny_llama_dir):
    proc, offload = _start_holder(tiny_llama_dir)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not os.path.exists(offload)  # the disk weights went with it


def test_what_sigkill_leaves_the_next_start_removes(tiny_llama_dir):
    proc, offload = _start_holder(tiny_llama_dir)
    proc.kill()
    proc.wait(timeout=60)
    assert os.path.isdir(offload)  # nothing can run on SIGKILL
    TierSet("cpu").close()
    assert not os.path.exists(offload)


@pytest.fixture(autouse=True)
def _no_strays():
    yield
    # a failed assertion above must not leave a holder's directory for other tests to find
    scratch.remove_orphans(tempfile.gettempdir(), scratch.DEFAULT_PREFIX)


def test_a_killed_process_not_yet_reaped_counts_as_gone():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import psutil

        owner = {**scratch.this_process(), "pid": proc.pid, "started": psutil.Process(proc.pid).create_time()}
        assert scratch.owner_alive(owner)
        proc.kill()
        for _ in range(100):  # until it is a zombie: dead, its parent (this test) not waiting yet
            if psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.05)
        assert not scratch.owner_alive(owner)
    finally:
        proc.kill()
        proc.wait()
