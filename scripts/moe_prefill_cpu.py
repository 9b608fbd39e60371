"""Where a bf16 OLMoE-1B-7B block's time goes on a CPU: NB batches of 16 x 512 random tokens (dummy
weights) under the placement the planner chose for issue 23's best-batch run (weights on disk, 80% of
the cache on disk, activations on disk), prefill and one decode step, with the 45 costliest calls.

    .venv/bin/python scripts/moe_prefill_cpu.py [NB]        (default 2)
"""
import cProfile
import pstats
import random
import sys
import tempfile
import time

import torch

from flexgen_core import LLM, Policy, SamplingParams

nb = int(sys.argv[1]) if len(sys.argv) > 1 else 2
policy = Policy(weights=(0, 0, 100), cache=(19.77, 0, 80.23), activations=(0, 0, 100), gpu_batch_size=16,
                num_gpu_batches=nb)
rng = random.Random(0)
prompts = [[rng.randrange(100, 50000) for _ in range(512)] for _ in range(16 * nb)]
with tempfile.TemporaryDirectory() as offload, \
        LLM.from_pretrained("olmoe-1b-7b", policy=policy, dtype=torch.bfloat16, dummy_weights=True,
                            offload_dir=offload) as llm:
    llm.generate(prompts[:16], SamplingParams(max_new_tokens=1, ignore_eos=True))  # first touches
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    llm.generate(prompts, SamplingParams(max_new_tokens=2, ignore_eos=True))
    profiler.disable()
    steps = [round(s, 2) for s in llm.last_run["step_seconds"][0]]
    print(f"{16 * nb} sequences: {time.perf_counter() - start:.1f} s; prefill, decode step: {steps} s")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
