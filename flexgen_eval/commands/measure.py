"""Measurements that write results/: one sub-command per module of flexgen_eval/bench, each module
giving `add_arguments(parser)` and `run(args)`, and its docstring's first paragraph as the description."""
from __future__ import annotations

import importlib

MEASUREMENTS = {  # sub-command -> (module of flexgen_eval.bench, one-line help)
    "compare-helm": ("helm_compare", "HELM run entries on our client and on HELM's HF client: predictions "
                                     "compared, wall times as ratios"),
    "compare-lm-eval": ("lm_eval_compare", "lm-eval tasks on --model flexgen and --model hf: metrics and "
                                           "per-sample log-likelihoods compared, wall times as ratios"),
    "compression-accuracy": ("compression_accuracy", "LAMBADA and WikiText-2 accuracy of each weight / KV-cache "
                                                     "compression scheme on the real model"),
    "check-planner": ("planner_check", "the cost model and the planner against measured runs on this machine"),
    "planner-table": ("planner_table", "the planner against the FlexGen paper's hand-tuned T4 policies "
                                       "(cost-model arithmetic)"),
    "planner-families": ("planner_families", "the plan for each built-in size of the newer families on the t4 "
                                             "and a100-80g presets (cost-model arithmetic)"),
}


def register(subparsers):
    for name, (module, summary) in MEASUREMENTS.items():
        bench = importlib.import_module(f"flexgen_eval.bench.{module}")
        p = subparsers.add_parser(name, help=summary, description=bench.__doc__.split("\n\n")[0].split(": ", 1)[1])
        bench.add_arguments(p)
        p.set_defaults(func=bench.run)
