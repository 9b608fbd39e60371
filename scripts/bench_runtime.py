"""Generation throughput of flexgen_core.LLM vs HF `generate` on the default model (CPU, fp32).

Random prompts of exactly --prompt-len tokens, --gen-len new tokens (EOS ignored),
each system run --repeat times in alternation; tokens/s = batch * gen_len / wall time.
Writes results/runtime_cpu.{md,json}.

    .venv/bin/python scripts/bench_runtime.py --batches 8 32
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone

import torch

from flexgen_core import LLM, Policy, SamplingParams
from flexgen_core.model.store import fetch_model


def hf_run(model, prompts, gen_len):
    ids = torch.tensor(prompts)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=gen_len, min_new_tokens=gen_len,
                             do_sample=False, pad_token_id=0)
    assert out.shape[1] == ids.shape[1] + gen_len
    return time.perf_counter() - start


def ours_run(llm, prompts, gen_len):
    start = time.perf_counter()
    outs = llm.generate(prompts, SamplingParams(max_new_tokens=gen_len, ignore_eos=True, logprobs=False))
    assert all(len(o.outputs[0].token_ids) == gen_len for o in outs)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default="results/runtime_cpu")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    path = fetch_model("smollm2-135m")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = []
    for batch in args.batches:
        gen = torch.Generator().manual_seed(batch)
        prompts = torch.randint(100, 49000, (batch, args.prompt_len), generator=gen).tolist()
        systems = {"hf generate": lambda: hf_run(hf, prompts, args.gen_len)}
        variants = {
            "flexgen resident": Policy(gpu_batch_size=batch, num_gpu_batches=1),
            "flexgen 50% weights on disk": Policy(weights=(50, 0, 50), gpu_batch_size=batch, num_gpu_batches=1),
        }
        if batch >= 16:
            variants[f"flexgen 50% weights on disk, block 8x{batch // 8}"] = Policy(
                weights=(50, 0, 50), gpu_batch_size=8, num_gpu_batches=batch // 8)
        offload = tempfile.TemporaryDirectory(prefix="bench-offload-")  # the disk weights, removed below
        llms = {name: LLM.from_pretrained(path, policy=p, offload_dir=offload.name) for name, p in variants.items()}
        for name, llm in llms.items():
            systems[name] = (lambda llm=llm: ours_run(llm, prompts, args.gen_len))
        times = {name: [] for name in systems}
        for _ in range(args.repeat):
            for name, run in systems.items():
                times[name].append(run())
        for name, llm in llms.items():
            stats = llm.memory_stats()
            times[name + "::disk_read"] = stats["read"]["disk"]
            llm.close()
        offload.cleanup()
        hf_tps = batch * args.gen_len / statistics.median(times["hf generate"])
        for name in systems:
            seconds = statistics.median(times[name])
            tps = batch * args.gen_len / seconds
            rows.append({"batch": batch, "system": name, "seconds": seconds, "tokens_per_s": tps,
                         "vs_hf": tps / hf_tps, "runs": times[name],
                         "disk_bytes_read": times.get(name + "::disk_read", 0)})
            print(f"batch {batch:3d}  {name:34s} {tps:8.1f} tok/s  ({tps / hf_tps:.2f}x hf)", flush=True)

    meta = {"command": "python scripts/bench_runtime.py " + " ".join(f"--batches {' '.join(map(str, args.batches))}".split()),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.python_version()}",
            "load_average_at_end": os.getloadavg(),
            "prompt_len": args.prompt_len, "gen_len": args.gen_len, "repeat": args.repeat, "model": "SmolLM2-135M-Instruct fp32"}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(f"# Runtime throughput on CPU: flexgen_core.LLM vs HF generate\n\n"
                f"Model {meta['model']}, prompt {args.prompt_len}, {args.gen_len} new tokens, EOS ignored, "
                f"median of {args.repeat} alternating runs.\n\nCommand: `{meta['command']}`  \n"
                f"Machine: {meta['machine']} (load average at the end {meta['load_average_at_end'][0]:.1f}: "
                f"other jobs shared the cores, so compare ratios, not absolute rates)  \nDate: {meta['date']}\n\n"
                "| batch | system | tokens/s | vs HF generate | disk bytes read |\n|---|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['batch']} | {r['system']} | {r['tokens_per_s']:.1f} | {r['vs_hf']:.2f}x | "
                    f"{r['disk_bytes_read'] / 2**20:.0f} MiB |\n")


if __name__ == "__main__":
    main()
