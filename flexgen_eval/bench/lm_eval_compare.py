"""`flexgen-eval compare-lm-eval`: wall time of `lm_eval --model hf --batch_size 16` against
`lm_eval --model flexgen` on the same tasks, with the metrics and per-sample log-likelihoods of
both compared. Writes OUT/NAME.{md,json} (default results/lm_eval_cpu).

    FLEXGEN_DATA_DIR=../shared/data flexgen-eval compare-lm-eval              # the default task sizes
    FLEXGEN_DATA_DIR=../shared/data flexgen-eval compare-lm-eval --scale 0.1  # a reduced run

Each run is a separate `lm_eval` process, so wall time includes start-up and model loading for both.
"""
from __future__ import annotations

import datetime
import glob
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

# the offline task YAMLs, and the working directory of every lm_eval run (relative data paths)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# task -> documents, as in issue 6's "done when"
TASKS = {"offline_arc_easy": 500, "offline_lambada_openai": 1000, "offline_hellaswag": 500, "offline_wikitext": 20,
         "offline_mmlu_abstract_algebra": 100, "offline_mmlu_management": 103}
# HF materialises [batch, 8192, vocab] fp32 logits for wikitext: batch 16 needs ~26 GB (FACTS.md), so 4 there
HF_BATCH = {"offline_wikitext": 4}


def lm_eval_command(model: str, model_args: str, task: str, limit: int, out_dir: str, batch_size: int | None,
                    num_fewshot: int | None = None) -> list[str]:
    """`task` may be several, comma-separated (one process for all); batch_size None: the CLI's default."""
    return [os.path.join(os.path.dirname(sys.executable), "lm_eval"), "--model", model, "--model_args", model_args,
            "--tasks", task, "--include_path", os.path.join(REPO, "scenarios", "lm_eval"), "--limit", str(limit),
            "--device", "cpu", "--log_samples", "--output_path", out_dir] + \
        ([] if batch_size is None else ["--batch_size", str(batch_size)]) + \
        ([] if num_fewshot is None else ["--num_fewshot", str(num_fewshot)])


def timed(cmd: list[str], log_path: str) -> float:
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return time.perf_counter() - start


def load_outputs(out_dir: str, task: str) -> tuple[dict, list[dict]]:
    results = sorted(glob.glob(os.path.join(out_dir, "**", "results_*.json"), recursive=True))[-1]
    samples = sorted(glob.glob(os.path.join(out_dir, "**", f"samples_{task}_*.jsonl"), recursive=True))[-1]
    with open(results) as f:
        metrics = {k: v for k, v in json.load(f)["results"][task].items() if "stderr" not in k and k != "alias"}
    with open(samples) as f:
        rows = sorted((json.loads(line) for line in f), key=lambda r: r["doc_id"])
    return metrics, rows


def sample_difference(a: list[dict], b: list[dict]) -> tuple[float, int]:
    """Largest |log-likelihood difference| over all responses, and how many other fields differ
    (greedy flags, generated text). The samples files store every field as a string."""
    worst, mismatched = 0.0, 0
    for x, y in zip(a, b, strict=True):
        for vx, vy in zip(_leaves(x["resps"]), _leaves(y["resps"]), strict=True):
            if _is_number(vx) and _is_number(vy):
                worst = max(worst, abs(float(vx) - float(vy)))
            else:
                mismatched += vx != vy
    return worst, mismatched


def _leaves(value) -> list:
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def _is_number(text) -> bool:
    if isinstance(text, bool):
        return False
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def same_metrics(a: dict, b: dict) -> bool:
    def close(x, y):
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)
        return x == y

    return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)


def machine() -> dict:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    import torch

    from flexgen_core.planning.machine import cpu_name

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "memory_gib": round(mem / 2**30, 1), "python": platform.python_version(),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def add_arguments(parser):
    parser.add_argument("--model", default="smollm2-135m", help="checkpoint dir or embedded model name")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each task's documents to run")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ",".join(TASKS))
    parser.add_argument("--flexgen_args", default="", help="extra flexgen model_args, e.g. gpu_batch_size=32")
    parser.add_argument("--num_fewshot", type=int, default=None,
                        help="in-context examples per prompt, for both backends (default: each task's own, 0 here)")
    parser.add_argument("--out", default="results", help="where NAME.{md,json} go")
    parser.add_argument("--name", default="lm_eval_cpu", help="file name of the report, without extension")
    parser.add_argument("--work", default="/tmp/flexgen-bench-lm-eval", help="lm_eval outputs and logs")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of each backend per task, alternating hf and flexgen; the median is reported")
    parser.add_argument("--planned", action="store_true",
                        help="flexgen without --batch_size (planned blocks); hf keeps its --batch_size")
    parser.add_argument("--one-run", action="store_true",
                        help="all tasks in one lm_eval process per backend (--limit: --one-run-limit)")
    parser.add_argument("--one-run-limit", type=int, default=300, help="documents per task with --one-run")


def run(args) -> int:
    if not os.environ.get("FLEXGEN_DATA_DIR"):
        raise ValueError("FLEXGEN_DATA_DIR is not set: point it at the shared benchmark data")
    from flexgen_core.runtime.llm import resolve_checkpoint

    model_dir = resolve_checkpoint(args.model)
    load_start = os.getloadavg()
    rows = []
    tasks = args.tasks.split(",")
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    units = [",".join(tasks)] if args.one_run else tasks
    for task in units:
        parts = task.split(",")
        limit = args.one_run_limit if args.one_run else max(1, round(TASKS[task] * args.scale))
        row = {"task": task, "limit": limit}
        # the same command for both but --model (and --batch_size with --planned)
        batch = min(HF_BATCH.get(t, 16) for t in parts)
        for k in range(args.rounds):  # alternating, so a change in the machine's load hits both
            for model, extra in (("hf", ""), ("flexgen", args.flexgen_args)):
                model_args = f"pretrained={model_dir},dtype=float32" + (f",{extra}" if extra else "")
                out_dir = os.path.join(args.work, model, task)
                size = None if (args.planned and model == "flexgen") else batch
                cmd = lm_eval_command(model, model_args, task, limit, out_dir, size, args.num_fewshot)
                print(f"[{task}] {model} round {k + 1}/{args.rounds}: {' '.join(cmd)}", flush=True)
                row.setdefault(f"{model}_runs_seconds", []).append(timed(cmd, out_dir + ".log"))
                row[f"{model}_command"] = " ".join(cmd)
                outputs = [load_outputs(out_dir, t) for t in parts]
                row[f"{model}_metrics"] = {t: m for t, (m, _) in zip(parts, outputs)} if args.one_run else outputs[0][0]
                row[f"{model}_samples"] = [r for _, rows_ in outputs for r in rows_]
        for model in ("hf", "flexgen"):
            row[f"{model}_seconds"] = statistics.median(row[f"{model}_runs_seconds"])
        row["speedup"] = row["hf_seconds"] / row["flexgen_seconds"]
        row["identical_metrics"] = (all(same_metrics(row["hf_metrics"][t], row["flexgen_metrics"][t]) for t in parts)
                                    if args.one_run else same_metrics(row["hf_metrics"], row["flexgen_metrics"]))
        row["max_loglik_diff"], row["mismatched_responses"] = sample_difference(row.pop("hf_samples"),
                                                                                 row.pop("flexgen_samples"))
        print(f"[{task}] hf {row['hf_seconds']:.1f}s flexgen {row['flexgen_seconds']:.1f}s "
              f"x{row['speedup']:.2f} identical={row['identical_metrics']}", flush=True)
        rows.append(row)
        report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "command": " ".join(["flexgen-eval", *sys.argv[1:]]), "model": model_dir,
                  "scale": args.scale, "rounds": args.rounds, "num_fewshot": args.num_fewshot,
                  "planned": args.planned, "one_run": args.one_run, "load_avg_start": load_start,
                  "load_avg_end": os.getloadavg(), "machine": machine(), "runs": rows}
        os.makedirs(args.out, exist_ok=True)  # rewritten after every task, so a cut run keeps what finished
        with open(os.path.join(args.out, args.name + ".json"), "w") as f:
            json.dump(report, f, indent=1, default=str)
        with open(os.path.join(args.out, args.name + ".md"), "w") as f:
            f.write(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    m = report["machine"]
    shots = report.get("num_fewshot")
    lines = [
        "# lm-eval on CPU: `--model hf --batch_size 16` vs `--model flexgen`"
        + ("" if shots is None else f", `--num_fewshot {shots}`"), "",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        f"- model: `{report['model']}` (fp32)",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, torch {m['torch']}, GPU: {m['gpu']}",
        (f"- documents: {report['runs'][0]['limit'] if report['runs'] else '-'} per task, all tasks in one `lm_eval` "
         "process per backend" if report.get("one_run") else
         f"- documents: {report['scale']:g} x the issue's sizes, one `lm_eval` process per task and backend")
        + "; wall time of whole `lm_eval` processes (start-up and model load included); "
        + ("hf at `--batch_size 16`, flexgen with no `--batch_size` (its planned blocks)" if report.get("planned") else
           "the same `--batch_size` for both (flexgen: a cap on its planned blocks), 4 for wikitext (HF needs "
           "~26 GB at 16)"),
        "- commands: " + "; ".join(f"`{r[m + '_command']}`" for r in report["runs"] for m in ("hf", "flexgen")),
        f"- tasks finished: {len(report['runs'])}",
        f"- median of {report.get('rounds', 1)} run(s) per backend, hf and flexgen alternating; load average "
        f"at start / end: {', '.join(f'{x:.1f}' for x in report.get('load_avg_start', [])) or '-'} / "
        f"{', '.join(f'{x:.1f}' for x in report.get('load_avg_end', [])) or '-'}", "",
        "| task | docs | hf s | flexgen s | speed-up | identical metrics | max per-sample loglik diff | other mismatches |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in report["runs"]:
        lines.append(f"| {r['task']} | {r['limit']} | {r['hf_seconds']:.1f} | {r['flexgen_seconds']:.1f} | "
                     f"{r['speedup']:.2f}x | {'yes' if r['identical_metrics'] else 'NO'} | "
                     f"{r['max_loglik_diff']:.2e} | {r['mismatched_responses']} |")
    lines += ["", "Speed-ups come from prefix sharing (each multiple-choice context computed once, and a "
              "block's common start, e.g. few-shot examples, computed once for its rows); tasks with one "
              "continuation per context run at the runtime's own speed. Timings from a shared machine vary "
              "run to run: rerun before quoting them.", "", "Metrics (hf / flexgen):", ""]
    for r in report["runs"]:
        metrics = [(r["task"], r["hf_metrics"], r["flexgen_metrics"])] if not report.get("one_run") else \
            [(t, r["hf_metrics"][t], r["flexgen_metrics"][t]) for t in r["hf_metrics"]]
        for task, hf, fg in metrics:
            lines.append(f"- {task}: {json.dumps(hf)} / {json.dumps(fg)}")
    return "\n".join(lines) + "\n"
