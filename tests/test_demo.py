"""`make demo` end to end (minutes: slow tier)."""
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_helm_and_lm_eval_with_weights_on_disk(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "flexgen-eval")
    done = subprocess.run([exe, "demo", "--out", str(tmp_path), "--helm-instances", "4", "--lm-eval-limit", "8"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["helm"]) == 2 and summary["lm_eval"]
    sources = {r["source"] for r in summary["runtime"]}
    assert sources == {"helm", "lm_eval"}
    for record in summary["runtime"]:
        assert record["planned"] and record["memory"]["read"]["disk"] > 0
    assert "exact_match" in done.stdout
