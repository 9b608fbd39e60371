"""A disk that is or becomes full: one clear error naming the path, the bytes needed and the bytes free;
nothing written by the failed step left behind; what was finished before it kept. The disk is made
full by a fault-injecting allocator everywhere, and by a real 1 MiB tmpfs where this machine lets
the test mount one."""
import errno
import os
import subprocess

import pytest

from flexgen_core import LLM, Policy, SamplingParams
from flexgen_core.memory import tiers as tiers_module
from flexgen_core.memory.scratch import OWNER_FILE
from flexgen_core.memory.tiers import DiskArray, DiskFull

PROMPTS = [[5, 17, 33, 40], [7, 8, 9], [100, 101, 102], [250, 251], [11, 12, 13, 14], [60, 61]]
PARAMS = SamplingParams(max_new_tokens=6, ignore_eos=True)
DISK_CACHE = Policy(cache=(0, 0, 100), gpu_batch_size=2, num_gpu_batches=1)  # blocks of 2 prompts


def files_under(path):
    """Files left, less the owner marks of the scratch directories that a live model keeps."""
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs
                  if f != OWNER_FILE)


def fail_allocations_after(monkeypatch, n: int):
    """posix_fallocate succeeds n times, then finds the disk full (as a real one would, mid-run)."""
    real, calls = os.posix_fallocate, []

    def allocate(fd, offset, length):
        calls.append(length)
        if len(calls) > n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", allocate)
    return calls


def test_disk_cache_files_are_allocated_not_sparse(tmp_path):
    """A sparse file's memory map takes disk blocks only when written: on a full disk, SIGBUS."""
    array = DiskArray(str(tmp_path / "cache.bin"), (64, 1024), tiers_module.torch.float32)
    st = os.stat(array.path)
    assert st.st_size == 64 * 1024 * 4 and st.st_blocks * 512 >= st.st_size


def test_a_kv_cache_the_disk_cannot_hold_is_refused_before_anything_is_written(tiny_llama_dir, tmp_path, monkeypatch):
    with LLM.from_pretrained(tiny_llama_dir, policy=DISK_CACHE, offload_dir=str(tmp_path)) as llm:
        monkeypatch.setattr(tiers_module, "free_bytes", lambda directory: 4096)
        with pytest.raises(DiskFull, match=r"the KV cache of this block \(its disk share\) needs .* in .*scratch-"
                                           r".*, which has 4.00 KiB free: free space there, point offload_dir"):
            llm.generate(PROMPTS, PARAMS)
        assert files_under(llm.tiers.scratch_dir) == []
        monkeypatch.undo()
        assert len(llm.score([([5, 6], [7, 8])])[0].logprobs) == 2  # the model is intact: no cache, no disk


def test_blocks_finished_before_the_disk_filled_are_kept(tiny_llama_dir, tmp_path, monkeypatch):
    with LLM.from_pretrained(tiny_llama_dir, policy=DISK_CACHE, offload_dir=str(tmp_path)) as llm:
        want = llm.generate(PROMPTS, PARAMS)
        calls = fail_allocations_after(monkeypatch, 6)  # one block: K and V of 3 layers
        kept = []
        with pytest.raises(DiskFull, match=r"k0-0.bin needs .* which has .* free"):
            llm.generate(PROMPTS, PARAMS, on_block=kept.extend)
        assert len(calls) == 7
        assert len(kept) == 2  # the first block (its requests as the planner grouped them), handed over
        for i, out in kept:
            assert out.outputs[0].token_ids == want[i].outputs[0].token_ids
        assert files_under(llm.tiers.scratch_dir) == []  # no partial cache left, nor the first block's


def test_weights_that_do_not_fit_leave_no_partial_copy(tiny_llama_dir, tmp_path, monkeypatch):
    offload = tmp_path / "offload"
    offload.mkdir()
    monkeypatch.setattr(tiers_module, "free_bytes", lambda directory: 1000)
    with pytest.raises(DiskFull, match=r"the weights' disk share \(100%\) needs .* in .*offload, which has 1000 B"):
        LLM.from_pretrained(tiny_llama_dir, policy=Policy(weights=(0, 0, 100)), offload_dir=str(offload))
    assert files_under(offload) == []
    monkeypatch.undo()
    fail_allocations_after(monkeypatch, 2)  # the disk fills on the third layer's file
    with pytest.raises(DiskFull, match=r"layer1.bin needs"):
        LLM.from_pretrained(tiny_llama_dir, policy=Policy(weights=(0, 0, 100)), offload_dir=str(offload))
    assert files_under(offload) == []  # the two layers written before it are gone too
    monkeypatch.undo()
    with LLM.from_pretrained(tiny_llama_dir, policy=Policy(weights=(0, 0, 100)), offload_dir=str(offload)) as llm:
        assert llm.generate([[5, 6]], PARAMS)[0].outputs[0].token_ids


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 1 MiB filesystem, where the machine lets the test mount one (root, no sandbox)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here; the fault-injecting tests above cover the same paths")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_real_full_disk_is_an_exception_not_a_bus_error(tiny_llama_dir, tiny_tmpfs):
    with LLM.from_pretrained(tiny_llama_dir, policy=DISK_CACHE.with_(gpu_batch_size=6),
                             offload_dir=str(tiny_tmpfs)) as llm:
        with pytest.raises(DiskFull, match=r"needs .* which has .* free"):
            llm.generate([PROMPTS[0] * 50] * 6, SamplingParams(max_new_tokens=50, ignore_eos=True))
        assert files_under(str(tiny_tmpfs)) == []
        assert llm.generate(PROMPTS[:1], PARAMS)[0].outputs[0].token_ids  # small enough for the disk that is left
