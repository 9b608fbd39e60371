"""`flexgen-eval demo`: the main job end to end on the embedded default model, offline.

Fetches SmolLM2-135M, gives it a memory budget small enough that the planner sends
part of the weights to disk, then runs a HELM suite through `helm-run` (batching
runner, the two synthetic scenarios, `helm-summarize`) and an lm-eval run through the
stock `lm_eval --model flexgen` (a generated task; real tasks too when
FLEXGEN_DATA_DIR is set), and prints scores, speed and where the bytes lived.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

from flexgen_core.model import store as model_store
from flexgen_core.units import format_size
from flexgen_eval import run_stats

BUDGET = {"gpu": "512MiB", "cpu": "256MiB", "disk": "2GiB"}  # fp32 weights alone are ~650 MiB
HELM_ENTRIES = ["synthetic_reasoning:mode=pattern_match", "synthetic_reasoning_natural:difficulty=easy"]
MODEL_NAME = "flexgen/smollm2-135m-demo"
HELM_METRICS = ("exact_match", "quasi_exact_match", "f1_set_match", "iou_set_match", "num_instances")
SCENARIOS = os.path.join(os.path.dirname(__file__), "..", "..", "scenarios", "lm_eval")


def register(subparsers):
    p = subparsers.add_parser("demo", help="HELM + lm-eval on the default model with part of it on disk, offline")
    p.add_argument("--model", default=model_store.DEFAULT_MODEL,
                   help="embedded model name or local HF checkpoint dir (default: %(default)s)")
    p.add_argument("--out", default="demo_output", help="where outputs go (default: %(default)s)")
    p.add_argument("--helm-instances", type=int, default=20, help="instances per HELM scenario")
    p.add_argument("--lm-eval-limit", type=int, default=40, help="documents per lm-eval task")
    p.add_argument("--gpu-mem", default=BUDGET["gpu"])
    p.add_argument("--cpu-mem", default=BUDGET["cpu"])
    p.add_argument("--disk-mem", default=BUDGET["disk"])
    p.set_defaults(func=run)


def _bin(name: str) -> str:
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else name


def _step(title: str, cmd: list[str], env: dict) -> float:
    print(f"\n== {title}\n$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{title} failed (exit {done.returncode}); its output is above")
    return time.perf_counter() - start


def run(args) -> int:
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    print(f"fetching {args.model} ...", flush=True)
    model_dir = model_store.resolve_model(args.model)
    stats_file = os.path.join(out, "runtime_stats.jsonl")
    if os.path.exists(stats_file):
        os.remove(stats_file)
    env = dict(os.environ, FLEXGEN_EVAL_STATS_FILE=stats_file, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    offload = os.path.join(out, "offload")
    timings = {}

    # HELM: deployment with a planned policy, the batching runner, then helm-summarize.
    prod_env = os.path.join(out, "prod_env")
    timings["helm-config"] = _step("HELM deployment (planner picks the placement)", [
        _bin("flexgen-eval"), "helm-config", "--model", model_dir, "--name", MODEL_NAME, "--out", prod_env,
        "--gpu-mem", args.gpu_mem, "--cpu-mem", args.cpu_mem, "--disk-mem", args.disk_mem, "--hardware", "cpu",
        "--plan-prompt-len", "256", "--plan-gen-len", "16", "--offload-dir", offload], env)
    helm_out = os.path.join(out, "helm")
    entries = [f"{e},model={MODEL_NAME}" for e in HELM_ENTRIES]
    timings["helm-run"] = _step("HELM suite through helm-run", [
        _bin("helm-run"), "--run-entries", *entries, "--suite", "demo", "--max-eval-instances",
        str(args.helm_instances), "--local-path", prod_env, "--output-path", helm_out,
        "--runner-class-name", "flexgen_eval.helm.runner.BatchingRunner"], env)
    timings["helm-summarize"] = _step("helm-summarize", [
        _bin("helm-summarize"), "--suite", "demo", "--output-path", helm_out], env)

    # lm-eval: the stock CLI finds --model flexgen through the installed .pth hook.
    tasks = ["offline_demo_sequences"]
    if os.environ.get("FLEXGEN_DATA_DIR") and os.path.isdir(os.environ["FLEXGEN_DATA_DIR"]):
        tasks += ["offline_arc_easy", "offline_mmlu_abstract_algebra"]
    lm_out = os.path.join(out, "lm_eval")
    model_args = (f"pretrained={model_dir},dtype=float32,gpu_mem={args.gpu_mem},cpu_mem={args.cpu_mem},"
                  f"disk_mem={args.disk_mem},offload_dir={offload}")
    timings["lm_eval"] = _step("lm-eval through `lm_eval --model flexgen`", [
        _bin("lm_eval"), "--model", "flexgen", "--model_args", model_args, "--tasks", ",".join(tasks),
        "--include_path", os.path.abspath(SCENARIOS), "--limit", str(args.lm_eval_limit),
        "--output_path", lm_out, "--device", "cpu"], env)

    summary = {"model": model_dir, "budget": {"gpu": args.gpu_mem, "cpu": args.cpu_mem, "disk": args.disk_mem},
               "helm": _helm_scores(helm_out), "lm_eval": _lm_eval_scores(lm_out),
               "runtime": run_stats.read(stats_file), "seconds": timings,
               "outputs": {"helm": helm_out, "lm_eval": lm_out, "prod_env": prod_env}}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(render(summary))
    return 0


def _helm_scores(helm_out: str) -> list[dict]:
    rows = []
    for run_dir in sorted(glob.glob(os.path.join(helm_out, "runs", "demo", "*"))):
        stats_path = os.path.join(run_dir, "stats.json")
        if not os.path.exists(stats_path):
            continue
        with open(stats_path) as f:
            stats = json.load(f)
        wanted = {}
        for s in stats:
            name = s["name"]
            if name.get("split") == "test" and not name.get("perturbation") and name["name"] in HELM_METRICS:
                wanted[name["name"]] = s.get("mean")
        rows.append({"run": os.path.basename(run_dir), **wanted})
    return rows


def _lm_eval_scores(lm_out: str) -> list[dict]:
    files = sorted(glob.glob(os.path.join(lm_out, "**", "results_*.json"), recursive=True), key=os.path.getmtime)
    if not files:
        return []
    with open(files[-1]) as f:
        data = json.load(f)
    rows = []
    for task, metrics in data.get("results", {}).items():
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and "stderr" not in key and key not in ("alias", "sample_len"):
                rows.append({"task": task, "metric": key, "value": value,
                             "samples": data.get("n-samples", {}).get(task, {}).get("effective")})
    return rows


def render(summary: dict) -> str:
    lines = ["", "=" * 78, "flexgen-eval demo: SmolLM2-135M on CPU, budget "
             + ", ".join(f"{t} {v}" for t, v in summary["budget"].items()), "-" * 78, "HELM (helm-run):"]
    for r in summary["helm"]:
        scores = "  ".join(f"{m} {r[m]:.3f}" for m in HELM_METRICS[:-1] if r.get(m) is not None)
        lines.append(f"  {r['run'].split(',model=')[0]:<44} {scores}  ({r.get('num_instances', 0):.0f} instances)")
    lines.append("lm-eval (lm_eval --model flexgen):")
    for r in summary["lm_eval"]:
        lines.append(f"  {r['task']:<32} {r['metric']:<28} {r['value']:.3f}  ({r['samples']} docs)")
    lines.append("runtime:")
    for r in summary["runtime"]:
        tokens = sum(t["tokens"] for t in r["totals"].values())
        seconds = sum(t["seconds"] for t in r["totals"].values())
        requests = sum(t["rows"] for t in r["totals"].values())
        mem = r["memory"]
        lines.append(f"  {r['source']:<8} {requests} rows, {tokens} tokens in {seconds:.1f} s "
                     f"({tokens / seconds if seconds else 0:.0f} tokens/s)")
        lines.append(f"           policy: {r['policy']}")
        lines.append("           resident: " + ", ".join(f"{t} {format_size(mem['resident'][t])}" for t in mem["resident"])
                     + f"; read from disk: {format_size(mem['read']['disk'])}")
    lines.append("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items()))
    lines.append("outputs: " + ", ".join(f"{k} {v}" for k, v in summary["outputs"].items()))
    lines.append("=" * 78)
    return "\n".join(lines)
