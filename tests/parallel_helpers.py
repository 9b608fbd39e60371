"""Loaders that Ray workers import in tests (the tests folder is on their PYTHONPATH)."""
from __future__ import annotations

import json
import os


def load_logging(path: str, log: str, crash_marker: str | None = None, sharing: int = 1, **kwargs):
    """An LLM that appends every request it starts computing to `log`; with `crash_marker`, the
    first worker to start a chunk (the one that creates the marker) dies there, as an out-of-memory
    kill would: after it has started, before it answers; with crash_marker="always", every one does."""
    from flexgen_eval.parallel.worker import load_pretrained

    return _Logging(load_pretrained(path, sharing=sharing, **kwargs), log, crash_marker)


class _Logging:
    def __init__(self, llm, log, crash_marker):
        self.llm, self.log, self.crash_marker = llm, log, crash_marker

    def __getattr__(self, name):
        return getattr(self.llm, name)

    def __setattr__(self, name, value):
        if name in ("llm", "log", "crash_marker"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.llm, name, value)

    def _started(self, keys):
        with open(self.log, "a") as f:
            f.writelines(json.dumps(k) + "\n" for k in keys)
        if self.crash_marker == "always":
            os._exit(1)
        if self.crash_marker is not None:
            try:
                os.close(os.open(self.crash_marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            os._exit(1)

    def score_choices(self, groups, **kwargs):
        self._started([list(context) for context, _ in groups])
        return self.llm.score_choices(groups, **kwargs)

    def generate(self, prompts, params=None, **kwargs):
        self._started([list(p) for p in prompts])
        return self.llm.generate(prompts, params, **kwargs)
