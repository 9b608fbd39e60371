"""Where a decode step's time goes: per-step time of several policies beside HF generate, and a
torch.profiler table of one short run per policy. Made for a GPU session (the first H200 run showed
~4 ms of overhead per layer per decode step); it runs on the CPU too.

    python scripts/profile_decode.py [--model opt-1.3b] [--device cuda] [--batch 4] [--prompt-len 512]
        [--steps 8] [--out DIR] [--variants NAME,...] [--cap-gib 16] [--no-hf] [--trace NAME]

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
    """name -> (policy, batch or None for --batch)"""
    from flexgen_core import Policy

    return {
        "resident": (Policy(), None),
        "resident-no-overlap": (Policy(overlap=False), None),
        "cache94-cpu-attention": (Policy(cache=(94, 6, 0), cpu_attention=True), None),
        "cache94": (Policy(cache=(94, 6, 0)), None),
        "weights50": (Policy(weights=(50, 50, 0)), None),
        "cpu-cache-b32": (Policy(cache=(0, 100, 0), cpu_attention=True), 32),  # FlexGen's usual large-batch shape
        # half the CPU cache attended on the CPU while the link brings the other half
        "cpu-cache-half-b32": (Policy(cache=(0, 100, 0), cpu_attention=0.5), 32),
        "cpu-cache-link-b32": (Policy(cache=(0, 100, 0)), 32),
        # the OPT-30B plans of the 2026-11-26 H200 bench (16 GiB cap): the link alone, and a quarter of
        # the cache attended on the CPU
        "opt30b-link-4x16": (Policy(weights=(20.92, 79.08, 0), cache=(0, 100, 0), activations=(0, 100, 0),
                                    num_gpu_batches=16), 4),
        "opt30b-share25-8x8": (Policy(weights=(20.19, 79.81, 0), cache=(0, 100, 0), activations=(0, 100, 0),
                                      num_gpu_batches=8, cpu_attention=0.25), 8),
    }


def write_trace(prof, path: str):
    import gzip
    import tempfile

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
        prof.export_chrome_trace(tmp.name)
        with open(tmp.name, "rb") as src, gzip.open(path, "wb") as dst:
            dst.write(src.read())


def allocator_counts(cuda: bool) -> dict:
    """Caching-allocator events so far: retries and cudaMalloc/cudaFree calls mean it ran at its
    limit (each retry frees the cache and synchronizes the device)."""
    if not cuda:
        return {}
    import torch

    stats = torch.cuda.memory_stats()
    return {k: stats.get(k, 0) for k in ("num_alloc_retries", "num_device_alloc", "num_device_free", "num_ooms")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="opt-1.3b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--variants", default="", help="comma-separated names (default: all)")
    ap.add_argument("--cap-gib", type=float, default=0,
                    help="cap the GPU to this many GiB (set_per_process_memory_fraction), as the benchmark does")
    ap.add_argument("--no-hf", action="store_true", help="skip HF generate")
    ap.add_argument("--trace", default="", help="variant whose profile is also written as a gzipped Chrome trace "
                                                "(DIR/trace_VARIANT.json.gz: streams, copies and the host threads)")
    args = ap.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from flexgen_core import LLM, SamplingParams

    cuda = args.device.startswith("cuda")
    if cuda and args.cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 2**30 / total), 0)
    chosen = variants()
    if args.variants:
        unknown = [n for n in args.variants.split(",") if n not in chosen]
        if unknown:
            ap.error(f"unknown variants {unknown}; known: {list(chosen)}")
        chosen = {n: chosen[n] for n in args.variants.split(",")}
    dtype = "float16" if cuda else "float32"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def prompts_for(batch):
        ids = torch.randint(10, 50000, (batch, args.prompt_len), generator=torch.Generator().manual_seed(0))
        return ids.tolist()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    report, tables = {"args": vars(args), "torch": torch.__version__,
                      "device_name": torch.cuda.get_device_name(0) if cuda else "cpu", "step_ms": {},
                      "allocator": {}, "load_s": {}}, []

    def timed(run, n) -> float:
        sync()
        t = time.perf_counter()
        run(n)
        sync()
        return time.perf_counter() - t

    def save():  # after every variant: a run stopped by its time limit keeps what finished
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "profile_decode.json"), "w") as f:
            json.dump(report, f, indent=1)
        with open(os.path.join(args.out, "profile_decode.txt"), "w") as f:
            f.write("\n\n".join(tables))

    def step_ms(run) -> float:
        run(1)  # warm-up
        one = min(timed(run, 1) for _ in range(2))
        many = min(timed(run, args.steps + 1) for _ in range(2))
        return (many - one) / args.steps * 1000

    for name, (policy, batch) in chosen.items():
        batch = batch or args.batch
        policy, prompts = policy.with_(gpu_batch_size=batch), prompts_for(batch * policy.num_gpu_batches)
        t0 = time.perf_counter()
        with LLM.from_pretrained(args.model, policy=policy, device=args.device, dtype=dtype,
                                 dummy_weights=True) as llm:
            report["load_s"][name] = round(time.perf_counter() - t0, 2)

            def run(n):
                llm.generate(prompts, SamplingParams(max_new_tokens=n, ignore_eos=True))
            before = allocator_counts(cuda)
            report["step_ms"][name] = ms = step_ms(run)
            report["allocator"][name] = {k: v - before[k] for k, v in allocator_counts(cuda).items()}
            print(f"{name:40s} {ms:8.2f} ms per decode step ({ms / llm.spec.num_layers:.3f} ms per layer), "
                  f"batch {batch}x{policy.num_gpu_batches}, load {report['load_s'][name]} s, allocator {report['allocator'][name]}", flush=True)
            with profile(activities=activities) as prof:
                run(args.steps + 1)  # mostly decode steps
                sync()
            if name == args.trace:
                write_trace(prof, os.path.join(args.out, f"trace_{name}.json.gz"))
            key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
            tables.append(f"== {name}: sorted by {key}\n" + prof.key_averages().table(sort_by=key, row_limit=20))
            if cuda:
                tables.append(f"== {name}: sorted by self_cpu_time_total\n"
                              + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        del llm, run, prof
        if cuda:  # the next variant may need all of a capped GPU
            from flexgen_eval.bench.runner import release_cached_memory
            release_cached_memory()
        save()

    if not args.no_hf:
        from flexgen_eval.bench import hf_models

        spec, _ = hf_models.resolve_model(args.model, True)
        model = hf_models.dummy_model_in_memory(spec, getattr(torch, dtype)).to(args.device)
        ids = torch.tensor(prompts_for(args.batch), device=args.device)

        def hf_run(n):
            with torch.no_grad():
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=1)
        report["step_ms"]["HF generate"] = ms = step_ms(hf_run)
        print(f"{'HF generate':40s} {ms:8.2f} ms per decode step, batch {args.batch}", flush=True)
        save()


if __name__ == "__main__":
    main()
