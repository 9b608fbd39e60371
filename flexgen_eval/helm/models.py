"""One loaded LLM per (checkpoint, policy, dtype, device): HELM may build several clients
(two deployments of one model, a second executor), and each load costs the model's memory."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

_lock = threading.Lock()
_loaded: dict[tuple, "SharedLLM"] = {}


@dataclass
class SharedLLM:
    llm: object  # flexgen_core.LLM
    # The runtime is not re-entrant: every call into it holds this lock.
    lock: threading.Lock = field(default_factory=threading.Lock)
    # HF fast tokenizers fail under concurrent use ("Already borrowed"); HELM calls from many threads.
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)
    # One micro-batcher per model: HELM's AutoClient may build several clients for one deployment
    # when its threads race on the first request, and requests must still meet in one queue.
    batcher: object = None

    def shared_batcher(self, make):
        with _lock:
            if self.batcher is None:
                self.batcher = make()
            return self.batcher


def policy_from_args(policy: dict | None = None, percent=None):
    """A Policy from deployment args: `percent` (FlexGen's six numbers) and/or `policy` fields;
    None when neither is given (the runtime plans)."""
    from flexgen_core import Policy

    if policy is None and percent is None:
        return None
    fields = dict(policy or {})
    if percent is not None:
        return Policy.from_percent(percent, **fields)
    for name in ("weights", "cache", "activations"):
        if name in fields:
            fields[name] = tuple(fields[name])
    return Policy(**fields)


def load_llm(model: str, policy=None, dtype=None, device=None, memory: dict | None = None,
             offload_dir: str | None = None, data_parallel: int = 1, ray_address: str | None = None,
             **planning) -> SharedLLM:
    """The shared instance for these settings, loading it on first use. `planning`: the planner's
    hardware, workload and compression flags, used when there is no policy. With `data_parallel`
    > 1 (or a `ray_address`) that many Ray workers each load a copy, and the instance shares every
    call among them."""
    from flexgen_eval import parallel

    key = (str(model), repr(policy), str(dtype), str(device), repr(sorted((memory or {}).items())), offload_dir,
           int(data_parallel), ray_address, repr(sorted(planning.items())))
    with _lock:
        if key not in _loaded:
            llm = parallel.load(model, data_parallel, ray_address, policy=policy, device=device, dtype=dtype,
                                offload_dir=offload_dir, memory=memory, **planning)
            from flexgen_eval import run_stats

            run_stats.track(llm, "helm")
            if llm.tokenizer is None:
                llm.close()
                raise ValueError(f"model {model!r} has no tokenizer files; HELM needs one to read prompts")
            _loaded[key] = SharedLLM(llm)
        return _loaded[key]


def close_all():
    with _lock:
        for shared in _loaded.values():
            shared.llm.close()
        _loaded.clear()
