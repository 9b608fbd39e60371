"""`flexgen-eval bench`: generation throughput of ours vs the baselines under one memory budget."""
from __future__ import annotations

import argparse
import shlex
import sys

from flexgen_eval.commands import share_arg, size_arg


def register(subparsers):
    p = subparsers.add_parser(
        "bench", help="throughput of ours vs accelerate / HF generate / FlexGen 0.1.8 under one memory budget",
        description="Run the same random prompts (exact length) through each system under the same memory "
                    "budget, each at the largest batch it can hold (the planner for ours; an out-of-memory / "
                    "budget search for the baselines), and write throughput, prefill and decode time, batch, "
                    "policy, peak memory per tier and the cost model's prediction and I/O bound as JSON, with "
                    "a throughput-vs-latency plot (PNG) next to it.")
    p.add_argument("--model", required=True, help="built-in name (opt-1.3b, opt-30b, ...), embedded model "
                                                  "(smollm2-135m) or checkpoint directory")
    p.add_argument("--dummy-weights", action="store_true", help="random weights of a built-in size (offline)")
    p.add_argument("--prompt-len", type=_positive, default=512)
    p.add_argument("--gen-len", type=_positive, default=32)
    p.add_argument("--cut-gen-len", type=_positive, default=None,
                   help="run only this many decode steps and project the rest (as FlexGen's --cut-gen-len), "
                        "the same way for every system")
    for tier, flag in (("gpu", "--gpu-mem"), ("cpu", "--cpu-mem"), ("disk", "--disk")):
        p.add_argument(flag, dest=f"{tier}_mem", type=size_arg, default=None,
                       help=f"{tier} budget, e.g. 16GiB, 1.5GB (on a CPU-only machine gpu + cpu are both RAM)")
    p.add_argument("--systems", default="flexgen,accelerate,hf",
                   help="comma-separated: flexgen (ours), flexgen-c (ours with 4-bit weights and KV cache, the "
                        "paper's FlexGen (c); lossy), accelerate, hf, flexgen-0.1.8")
    p.add_argument("--policy", default="auto",
                   help="'auto' (planner) or FlexGen's six --percent numbers w_gpu,w_cpu,c_gpu,c_cpu,a_gpu,a_cpu")
    p.add_argument("--gpu-batch-size", type=_positive, default=None, help="with an explicit --policy")
    p.add_argument("--num-gpu-batches", type=_positive, default=None, help="with an explicit --policy")
    p.add_argument("--cpu-attention", type=share_arg, default=None, metavar="on|off|SHARE",
                   help="share (0-1) of the off-device cache attended on the CPU; with --policy auto it fixes "
                        "the planner's choice, with an explicit policy it defaults to 0")
    p.add_argument("--max-batch", type=_positive, default=64,
                   help="largest batch (sequences per block) any system may use (default 64)")
    p.add_argument("--hf-batch", type=_positive, default=None, help="HF generate's batch (default: ours)")
    p.add_argument("--repeat", type=_positive, default=3, help="timed runs per system; the median is reported")
    p.add_argument("--out", default=None, help="result JSON (default results/bench/MODEL.json); PNG beside it")
    p.add_argument("--offload-dir", default=None, help="directory for disk-tier files (default: a temp dir)")
    p.add_argument("--hardware", default="measured",
                   help="'measured' (profile this machine first), a preset, or a profile JSON: feeds the planner "
                        "and the predicted throughput / I/O bound")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--dtype", default=None, help="float32 / float16 / bfloat16 (default: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--warm-baseline-reads", action="store_true",
                   help="let the baselines read offloaded weights through the page cache (default: dropped)")
    p.add_argument("--no-alternate", action="store_true", help="run systems one after the other, not in turns")
    p.add_argument("--cap-gpu", action="store_true",
                   help="torch.cuda.set_per_process_memory_fraction(gpu-mem / GPU total) before loading")
    p.add_argument("--flexgen018-args", default=None, help="flex_opt policy flags for flexgen-0.1.8 "
                                                          "(default: its suite's for opt-6.7b / opt-30b)")
    p.add_argument("--hf-cache-dir", default=None, help="where dummy HF checkpoints are saved once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--dry-run", action="store_true",
                   help="resolve budgets, plans and batches and print them; load and run nothing")
    p.set_defaults(func=run)


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def config_from_args(args):
    from flexgen_eval.bench import BenchConfig

    name = args.model.rstrip("/").split("/")[-1].lower()
    return BenchConfig(
        model=args.model, dummy_weights=args.dummy_weights, prompt_len=args.prompt_len, gen_len=args.gen_len,
        cut_gen_len=args.cut_gen_len, gpu_mem=args.gpu_mem, cpu_mem=args.cpu_mem, disk=args.disk_mem,
        systems=tuple(s.strip() for s in args.systems.split(",") if s.strip()), policy=args.policy,
        gpu_batch_size=args.gpu_batch_size, num_gpu_batches=args.num_gpu_batches,
        cpu_attention=args.cpu_attention, max_batch=args.max_batch,
        hf_batch=args.hf_batch, repeat=args.repeat, out=args.out or f"results/bench/{name}.json",
        offload_dir=args.offload_dir, hardware=args.hardware, device=args.device, dtype=args.dtype,
        cold_baseline_reads=not args.warm_baseline_reads, alternate=False if args.no_alternate else None,
        cap_gpu=args.cap_gpu, flexgen018_args=args.flexgen018_args, hf_cache_dir=args.hf_cache_dir,
        seed=args.seed, plot=not args.no_plot, dry_run=args.dry_run, command=_command_line(args))


def _command_line(args) -> str:
    """The command as typed: `python -m flexgen_eval.bench ...`, `flexgen-eval bench ...`, or rebuilt."""
    if getattr(args, "command_line", None):
        return args.command_line
    if len(sys.argv) > 2 and sys.argv[1] == "bench":
        return "flexgen-eval bench " + shlex.join(sys.argv[2:])
    return ""


def run(args) -> int:
    from flexgen_eval.bench import main_run, save, table
    from flexgen_eval.bench.systems import OURS

    cfg = config_from_args(args)
    if not cfg.command:
        cfg.command = _reconstruct(args)
    result = main_run(cfg)
    print(table(result))
    for r in result["systems"]:
        if r.get("system") in OURS and r.get("throughput_tokens_per_s"):
            io = r.get("percent_of_io_bound")
            print(f"{r['system']}: {r['throughput_tokens_per_s']:.3g} token/s = {r['percent_of_predicted']:.0f}% of predicted "
                  f"{r['predicted_throughput_tokens_per_s']:.3g}"
                  + (f", {io:.0f}% of the I/O bound {r['io_bound_throughput_tokens_per_s']:.3g}" if io else ""))
    for k, v in result["ratios"].items():
        print(f"{k}: {v:.2f}x")
    if cfg.dry_run:
        print("dry run: nothing was loaded or timed")
        return 0
    for path in save(result, cfg.out, plot=cfg.plot):
        print(f"wrote {path}")
    return 0


def _reconstruct(args) -> str:
    skip = {"func", "command"}
    parts = ["flexgen-eval bench"]
    for k, v in vars(args).items():
        if k in skip or v is None or v is False:
            continue
        flag = "--" + ("disk" if k == "disk_mem" else k.replace("_", "-"))
        parts.append(flag if v is True else f"{flag} {shlex.quote(str(v))}")
    return " ".join(parts)
