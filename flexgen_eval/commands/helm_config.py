"""`flexgen-eval helm-config`: write prod_env YAML so `helm-run` runs a model on the flexgen client."""
from __future__ import annotations

import os

CHAT = {"auto": None, "on": True, "off": False}
POLICY_FIELDS = ("weights", "cache", "activations", "gpu_batch_size", "num_gpu_batches", "cpu_attention",
                 "compress_weight", "compress_cache")


def register(subparsers):
    p = subparsers.add_parser(
        "helm-config", help="write HELM prod_env files for a model on the flexgen runtime",
        description="Write model_metadata.yaml, tokenizer_configs.yaml and model_deployments.yaml so that "
                    "`helm-run --run-entries 'mmlu:subject=abstract_algebra,model=NAME' --suite S` runs on the "
                    "flexgen runtime. Entries are merged into existing files by name.")
    p.add_argument("--model", required=True, help="local HF checkpoint dir, embedded model name, or hub id")
    p.add_argument("--name", required=True, help="HELM model name, 'org/model' (a bare name gets 'flexgen/')")
    p.add_argument("--out", default="prod_env", help="prod_env directory (default: %(default)s)")
    mem = p.add_argument_group("placement (a memory budget for the planner, or an explicit policy)")
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
    mem.add_argument("--hardware", help="planner hardware profile (preset or JSON; default: cpu without CUDA, else t4)")
    mem.add_argument("--plan-prompt-len", type=int, default=512, help="prompt length the planner sizes for")
    mem.add_argument("--plan-gen-len", type=int, default=32, help="generation length the planner sizes for")
    p.add_argument("--dtype", help="float32, float16 or bfloat16 (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--offload-dir", help="directory for the disk tier")
    p.add_argument("--chat-template", choices=sorted(CHAT), default="auto",
                   help="wrap prompts in the tokenizer's chat template; auto = when it has one, like HELM's "
                        "HuggingFace client (default: %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    from flexgen_core.llm import resolve_checkpoint
    from flexgen_core.sizes import parse_size
    from flexgen_core.spec import ModelSpec
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
    policy, percent, note = _policy(args, spec, memory, max_len)
    if percent is not None:
        client_args["percent"] = percent
    if policy:
        client_args["policy"] = policy
    if memory:
        client_args["memory"] = memory
    for key in ("dtype", "device", "offload_dir"):
        if getattr(args, key):
            client_args[key] = getattr(args, key)
    if CHAT[args.chat_template] is not None:
        client_args["apply_chat_template"] = CHAT[args.chat_template]

    new = deployment.entries(name, checkpoint, client_args, max_len, tokenizer, spec_num_parameters(spec))
    for path in deployment.write(args.out, new):
        print(f"wrote {path}")
    if note:
        print(note)
    print(f"run: helm-run --local-path {args.out} --run-entries 'mmlu:subject=abstract_algebra,model={name}' "
          f"--suite flexgen --max-eval-instances 10 --runner-class-name flexgen_eval.helm.runner.BatchingRunner")
    return 0


def _policy(args, spec, memory, max_len):
    """(policy fields, percent, note): explicit flags win; with only a budget, ask the planner."""
    shape = {k: getattr(args, k) for k in ("gpu_batch_size", "num_gpu_batches") if getattr(args, k)}
    shape.update({k: True for k in ("cpu_attention", "compress_weight", "compress_cache") if getattr(args, k)})
    if args.percent is not None:
        return shape, list(args.percent), None
    if not memory:
        return shape, None, None
    try:
        from flexgen_core.planner import plan_policy
    except ImportError:
        return shape, None, "no planner available: the default policy will be checked against the budget"
    import torch

    on_gpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    gen_len = min(args.plan_gen_len, max_len // 2)
    prompt_len = min(args.plan_prompt_len, max_len - gen_len)
    plan = plan_policy(spec, prompt_len, gen_len, memory,
                       hardware=args.hardware or ("t4" if on_gpu else "cpu"),
                       compress_weight=args.compress_weight, compress_cache=args.compress_cache,
                       cpu_attention=True if args.cpu_attention else None)
    chosen = {k: getattr(plan.policy, k) for k in POLICY_FIELDS}
    chosen = {k: list(v) if isinstance(v, tuple) else v for k, v in chosen.items()}
    chosen.update(shape)  # an explicit block shape overrides the planner's
    return chosen, None, f"planner: {plan.policy.describe()} (bound by {plan.binding})"


def _tokenizer(checkpoint: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(checkpoint)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{checkpoint} has no usable tokenizer, which HELM needs ({e})") from None


def spec_num_parameters(spec) -> int | None:
    return getattr(spec, "num_parameters", None)
