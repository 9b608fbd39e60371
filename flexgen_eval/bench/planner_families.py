"""`flexgen-eval planner-families`: the plan for each built-in size of the families people offload, on
the t4 and a100-80g presets; writes OUT_DIR/planner_families.md and OUT_DIR/planner_families.json.

    flexgen-eval planner-families [--out-dir results] [--models pythia-12b,gemma-2-27b,...]

Pure cost-model arithmetic (no model runs): each row is what `flexgen-eval plan --model M --hardware H
--prompt-len P --gen-len G` prints, within the preset's own memory (10% kept free), fp16 weights and cache.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

from flexgen_core import ModelSpec
from flexgen_core.planning.hardware import load_profile
from flexgen_core.planning.planner import plan_policy
from flexgen_core.planning.sizes import model_sizes
from flexgen_core.units import format_size

from .planner_table import short

MODELS = ("opt-30b", "pythia-12b", "phi-3-medium", "qwen3-14b", "qwen3-32b", "olmo-2-13b", "olmo-2-32b",
          "gemma-2-27b", "gemma-3-27b")
HARDWARE = ("t4", "a100-80g")
WORKLOADS = ((512, 32), (1984, 64))  # the paper's, and one past Gemma 3's 1024-token window (within 2048)
MISSING = {"cpu": "200GiB", "disk": "1.5TB"}  # for a preset that names only its GPU (a100-80g): the t4 machine's


def budget(hw) -> tuple[dict, str]:
    """The preset's memory, the tiers it does not name from MISSING; and the `plan` flags that say so."""
    memory = {**MISSING, **hw.memory}
    flags = "".join(f" --{'cpu-mem' if t == 'cpu' else 'disk'} {v}" for t, v in MISSING.items() if t not in hw.memory)
    return memory, flags


def cache_per_sequence(spec: ModelSpec, positions: int, dtype_bytes: int = 2) -> int:
    """K and V of one sequence over every layer: a sliding layer keeps at most its window."""
    kv = model_sizes(spec).widths.kv
    return sum(2 * kv * dtype_bytes * (positions if w is None else min(positions, w)) for w in spec.windows())


def io_bound(est) -> str:
    return f"{est.io_bound_throughput:.4g}" if est.io_bound_throughput != float("inf") else "no I/O"


def add_arguments(parser):
    parser.add_argument("--out-dir", default="results", help="where planner_families.md and .json go")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated built-in names")


def run(args) -> int:
    records, rows = [], []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        spec = ModelSpec.from_name(name)
        params = model_sizes(spec).weight_values()
        for hw_name in HARDWARE:
            hw = load_profile(hw_name)
            for prompt, gen in WORKLOADS:
                if prompt + gen > spec.max_seq_len:
                    continue
                memory, flags = budget(hw)
                plan = plan_policy(spec, prompt, gen, memory, hw)
                est = plan.estimate
                command = (f"flexgen-eval plan --model {name} --hardware {hw_name} --prompt-len {prompt} "
                           f"--gen-len {gen}{flags}")
                kv = cache_per_sequence(spec, prompt + gen)
                records.append({"model": name, "family": spec.family, "parameters": params, "hardware": hw_name,
                                "prompt_len": prompt, "gen_len": gen, "kv_cache_per_sequence_bytes": kv,
                                "command": command, "plan": plan.to_dict()})
                peak = " / ".join(format_size(est.peak_memory[t]) for t in ("gpu", "cpu", "disk"))
                rows.append(f"| {name} | {spec.family} | {params / 1e9:.1f} B | {hw_name} | {prompt}+{gen} | "
                            f"{format_size(kv)} | {short(plan.policy)} | {est.throughput:.4g} | "
                            f"{io_bound(est)} | {peak} |")
                print(f"{name} {hw_name} {prompt}+{gen}: {est.throughput:.4g} token/s", file=sys.stderr)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    stamp = time.strftime("%Y-%m-%d")
    os.makedirs(args.out_dir, exist_ok=True)
    command = "flexgen-eval planner-families" + (f" --models {args.models}" if args.models != ",".join(MODELS) else "")
    with open(os.path.join(args.out_dir, "planner_families.json"), "w") as f:
        json.dump({"command": command, "date": stamp, "commit": commit, "machine": platform.node(), "rows": records,
                   "hardware_profiles": {h: load_profile(h).to_dict() for h in HARDWARE}}, f, indent=2)
        f.write("\n")
    budgets = "; ".join(f"{h}: " + ", ".join(f"{t} {v if isinstance(v, str) else format_size(v)}"
                                             for t, v in budget(load_profile(h))[0].items()) for h in HARDWARE)
    with open(os.path.join(args.out_dir, "planner_families.md"), "w") as f:
        f.write(TEMPLATE.format(command=command, date=stamp, commit=commit or "uncommitted", machine=platform.node(),
                                budgets=budgets,
                                rows="\n".join(rows)))
    print(f"wrote {args.out_dir}/planner_families.md and planner_families.json", file=sys.stderr)
    return 0


TEMPLATE = """# The planner on each built-in family size (t4 and a100-80g presets)

Command: `{command}` (writes this file and `planner_families.json`); {date}, on top of commit {commit},
computed on {machine} (a CPU VM; the numbers depend only on the presets).
Each row is `flexgen-eval plan --model M --hardware H --prompt-len P --gen-len G [...]` (each row's exact
command is in the JSON): pure cost-model arithmetic from the preset's hardware constants, nothing run on a GPU. fp16
weights and cache, no compression; each preset's own memory, and for a preset that names only its GPU
the t4 machine's CPU and disk (`--cpu-mem 200GiB --disk 1.5TB`): {budgets}; 10% of each tier kept free.
Parameters are counted from each family's own layers (the same weight lists the runtime loads).
"KV / sequence" is one sequence's keys and values over all layers at prompt + gen positions: sliding
layers (Gemma 2 every other layer at 4096, Gemma 3 five of six at 1024, Phi-3 all at 2047) keep only
their window, which the planner counts per layer. Placement columns are % gpu/cpu/disk.

| model | family | parameters | hardware | prompt+gen | KV / sequence | block | weights | cache | activations | flags | predicted token/s | I/O bound token/s | peak gpu / cpu / disk |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
{rows}
"""
