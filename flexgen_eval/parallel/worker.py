"""What runs inside each Ray worker process: one LLM, loaded once, answering chunks of requests."""
from __future__ import annotations

from typing import Callable


def load_pretrained(name_or_dir: str, sharing: int = 1, memory: dict | None = None, device=None,
                    offload_dir: str | None = None, **kwargs):
    """The default loader: `LLM.from_pretrained` in the worker's own process. `sharing` workers load
    on this node: each tier not named in `memory` gets 1/sharing of what the node has (a worker's
    own GPU stays whole), so copies planned at the same time do not all count the same memory."""
    from flexgen_core import LLM

    if sharing > 1:
        memory = node_share(memory, device, offload_dir, sharing)
    return LLM.from_pretrained(name_or_dir, memory=memory, device=device, offload_dir=offload_dir, **kwargs)


def node_share(memory: dict | None, device, offload_dir: str | None, sharing: int) -> dict:
    import torch

    from flexgen_core.planning.machine import detected_budgets

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    own_gpu = device.type == "cuda"
    named = dict(memory or {})
    for tier, (have, _) in detected_budgets(device, offload_dir).items():
        if tier not in named and not (tier == "gpu" and own_gpu):
            named[tier] = have // sharing
    return named


class Worker:
    """A Ray actor owning one LLM. `threads` caps torch's CPU threads, so workers sharing a machine
    do not oversubscribe its cores; the driver then calls load() once it knows how many workers
    share each node."""

    def __init__(self, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.llm, self.load_error = None, None

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def load(self, load: Callable[..., object], sharing: int) -> bool:
        """Build the LLM with `load(sharing=...)`. A load that fails (bad path, impossible budget) is
        reported by describe() as the loader's own error rather than killing the actor, which Ray
        would restart only for it to fail again."""
        try:
            self.llm, self.load_error = load(sharing=sharing), None
        except Exception as e:  # noqa: BLE001 - re-raised by describe()
            self.load_error = e
        return self.load_error is None

    def describe(self) -> dict:
        """What the driver shows and tokenizes with: the model, its placement and tokenizer."""
        if self.load_error is not None:
            raise self.load_error
        llm = self.llm
        return {"spec": llm.spec, "tokenizer": llm.tokenizer, "policy": llm.policy, "dtype": llm.dtype,
                "device": str(llm.device), "path": llm.path, "budgets": llm.budgets, "plan": llm.plan,
                "placement": llm.describe_placement(), "node": self.node()}

    def set_tokenizer(self, tokenizer) -> None:
        self.llm.tokenizer = tokenizer

    def run(self, method: str, items: list, kwargs: dict) -> tuple[list, dict]:
        """`llm.<method>(items, **kwargs)`'s results in item order, and the worker's running totals."""
        results = getattr(self.llm, method)(items, **kwargs)
        return results, {"totals": self.llm.totals, "memory": self.llm.memory_stats()}
