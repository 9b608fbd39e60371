"""`flexgen-eval helm-config`: write prod_env YAML so `helm-run` runs a model on the flexgen client."""
from __future__ import annotations

import os

from flexgen_core.memory.compression import RANGES
from flexgen_core.planning.policy import CACHE_KEYS, Policy
from flexgen_core.runtime.llm import COMPRESSION_FIELDS

CHAT = {"auto": None, "on": True, "off": False}


def register(subparsers):
    p = subparsers.add_parser(
        "helm-config", help="write HELM prod_env files for a model on the flexgen runtime",
        description="Write model_metadata.yaml, tokenizer_configs.yaml and model_deployments.yaml so that "
                    "`helm-run --run-entries 'mmlu:subject=abstract_algebra,model=NAME' --suite S` runs on the "
                    "flexgen runtime. Entries are merged into existing files by name.")
    p.add_argument("--model", required=True, help="local HF checkpoint dir, embedded model name, or hub id")
    p.add_argument("--name", required=True, help="HELM model name, 'org/model' (a bare name gets 'flexgen/')")
    p.add_argument("--out", default="prod_env", help="prod_env directory (default: %(default)s)")
    mem = p.add_argument_group(
        "placement", "By default the runtime plans when helm-run loads the model: within the budgets named here "
        "and, for every tier not named, what the machine has then; each bucket of request lengths is planned "
        "again as requests arrive. --percent or a block shape fixes the policy instead.")
    mem.add_argument("--gpu-mem", help="compute-device memory budget, e.g. 16GiB")
    mem.add_argument("--cpu-mem", help="CPU memory budget, e.g. 200GB")
    mem.add_argument("--disk-mem", help="disk budget, e.g. 1.5TB")
    mem.add_argument("--percent", nargs=6, type=float, metavar="P",
                     help="FlexGen's w_gpu w_cpu c_gpu c_cpu a_gpu a_cpu (disk takes the rest)")
    mem.add_argument("--gpu-batch-size", type=int)
    mem.add_argument("--num-gpu-batches", type=int)
    mem.add_argument("--cpu-attention", action="store_true")
    mem.add_argument("--compress-weight", action="store_true")
    mem.add_argument("--compress-cache", action="store_true")
    mem.add_argument("--compression-bits", type=int, choices=(4, 8), help="bits per value (default 4)")
    mem.add_argument("--compression-group-size", type=int,
                     help="values per group (default 64; for keys per channel, tokens per group)")
    mem.add_argument("--weight-ranges", choices=RANGES, help="a weight group's range: minmax (default) or mse")
    mem.add_argument("--cache-keys", choices=CACHE_KEYS,
                     help="compressed keys grouped per channel (default; KIVI) or per token (the paper's)")
    mem.add_argument("--hardware", help="planner hardware profile, a preset or a JSON file from `flexgen-eval "
                                        "profile` (default: this machine measured on a CPU, the closest preset on a GPU)")
    mem.add_argument("--plan-prompt-len", type=int, default=512,
                     help="prompt length the weights are placed for at load (default: %(default)s)")
    mem.add_argument("--plan-gen-len", type=int, default=32,
                     help="generation length the weights are placed for at load (default: %(default)s)")
    p.add_argument("--prefetch-chunk", type=int,
                   help="with the batching runner, requests handed to the runtime per call (default: a whole run "
                        "spec; results are cached per block either way)")
    scale = p.add_argument_group("scale-out", "Ray workers, each loading its own copy of the model within the "
                                 "budgets above (one GPU each where the cluster has them); the batching runner "
                                 "shares each run spec's requests among them.")
    scale.add_argument("--data-parallel", type=int, metavar="N", help="number of workers (default: 1, no Ray)")
    scale.add_argument("--ray-address", help="join this Ray cluster ('auto' or HOST:PORT) instead of starting a "
                                             "local one")
    p.add_argument("--dtype", help="float32, float16 or bfloat16 (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--offload-dir", help="directory for the disk tier")
    p.add_argument("--chat-template", choices=sorted(CHAT), default="auto",
                   help="wrap prompts in the tokenizer's chat template; auto = when it has one, like HELM's "
                        "HuggingFace client (default: %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    from flexgen_core.model.spec import ModelSpec
    from flexgen_core.runtime.llm import resolve_checkpoint
    from flexgen_core.units import parse_size
    from flexgen_eval.helm import deployment

    name = deployment.helm_name(args.name)
    memory = {t: v for t, v in (("gpu", args.gpu_mem), ("cpu", args.cpu_mem), ("disk", args.disk_mem)) if v}
    for tier, value in memory.items():
        parse_size(value)  # a bad size fails here, not at the first request
    checkpoint = os.path.abspath(resolve_checkpoint(args.model))
    spec = ModelSpec.from_dir(checkpoint)
    tokenizer = _tokenizer(checkpoint)
    max_len = spec.max_seq_len
    if 0 < (tokenizer.model_max_length or 0) < 1_000_000:
        max_len = min(max_len, tokenizer.model_max_length)

    client_args = {"model": checkpoint}
    policy, percent = _policy(args)
    if percent is not None:
        client_args["percent"] = percent
    if policy:
        client_args["policy"] = policy
    if memory:
        client_args["memory"] = memory
    planned = policy is None and percent is None
    if planned:
        client_args.update({k: True for k in ("compress_weight", "compress_cache") if getattr(args, k)})
        if _compression(args):
            client_args["compression"] = _compression(args)
        if args.hardware:
            client_args["hardware"] = args.hardware
        if (args.plan_prompt_len, args.plan_gen_len) != (512, 32):
            client_args["workload"] = [args.plan_prompt_len, args.plan_gen_len]
    if args.data_parallel is not None and args.data_parallel < 1:
        raise ValueError(f"--data-parallel must be at least 1, got {args.data_parallel}")
    for key in ("dtype", "device", "offload_dir", "prefetch_chunk", "data_parallel", "ray_address"):
        if getattr(args, key):
            client_args[key] = getattr(args, key)
    if CHAT[args.chat_template] is not None:
        client_args["apply_chat_template"] = CHAT[args.chat_template]
    note = None
    if planned:
        named = ", ".join(f"{t} {v}" for t, v in memory.items())
        note = ("placement: planned when helm-run loads the model, within "
                + (f"{named} and, for every tier not named, " if named else "") + "what the machine has then")
    new = deployment.entries(name, checkpoint, client_args, max_len, tokenizer, spec_num_parameters(spec))
    for path in deployment.write(args.out, new):
        print(f"wrote {path}")
    if note:
        print(note)
    print(f"run: helm-run --local-path {args.out} --run-entries 'mmlu:subject=abstract_algebra,model={name}' "
          f"--suite flexgen --max-eval-instances 10 --runner-class-name flexgen_eval.helm.runner.BatchingRunner")
    return 0


def _policy(args):
    """(policy fields, percent) when the flags fix a policy; (None, None) to plan at load."""
    shape = {k: getattr(args, k) for k in ("gpu_batch_size", "num_gpu_batches") if getattr(args, k)}
    if args.cpu_attention:
        shape["cpu_attention"] = True
    if args.percent is None and not shape:
        return None, None
    shape.update({k: True for k in ("compress_weight", "compress_cache") if getattr(args, k)})
    shape.update(_compression(args))
    return shape, (list(args.percent) if args.percent is not None else None)


def _compression(args) -> dict:
    """The compression fields the flags name (Policy's names), checked now rather than at load."""
    fields = {k: getattr(args, k) for k in COMPRESSION_FIELDS if getattr(args, k) is not None}
    Policy(**fields)
    return fields


def _tokenizer(checkpoint: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(checkpoint)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{checkpoint} has no usable tokenizer, which HELM needs ({e})") from None


def spec_num_parameters(spec) -> int | None:
    return getattr(spec, "num_parameters", None)
