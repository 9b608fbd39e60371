"""`flexgen-eval plan`: the fastest policy for a model, a workload and a memory budget."""
from __future__ import annotations

import json
import os

from flexgen_core.model.spec import ModelSpec
from flexgen_core.planning.hardware import load_profile
from flexgen_core.planning.planner import plan_policy
from flexgen_core.planning.policy import CACHE_KEYS
from flexgen_eval.commands import share_arg, size_arg


def register(subparsers):
    p = subparsers.add_parser(
        "plan", help="choose a placement policy with the cost model and OR-Tools",
        description="Choose weights/cache/activation placement and block shape for the most generated "
                    "tokens per second within a memory budget. Works offline for built-in sizes.")
    p.add_argument("--model", required=True,
                   help="built-in name (opt-30b, facebook/opt-175b, llama-2-7b-hf, ...) "
                        "or a directory with config.json")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--gen-len", type=int, default=32)
    for tier, flag in (("gpu", "--gpu-mem"), ("cpu", "--cpu-mem"), ("disk", "--disk")):
        p.add_argument(flag, dest=f"{tier}_mem", type=size_arg, default=None,
                       help=f"{tier} budget, e.g. 16GiB, 200GB, 1.5TB (default: the hardware profile's)")
    p.add_argument("--hardware", default="t4", help="preset (t4, a100-40g, a100-80g, h100, rtx4090, cpu) "
                                                    "or a JSON file from `flexgen-eval profile`")
    p.add_argument("--compress-weight", action="store_true", help="4-bit group-wise weights")
    p.add_argument("--compress-cache", action="store_true", help="4-bit group-wise KV cache")
    p.add_argument("--cache-keys", choices=CACHE_KEYS,
                   help="compressed keys grouped per channel (default; KIVI: the newest group of keys held in "
                        "full precision, which the plan counts) or per token (the paper's)")
    p.add_argument("--cpu-attention", type=_attention_share, default=None, metavar="auto|on|off|SHARE",
                   help="attend the off-device cache on the CPU: on, off, or the share of its rows (0-1) "
                        "attended there while the link brings the rest (auto, the default: the planner decides)")
    p.add_argument("--margin", type=float, default=0.1, help="fraction of each budget kept free (default 0.1)")
    p.add_argument("--max-block-size", type=int, default=None, help="at most this many sequences per block")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def load_spec(name_or_dir: str) -> ModelSpec:
    return ModelSpec.from_dir(name_or_dir) if os.path.isdir(name_or_dir) else ModelSpec.from_name(name_or_dir)


def _attention_share(text: str) -> float | None:
    return None if text == "auto" else share_arg(text)


def run(args) -> int:
    hw = load_profile(args.hardware)
    memory = {}
    for tier in ("gpu", "cpu", "disk"):
        given = getattr(args, f"{tier}_mem")
        if given is None and tier not in hw.memory:
            if tier == "disk":
                continue  # no disk tier
            raise ValueError(f"give --{tier}-mem: hardware profile {hw.name!r} has no default {tier} memory")
        memory[tier] = given if given is not None else hw.memory[tier]
    plan = plan_policy(
        load_spec(args.model), args.prompt_len, args.gen_len, memory, hw,
        compress_weight=args.compress_weight, compress_cache=args.compress_cache,
        compression={"cache_keys": args.cache_keys} if args.cache_keys else None, cpu_attention=args.cpu_attention,
        margin=args.margin, max_block_size=args.max_block_size)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.describe())
    return 0
