"""Where a run's bytes lived and how fast it went, written when the process exits.

`lm_eval` and `helm-run` own their processes; when FLEXGEN_EVAL_STATS_FILE is set, every LLM
the adapters load appends its policy, memory per tier and token totals to that JSON-lines file
at exit, so a caller (the demo) can report them."""
from __future__ import annotations

import atexit
import json
import os

ENV = "FLEXGEN_EVAL_STATS_FILE"


def track(llm, source: str) -> None:
    path = os.environ.get(ENV)
    if path:
        atexit.register(_write, llm, source, path)


def _write(llm, source: str, path: str) -> None:
    record = {
        "source": source,
        "model": llm.path or llm.spec.name,
        "policy": llm.policy.describe(),
        "planned": llm.plan is not None,
        "memory": llm.memory_stats(),
        "totals": llm.totals,
    }
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
