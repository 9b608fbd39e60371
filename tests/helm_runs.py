"""helm-run and its outputs, for the tests that run it end to end."""
from __future__ import annotations

import json
import os
import subprocess


def run(cmd: list[str], cwd) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def predictions(out_dir, suite: str, scenario: str = "synthetic_reasoning") -> list[str]:
    """Each request's first completion, in the run's order."""
    runs = os.path.join(out_dir, "runs", suite)
    (run_dir,) = [d for d in os.listdir(runs) if d.startswith(scenario)]
    with open(os.path.join(runs, run_dir, "scenario_state.json")) as f:
        states = json.load(f)["request_states"]
    return [s["result"]["completions"][0]["text"] for s in states]
