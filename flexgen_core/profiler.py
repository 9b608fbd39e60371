"""Measuring a machine by running the model on it: the full hardware profile `flexgen-eval profile`
writes. Above both planning (whose rates it completes) and the runtime (which it runs)."""
from __future__ import annotations

import time

import torch

from .planning.hardware import HardwareProfile
from .planning.measure import measure_rates
from .planning.policy import Policy
from .runtime.llm import LLM
from .runtime.sampling import SamplingParams


def measure_profile(offload_dir: str, device: str | None = None, **kwargs) -> HardwareProfile:
    """measure_rates, plus on CUDA the host's time per layer call of our own decode loop."""
    profile = measure_rates(offload_dir, device, **kwargs)
    if profile.device == "cuda":
        profile = profile.with_(layer_call_s=_layer_call_s(profile.device, offload_dir))
    return profile


def _layer_call_s(device: str, offload_dir: str, steps: int = 8) -> float:
    """Host time per layer call of our own decode loop: OPT-125M (dummy weights, all on the
    device) decoding one sequence, where the device work per layer is a few microseconds."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with LLM.from_pretrained("opt-125m", policy=Policy(), device=device,
                             dtype="float16" if device == "cuda" else "float32", dummy_weights=True,
                             offload_dir=offload_dir) as llm:
        def run(n):
            sync()
            start = time.perf_counter()
            llm.generate([[5, 6, 7, 8, 9, 10, 11, 12]], SamplingParams(max_new_tokens=n, ignore_eos=True))
            sync()
            return time.perf_counter() - start
        run(2)
        one = min(run(1) for _ in range(3))
        many = min(run(steps + 1) for _ in range(3))
        calls = len(llm.layers)  # embedding, decoder layers, head
    return max(0.0, (many - one) / steps / calls)
