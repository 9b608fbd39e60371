"""What runs inside each Ray worker process: one LLM, loaded once, answering chunks of requests."""
from __future__ import annotations

import os
from typing import Callable


def load_pretrained(name_or_dir: str, **kwargs):
    """The default loader: `LLM.from_pretrained` in the worker's own process (its devices, its memory)."""
    from flexgen_core import LLM

    return LLM.from_pretrained(name_or_dir, **kwargs)


class Worker:
    """A Ray actor owning one LLM. `load()` builds it; `threads` caps torch's CPU threads, so
    workers sharing a machine do not oversubscribe its cores."""

    def __init__(self, load: Callable[[], object], threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        # A load that fails (bad path, impossible budget) is reported by describe() as the loader's own
        # error: a constructor that raises would be Ray's ActorDiedError, and restarted to fail again.
        self.llm, self.load_error = None, None
        try:
            self.llm = load()
        except Exception as e:  # noqa: BLE001 - re-raised by describe()
            self.load_error = e

    def ready(self) -> bool:
        return True

    def describe(self) -> dict:
        """What the driver shows and tokenizes with: the model, its placement and tokenizer."""
        import ray

        if self.load_error is not None:
            raise self.load_error
        llm = self.llm
        return {"spec": llm.spec, "tokenizer": llm.tokenizer, "policy": llm.policy, "dtype": llm.dtype,
                "device": str(llm.device), "path": llm.path, "budgets": llm.budgets, "plan": llm.plan,
                "placement": llm.describe_placement(), "node": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid()}

    def set_tokenizer(self, tokenizer) -> None:
        self.llm.tokenizer = tokenizer

    def run(self, method: str, items: list, kwargs: dict) -> tuple[list, dict]:
        """`llm.<method>(items, **kwargs)`'s results in item order, and the worker's running totals."""
        results = getattr(self.llm, method)(items, **kwargs)
        return results, {"totals": self.llm.totals, "memory": self.llm.memory_stats()}
