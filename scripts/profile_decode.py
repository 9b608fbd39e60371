"""Where a decode step's time goes: per-step time of several policies beside HF generate, and a
torch.profiler table of one short run per policy. Made for a GPU session (the first H200 run showed
~4 ms of overhead per layer per decode step); it runs on the CPU too.

    python scripts/profile_decode.py [--model opt-1.3b] [--device cuda] [--batch 4] [--prompt-len 512]
        [--steps 8] [--out DIR]

Writes DIR/profile_decode.json (step times) and DIR/profile_decode.txt (profiler tables).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def variants():
    from flexgen_core import Policy

    return {
        "resident": Policy(),
        "resident, no overlap": Policy(overlap=False),
        "cache 94/6, CPU attention": Policy(cache=(94, 6, 0), cpu_attention=True),
        "cache 94/6, no CPU attention": Policy(cache=(94, 6, 0)),
        "weights 50/50/0": Policy(weights=(50, 50, 0)),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="opt-1.3b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from flexgen_core import LLM, SamplingParams

    cuda = args.device.startswith("cuda")
    dtype = "float16" if cuda else "float32"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    prompts = torch.randint(10, 50000, (args.batch, args.prompt_len), generator=torch.Generator().manual_seed(0))
    prompts = prompts.tolist()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    report, tables = {"args": vars(args), "torch": torch.__version__,
                      "device_name": torch.cuda.get_device_name(0) if cuda else "cpu", "step_ms": {}}, []

    def timed(run, n) -> float:
        sync()
        t = time.perf_counter()
        run(n)
        sync()
        return time.perf_counter() - t

    def step_ms(run) -> float:
        run(1)  # warm-up
        one = min(timed(run, 1) for _ in range(2))
        many = min(timed(run, args.steps + 1) for _ in range(2))
        return (many - one) / args.steps * 1000

    for name, policy in variants().items():
        policy = policy.with_(gpu_batch_size=args.batch)
        with LLM.from_pretrained(args.model, policy=policy, device=args.device, dtype=dtype,
                                 dummy_weights=True) as llm:
            def run(n):
                llm.generate(prompts, SamplingParams(max_new_tokens=n, ignore_eos=True))
            report["step_ms"][name] = ms = step_ms(run)
            print(f"{name:32s} {ms:8.2f} ms per decode step ({ms / llm.spec.num_layers:.3f} ms per layer)", flush=True)
            with profile(activities=activities) as prof:
                run(3)
                sync()
            key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
            tables.append(f"== {name}: sorted by {key}\n" + prof.key_averages().table(sort_by=key, row_limit=20))
            if cuda:
                tables.append(f"== {name}: sorted by self_cpu_time_total\n"
                              + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))

    from flexgen_eval.bench import hf_models

    spec, _ = hf_models.resolve_model(args.model, True)
    model = hf_models.dummy_model_in_memory(spec, getattr(torch, dtype)).to(args.device)
    ids = torch.tensor(prompts, device=args.device)

    def hf_run(n):
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=1)
    report["step_ms"]["HF generate"] = ms = step_ms(hf_run)
    print(f"{'HF generate':32s} {ms:8.2f} ms per decode step", flush=True)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "profile_decode.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "profile_decode.txt"), "w") as f:
        f.write("\n\n".join(tables))


if __name__ == "__main__":
    main()
