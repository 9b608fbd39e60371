"""Scale-out: a suite's requests shared among Ray workers, each owning one `LLM` (its own budgets
and plan), behind the same calls the adapters make on a single `LLM`."""
from .executor import DataParallelLLM, WorkerLost

__all__ = ["DataParallelLLM", "WorkerLost"]
