"""`flexgen-eval check-planner`: the cost model and the planner against measured runs on this machine.

For each model, a grid of placement policies (weights, cache and activations on the device / CPU /
disk tiers, several block shapes, overlap off) is run with `LLM.generate` on random prompts of the
exact length; each run's measured prefill and decode time and the runtime's peak memory per tier are
set beside the cost model's prediction from a hardware profile measured at the start. Then the
planner picks a policy for a memory budget and that policy is measured too, against the best
measured grid policy that fits the same budget.

    flexgen-eval check-planner [--models smollm2-135m,opt-125m] [--prompt-len 128]
        [--gen-len 8] [--repeat 2] [--profile FILE] [--out results/planner_cpu]

Writes OUT.md and OUT.json. Time per step is measured as: prefill = a generate() of 1 new token,
decode = a generate() of gen_len tokens minus that; the median over --repeat runs after a warm-up.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time


def grid():
    """(name, Policy kwargs): 12 placements and block shapes for a RAM budget that holds about a
    fifth of the weights besides the streaming buffers, so every one streams from disk."""
    disk, d90, d80 = (0, 0, 100), (10, 0, 90), (20, 0, 80)
    return [
        ("disk 4x1", dict(weights=disk, gpu_batch_size=4)),
        ("disk 8x1", dict(weights=disk, gpu_batch_size=8)),
        ("disk 16x1", dict(weights=disk, gpu_batch_size=16)),
        ("disk 32x1", dict(weights=disk, gpu_batch_size=32)),
        ("disk 8x4", dict(weights=disk, gpu_batch_size=8, num_gpu_batches=4)),
        ("disk 8x1 no overlap", dict(weights=disk, gpu_batch_size=8, overlap=False)),
        ("90% disk 8x1", dict(weights=d90, gpu_batch_size=8)),
        ("90% disk 16x1", dict(weights=d90, gpu_batch_size=16)),
        ("80% disk 16x1", dict(weights=d80, gpu_batch_size=16)),
        ("80% disk 8x2", dict(weights=d80, gpu_batch_size=8, num_gpu_batches=2)),
        ("disk, cache on disk 16x1", dict(weights=disk, cache=disk, gpu_batch_size=16)),
        ("90% disk, activations on disk 16x1", dict(weights=d90, activations=disk, gpu_batch_size=16)),
    ]


def measure(llm, block: int, prompt_len: int, gen_len: int, repeat: int, vocab: int) -> dict:
    import torch

    from flexgen_core import SamplingParams

    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(10, vocab - 10, (block, prompt_len), generator=gen).tolist()

    def run(n):
        t = time.perf_counter()
        llm.generate(prompts, SamplingParams(max_new_tokens=n, ignore_eos=True))
        return time.perf_counter() - t

    run(2)  # warm-up: first touch of buffers and disk files
    llm.tiers.reset_peaks()
    firsts, totals = [], []
    for _ in range(repeat):
        firsts.append(run(1))
        totals.append(run(gen_len))
    prefill = statistics.median(firsts)
    total = statistics.median(totals)
    return {"prefill_s": prefill, "decode_s": max(total - prefill, 0.0), "total_s": total,
            "runs_first_s": firsts, "runs_total_s": totals,
            "peak_bytes": dict(llm.memory_stats()["peak"])}


def policy_fits(est, budget: dict, margin: float) -> bool:
    return all(est.peak_memory[t] <= budget[t] * (1 - margin) for t in budget)


def add_arguments(ap):
    ap.add_argument("--models", default="smollm2-135m,opt-125m")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--profile", default=None, help="hardware profile JSON (default: measure one now)")
    ap.add_argument("--ram", type=float, default=1.0,
                    help="RAM budget as a fraction of the weights' bytes (default 1.0); on a CPU it is all "
                         "offered as the compute tier, the rest of the weights go to disk")
    ap.add_argument("--out", default=os.path.join("results", "planner_cpu"))
    ap.add_argument("--render-from", default=None, metavar="JSON", help="only rewrite OUT.md from a run's JSON")


def run(args) -> int:
    if args.render_from:
        with open(args.render_from) as f:
            write(json.load(f), args.out)
        print(open(args.out + ".md").read())
        return 0

    import torch

    from flexgen_core import LLM, Policy
    from flexgen_core.model.spec import BUILTIN_CONFIGS
    from flexgen_core.planning.cost_model import BlockModel, estimate
    from flexgen_core.planning.hardware import load_profile
    from flexgen_core.planning.planner import plan_policy
    from flexgen_core.profiler import measure_profile
    from flexgen_core.runtime.llm import resolve_checkpoint

    # removed at exit, also when a run fails: it holds the disk tier's weights
    scratch = tempfile.TemporaryDirectory(prefix="validate-planner-")
    offload = scratch.name
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()
    if args.profile:
        profile = load_profile(args.profile)
    else:
        print("measuring the hardware profile ...", flush=True)
        profile = measure_profile(offload, "cpu")
    report = {"command": " ".join(shlex.quote(a) for a in ["flexgen-eval", *sys.argv[1:]]),
              "date": started.strftime("%Y-%m-%d %H:%M UTC"), "load_avg_start": load_start,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                         f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
              "prompt_len": args.prompt_len, "gen_len": args.gen_len, "repeat": args.repeat,
              "profile": profile.to_dict(), "models": {}}
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        dummy = model in BUILTIN_CONFIGS and not model.startswith("smollm2")
        source = model if dummy else resolve_checkpoint(model)
        rows = []

        def run_policy(name, policy, note=""):
            est = estimate(spec, policy, args.prompt_len, args.gen_len, profile, dtype_bytes=4)
            with LLM.from_pretrained(source, policy=policy, device="cpu", dtype="float32", dummy_weights=dummy,
                                     offload_dir=offload) as llm:
                got = measure(llm, policy.block_size, args.prompt_len, args.gen_len, args.repeat,
                              spec.vocab_size)
            row = {"name": name, "note": note, "policy": policy.describe(), "block": policy.block_size,
                   "predicted": {"prefill_s": est.prefill_time, "decode_s": est.decode_time,
                                 "total_s": est.total_time, "peak_bytes": {t: int(v) for t, v in
                                                                           est.peak_memory.items()}},
                   "measured": got}
            row["time_ratio"] = est.total_time / got["total_s"]
            row["throughput_tok_s"] = policy.block_size * args.gen_len / got["total_s"]
            print(f"  {name:36s} predicted {est.total_time:7.2f} s  measured {got['total_s']:7.2f} s  "
                  f"ratio {row['time_ratio']:.2f}", flush=True)
            rows.append(row)
            return row, est

        with LLM.from_pretrained(source, device="cpu", dtype="float32", dummy_weights=dummy,
                                 offload_dir=offload) as probe:
            spec = probe.spec
        print(f"== {model}", flush=True)
        ests = {}
        for name, kw in grid():
            _, ests[name] = run_policy(name, Policy(**kw))
        weight_bytes = BlockModel(spec, Policy(), args.prompt_len, args.gen_len, profile, 4).total_weight_bytes
        budget = {"gpu": int(args.ram * weight_bytes), "cpu": 0, "disk": 64 << 30}
        report["models"][model] = {"dummy_weights": dummy, "rows": rows, "budget_bytes": budget}
        write(report, args.out)
        plan = plan_policy(spec, args.prompt_len, args.gen_len, budget, profile, dtype_bytes=4,
                           max_block_size=32)
        planned, _ = run_policy("planner", plan.policy, note=plan.binding)
        fitting = [r for r in rows[:-1] if policy_fits(ests[r["name"]], budget, 0.1)]
        best = max(fitting, key=lambda r: r["throughput_tok_s"]) if fitting else None
        report["models"][model] = {
            "dummy_weights": dummy, "rows": rows, "budget_bytes": budget,
            "plan": {"policy": plan.policy.describe(), "binding": plan.binding},
            "best_fitting_grid": best["name"] if best else None,
            "planner_vs_best": planned["throughput_tok_s"] / best["throughput_tok_s"] if best else None,
        }
        write(report, args.out)
    report["load_avg_end"] = os.getloadavg()
    write(report, args.out)
    print(open(args.out + ".md").read())


ROUNDING = 4096  # bytes: each layer's byte buffer is split at whole bytes, each cache buffer at whole rows


def memory_ok(row: dict) -> bool:
    for t in ("gpu", "cpu", "disk"):
        pred, meas = row["predicted"]["peak_bytes"][t], row["measured"]["peak_bytes"][t]
        if pred < meas - ROUNDING or pred > 1.3 * meas + ROUNDING:
            return False
    return True


def gib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def write(report: dict, out: str):
    with open(out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    lines = [
        "# Cost model and planner vs measured runs on this CPU (issue #5)",
        "",
        f"Command: `{report['command']}`; {report['date']}; {report['machine']}; load average at start "
        f"{report['load_avg_start'][0]:.1f}"
        + (f", at end {report['load_avg_end'][0]:.1f}" if "load_avg_end" in report else "") + ".",
        f"Workload: prompt {report['prompt_len']}, gen {report['gen_len']}, fp32, the block's sequences at once; "
        f"measured = median of {report['repeat']} runs after a warm-up (prefill = a 1-token generate, decode = "
        "the rest); predicted = `cost_model.estimate` with the hardware profile measured at the start "
        f"(`{report['profile']['source']}`). Peak memory: the runtime's own per-tier accounting "
        "(resident weights, cache, activations and staging buffers it allocates) vs the model's peak.",
        "",
    ]
    for model, m in report["models"].items():
        if "plan" not in m:
            m = dict(m, plan={"policy": "(not planned yet)", "binding": ""}, best_fitting_grid=None,
                     planner_vs_best=None)
        lines += [f"## {model}{' (dummy weights)' if m['dummy_weights'] else ''}", "",
                  "| policy | block | predicted s | measured s | pred/meas | prefill pred/meas s | "
                  "peak gpu pred/meas | peak cpu pred/meas | peak disk pred/meas |",
                  "|---|---:|---:|---:|---:|---|---|---|---|"]
        for r in m["rows"]:
            p, g = r["predicted"], r["measured"]
            mem = " | ".join(f"{gib(p['peak_bytes'][t])} / {gib(g['peak_bytes'][t])}" for t in ("gpu", "cpu", "disk"))
            lines.append(f"| {r['name']} ({r['policy']}) | {r['block']} | {p['total_s']:.2f} | {g['total_s']:.2f} | "
                         f"{r['time_ratio']:.2f} | {p['prefill_s']:.2f} / {g['prefill_s']:.2f} | {mem} |")
        within = sum(0.75 <= r["time_ratio"] <= 1.25 for r in m["rows"])
        covered = sum(memory_ok(r) for r in m["rows"])
        worst = max(r["predicted"]["peak_bytes"][t] / r["measured"]["peak_bytes"][t]
                    for r in m["rows"] for t in ("gpu", "cpu", "disk") if r["measured"]["peak_bytes"][t])
        best_all = max(m["rows"][:-1], key=lambda r: r["throughput_tok_s"]) if len(m["rows"]) > 1 else None
        lines += ["", f"Time within ±25%: {within} of {len(m['rows'])} policies.",
                  f"Peak memory: predicted ≥ measured and ≤ 1.3 × measured on every tier for {covered} of "
                  f"{len(m['rows'])} policies (largest ratio {worst:.2f}; ≥ allows {ROUNDING} bytes for rounding "
                  "each layer's split to whole bytes).",
                  f"Planner (budget gpu {gib(m['budget_bytes']['gpu'])}, cpu {gib(m['budget_bytes']['cpu'])}, "
                  f"disk {gib(m['budget_bytes']['disk'])}): `{m['plan']['policy']}` (binding: {m['plan']['binding']}); "
                  f"best measured grid policy that fits the same budget: {m['best_fitting_grid']}; planner / best "
                  f"= {m['planner_vs_best'] if m['planner_vs_best'] is None else round(m['planner_vs_best'], 3)}"
                  + (f"; best of all {len(m['rows']) - 1} grid policies, fitting or not: {best_all['name']}, planner / it = "
                     f"{m['rows'][-1]['throughput_tok_s'] / best_all['throughput_tok_s']:.3f}"
                     if best_all and m["rows"][-1]["name"] == "planner" else "") + ".", ""]
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")

