"""`accelerate launch -m lm_eval --model flexgen` with two CPU processes (gloo): each rank evaluates
its shard with its own LLM and rank 0 reports the metrics and samples of one process."""
import glob
import json
import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
TASKS = "offline_arc_easy,offline_demo_sequences"
TOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lm_eval(launcher, model_dir, out, cwd):
    cmd = launcher + ["--model", "flexgen", "--model_args", f"pretrained={model_dir},dtype=float32", "--device", "cpu",
                      "--tasks", TASKS, "--include_path", os.path.join(REPO, "scenarios", "lm_eval"), "--limit", "6",
                      "--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    (results,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    with open(results) as f:
        metrics = json.load(f)["results"]
    samples = {}
    for path in glob.glob(str(out / "**" / "samples_*.jsonl"), recursive=True):
        with open(path) as f:
            rows = [json.loads(line) for line in f]
        task = os.path.basename(path).split("samples_")[1].rsplit("_", 1)[0]
        samples[task] = {(r["doc_id"], json.dumps(r["arguments"])): r["resps"] for r in rows}
    return metrics, samples, proc.stdout + proc.stderr


def test_accelerate_launch_two_cpu_ranks_gives_one_process_metrics(tiny_llama_dir, flexgen_data_dir, tmp_path):
    one = _lm_eval([os.path.join(BIN, "lm_eval")], tiny_llama_dir, tmp_path / "one", tmp_path)
    launch = [os.path.join(BIN, "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
              "-m", "lm_eval"]
    two = _lm_eval(launch, tiny_llama_dir, tmp_path / "two", tmp_path)
    (want, want_samples, _), (got, got_samples, log) = one, two
    # two ranks, each evaluating its shard (3 of each task's 6 documents)
    for rank in (0, 1):
        assert f"Building contexts for offline_arc_easy on rank {rank}" in log
    assert log.count("flexgen loglikelihood: 100%|██████████| 12/12") >= 2  # 3 documents x 4 choices each
    assert got.keys() == want.keys() == set(TASKS.split(","))
    for task, values in want.items():
        for key, value in values.items():
            if key.startswith(("acc", "exact")) and "stderr" not in key:
                assert got[task][key] == value, (task, key)
    assert got_samples.keys() == want_samples.keys()
    for task, by_doc in want_samples.items():
        assert got_samples[task].keys() == by_doc.keys()  # every document once, from one rank or the other
        for doc, resps in by_doc.items():
            for w, g in zip(resps, got_samples[task][doc], strict=True):
                if isinstance(w[0], str):
                    assert g == w
                else:
                    assert float(g[0][0]) == pytest.approx(float(w[0][0]), abs=TOL) and g[0][1] == w[0][1]


def test_ranks_and_ray_workers_are_one_or_the_other(tiny_llama_dir, monkeypatch):
    from flexgen_eval.lm_eval_backend import FlexGenLM

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="use one or the other"):
        FlexGenLM(pretrained=tiny_llama_dir, device="cpu", data_parallel_size=2)
