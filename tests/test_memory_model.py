"""The cost model's memory terms cover what the runtime really allocates.

On a CPU device every tier is RAM, so what a generate allocates is the torch profiler's memory events
(with the I/O inline: the profiler records only the thread it runs on). Beyond the tensors resident
before the call (weights), the allocations must never outgrow the model's predicted peak of the
compute device plus the CPU tier: on a GPU an under-count there is an out-of-memory error (the
planner fills the budget to its margin). Counting one dequantised layer where the runtime holds two
fails this test for the compressed policies."""
from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from flexgen_core import LLM, Policy, SamplingParams
from flexgen_core.planning.cost_model import estimate
from flexgen_core.planning.hardware import load_profile

PROMPT, NEW = 64, 4
POLICIES = {
    "resident": dict(weights=(100, 0, 0), cache=(100, 0, 0), gpu_batch_size=8),
    "weights 50/50, cache on the CPU, 4x2": dict(weights=(50, 50, 0), cache=(0, 100, 0), gpu_batch_size=4,
                                                num_gpu_batches=2),
    "weights and cache on disk": dict(weights=(0, 0, 100), cache=(0, 0, 100), gpu_batch_size=8),
    "activations on the CPU, 4x2": dict(weights=(100, 0, 0), cache=(100, 0, 0), activations=(0, 100, 0),
                                       gpu_batch_size=4, num_gpu_batches=2),
    "compressed weights and cache": dict(weights=(100, 0, 0), cache=(0, 100, 0), gpu_batch_size=8,
                                         compress_weight=True, compress_cache=True),
    "compressed weights on disk": dict(weights=(0, 0, 100), cache=(100, 0, 0), gpu_batch_size=8,
                                       compress_weight=True),
}


def allocated_peak(fn) -> int:
    """Peak of the bytes allocated and not yet freed while fn runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("model", ["opt-125m", "smollm2-135m"])
@pytest.mark.parametrize("name", list(POLICIES))
def test_runtime_allocations_stay_within_the_predicted_peak(model, name, tmp_path):
    policy = Policy(**{"activations": (100, 0, 0), **POLICIES[name]}, overlap=False)
    gen = torch.Generator().manual_seed(0)
    with LLM.from_pretrained(model, policy=policy, device="cpu", dtype="float32", dummy_weights=True,
                             offload_dir=str(tmp_path)) as llm:
        prompts = torch.randint(10, llm.spec.vocab_size - 10, (policy.block_size, PROMPT), generator=gen).tolist()
        llm.generate(prompts, SamplingParams(max_new_tokens=2, ignore_eos=True))  # first-use allocations
        resident = llm.memory_stats()["resident"]
        before = resident["gpu"] + resident["cpu"]
        peak = allocated_peak(lambda: llm.generate(prompts, SamplingParams(max_new_tokens=NEW, ignore_eos=True)))
        predicted = estimate(llm.spec, policy, PROMPT, NEW, load_profile("cpu"), 4).peak_memory
    room = predicted["gpu"] + predicted["cpu"] - before
    assert peak > 0
    assert peak <= room, f"{model}, {name}: allocated {peak / 2**20:.1f} MiB, the model allows {room / 2**20:.1f} MiB"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("name", list(POLICIES))
def test_device_allocations_stay_within_the_predicted_peak_on_cuda(name, overlap, tmp_path):
    """The same on a GPU, where the allocator sees every thread (so overlap is checked too): what a
    generate allocates on the device beyond what was resident before stays within the predicted
    device peak less the resident weights."""
    policy = Policy(**{"activations": (100, 0, 0), **POLICIES[name]}, overlap=overlap)
    gen = torch.Generator().manual_seed(0)
    with LLM.from_pretrained("opt-125m", policy=policy, device="cuda", dtype="float16", dummy_weights=True,
                             offload_dir=str(tmp_path)) as llm:
        prompts = torch.randint(10, llm.spec.vocab_size - 10, (policy.block_size, PROMPT), generator=gen).tolist()
        llm.generate(prompts, SamplingParams(max_new_tokens=2, ignore_eos=True))
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        llm.generate(prompts, SamplingParams(max_new_tokens=NEW, ignore_eos=True))
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        resident = llm.memory_stats()["resident"]["gpu"]
        predicted = estimate(llm.spec, policy, PROMPT, NEW, load_profile("h100"), 2).peak_memory["gpu"]
    room = predicted - resident
    assert peak <= room, f"{name}, overlap {overlap}: allocated {peak / 2**20:.1f} MiB, the model allows {room / 2**20:.1f} MiB"
