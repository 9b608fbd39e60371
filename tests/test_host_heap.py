"""Freed host memory that piles up in malloc's heaps goes back to the system (flexgen_core.memory.host_heap)."""
import threading

import pytest
import torch

import tiny_models
from flexgen_core import LLM, Policy, SamplingParams
from flexgen_core.memory import host_heap

glibc = pytest.mark.skipif(host_heap.resident_free_bytes() is None, reason="needs glibc and /proc")


@glibc
def test_freed_blocks_held_in_a_threads_heap_go_back():
    """Blocks allocated on another thread come from its arena's heaps; freeing all but every 8th (as
    a run's reads are freed around what it keeps) leaves the heaps resident until they are given back."""
    kept, made = [], []

    def allocate():  # 8 MiB blocks: under glibc's mmap threshold once larger ones have been freed
        for i in range(96):
            t = torch.ones(8 << 20, dtype=torch.uint8)
            (kept if i % 8 == 7 else made).append(t)

    torch.empty(24 << 20, dtype=torch.uint8)  # a freed 24 MiB block (mmapped) raises the threshold above 8 MiB
    worker = threading.Thread(target=allocate)
    worker.start()
    worker.join()
    made.clear()
    held = host_heap.resident_free_bytes()
    assert held > 256 << 20  # most of the 704 MiB freed stays resident
    assert not host_heap.give_back(keep=held + (64 << 20))  # under what the caller keeps: nothing done
    assert host_heap.give_back(keep=0)
    assert host_heap.resident_free_bytes() < held - (256 << 20)
    assert all(int(t[0]) == 1 for t in kept)  # what is still in use is untouched


def test_a_block_run_offers_freed_memory_back_after_each_layer_step(tmp_path, monkeypatch):
    """After each layer step the scheduler gives back what the heaps hold beyond what its next steps
    reuse: two of its largest layers, or KEEP_RESIDENT_FREE if that is more."""
    path = tiny_models.tiny_llama(str(tmp_path / "m"), seed=1)
    offered = []
    monkeypatch.setattr(host_heap, "give_back", lambda keep: offered.append(keep) or False)
    policy = Policy(weights=(0, 0, 100), cache=(100, 0, 0), activations=(100, 0, 0), gpu_batch_size=2)
    with LLM.from_pretrained(path, policy=policy, offload_dir=str(tmp_path / "off")) as llm:
        llm.generate([[5, 6, 7], [8, 9]], SamplingParams(max_new_tokens=3, ignore_eos=True))
        layers = len(llm.scheduler.layers)
        largest = max(llm.scheduler.weights.layer_bytes(j) for j in range(layers))
    assert offered == [max(host_heap.KEEP_RESIDENT_FREE, 2 * largest)] * (3 * layers)
