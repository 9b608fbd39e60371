"""lm-eval runs compared request by request: the checks the backend and data-parallel tests share."""
from __future__ import annotations

import os

import pytest

TASKS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scenarios", "lm_eval")


def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=TASKS_DIR, include_defaults=False)


def evaluate(lm, tasks, manager, limit, **kw):
    from lm_eval import simple_evaluate

    return simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=True,
                           bootstrap_iters=0, **kw)


def metrics(result, task) -> dict:
    return {k: v for k, v in result["results"][task].items() if "stderr" not in k}


# A log-likelihood summed over a continuation reaches hundreds of nats on random tiny models, where
# one fp32 ulp is ~3e-5: agreement is asked to a few ulps of the value as well as to `tol`.
# (An AMD EPYC VM's kernels differed from HF by 1-3e-5 at -270 and by 1.9e-6 relative in a
# perplexity of 1.2e16, the same at the commit before any change of ours.)
FP32_REL = 1e-6


def samples_match(want_result, got_result, task, tol: float):
    """Same generations and greedy flags, log-likelihoods within `tol` (or a few fp32 ulps of their
    size), for every sample."""
    for want, got in zip(want_result["samples"][task], got_result["samples"][task], strict=True):
        for w, g in zip(want["resps"], got["resps"], strict=True):
            w, g = w[0], g[0]
            if isinstance(w, str):
                assert g == w
            elif isinstance(w, (list, tuple)):  # (log-likelihood, is_greedy)
                assert g[0] == pytest.approx(w[0], rel=FP32_REL, abs=tol) and g[1] == w[1]
            else:
                assert g == pytest.approx(w, rel=FP32_REL, abs=tol)


def metrics_match(want_result, got_result, tasks, rel: float = 1e-5):
    """Accuracy and exact match identical, other metrics (perplexities) to `rel`: a perplexity's
    relative difference is the difference of its mean log-likelihood per unit, which fp32 sums carry
    to ~1e-5."""
    for task in tasks:
        want, got = metrics(want_result, task), metrics(got_result, task)
        assert got.keys() == want.keys()
        for key, value in want.items():
            if key.startswith(("acc", "exact")):
                assert got[key] == value, (task, key)
            elif isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=rel), (task, key)
