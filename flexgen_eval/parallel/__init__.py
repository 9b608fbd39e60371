"""Scale-out: a suite's requests shared among Ray workers, each owning one `LLM` (its own budgets
and plan), behind the same calls the adapters make on a single `LLM`."""
from .executor import DataParallelLLM, WorkerLost


def load(name_or_dir: str, workers: int = 1, address: str | None = None, **kwargs):
    """An LLM in this process, or (workers > 1, or a cluster address) that many Ray workers each
    loading and planning their own copy with the same arguments, behind the same calls."""
    if int(workers) > 1 or address:
        return DataParallelLLM(name_or_dir, workers=int(workers), address=address, **kwargs)
    from flexgen_core import LLM

    return LLM.from_pretrained(name_or_dir, **kwargs)


__all__ = ["DataParallelLLM", "WorkerLost", "load"]
