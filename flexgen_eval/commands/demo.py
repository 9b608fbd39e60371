"""`flexgen-eval demo`: greedy generation on the default model with the reference HF backend.

Interim: the flexgen runtime demo replaces this once the runtime exists. It already shows the
default model arriving from the cache (or PyPI on first use) and the numbers to compare against.
"""
from __future__ import annotations

import time

from flexgen_core import model_store

PROMPTS = ["The capital of France is", "Water boils at a temperature of", "def fibonacci(n):"]
BANNER = "reference HF backend; the flexgen runtime demo replaces this later"


def register(subparsers):
    p = subparsers.add_parser("demo", help="greedy generation on the default model (reference HF backend)")
    p.add_argument("--model", default=model_store.DEFAULT_MODEL,
                   help="embedded model name or local HF checkpoint dir (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--cache-dir", help="cache root (default: $FLEXGEN_EVAL_CACHE or ~/.cache/flexgen-eval)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"flexgen-eval demo: {BANNER}")
    path = model_store.resolve_model(args.model, cache_dir=args.cache_dir)
    print(f"model: {path}  (cpu, float32, greedy, {args.max_new_tokens} new tokens)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    rows = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        seconds = time.perf_counter() - start
        new = out[0, ids["input_ids"].shape[1]:]
        text = tokenizer.decode(new, skip_special_tokens=True)
        rows.append((prompt, text, len(new), seconds))
    _print_table(rows)
    return 0


def _print_table(rows) -> None:
    header = ("prompt", "continuation", "tokens", "s", "tokens/s")
    cells = [(p, repr(c)[1:-1], str(n), f"{s:.2f}", f"{n / s:.1f}") for p, c, n, s in rows]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *cells]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
