"""A batching-runner helm-run killed (SIGKILL) in the middle of a run spec: the rerun computes only
what was not cached, and everything finished before the kill was, block by block."""
import glob
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

BIN = os.path.dirname(sys.executable)
TOTAL = 40
ENTRY = "synthetic_reasoning:mode=pattern_match,model=flexgen/tiny-resume"


def cached_requests(prod_env) -> int:
    """Model requests in HELM's sqlite caches under prod_env (readable while helm-run writes them);
    the tokenizer's entries, which share the file, are not counted."""
    total = 0
    for path in glob.glob(os.path.join(prod_env, "cache", "*.sqlite")):
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.2) as db:
                tables = [t for (t,) in db.execute("select name from sqlite_master where type='table'")]
                for t in tables:
                    keys = [json.loads(k) for (k,) in db.execute(f'select key from "{t}"')]
                    total += sum(1 for k in keys if "tokenizer" not in k)
        except sqlite3.Error:
            pass  # mid-write: try again
    return total


@pytest.fixture(scope="module")
def deployment(tiny_llama_dir, tmp_path_factory):
    import argparse

    from flexgen_eval.commands import helm_config

    root = tmp_path_factory.mktemp("helm-resume")
    parser = argparse.ArgumentParser()
    helm_config.register(parser.add_subparsers(dest="command"))
    # blocks of one request: a kill can only lose the one in flight
    args = parser.parse_args(["helm-config", "--model", tiny_llama_dir, "--name", "tiny-resume", "--out",
                              str(root / "prod_env"), "--gpu-batch-size", "1", "--num-gpu-batches", "1"])
    assert args.func(args) == 0
    return root


def helm_run(root, **popen):
    cmd = [os.path.join(BIN, "helm-run"), "--run-entries", ENTRY, "--max-eval-instances", str(TOTAL),
           "--local-path", "prod_env", "-o", "out", "--suite", "resume",
           "--runner-class-name", "flexgen_eval.helm.runner.BatchingRunner"]
    return subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


def test_a_killed_helm_run_resumes_from_its_cache(deployment):
    prod_env = str(deployment / "prod_env")
    proc = helm_run(deployment)
    deadline, seen = time.time() + 240, 0
    while time.time() < deadline and proc.poll() is None:
        seen = cached_requests(prod_env)
        if seen >= 3:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail(f"helm-run ended before it could be killed mid-run:\n{proc.stdout.read()[-3000:]}")
    os.killpg(proc.pid, signal.SIGKILL)  # as an out-of-memory kill or a preempted node would
    proc.wait(timeout=60)
    kept = cached_requests(prod_env)
    assert 3 <= kept < TOTAL  # killed mid-run spec, with several blocks already cached

    rerun = helm_run(deployment)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out[-3000:]
    computed = sum(int(n) for n in re.findall(r"flexgen: batch of (\d+) requests", out))
    assert computed == TOTAL - kept  # nothing cached is computed again
    assert cached_requests(prod_env) == TOTAL
