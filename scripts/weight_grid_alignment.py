"""Does a 4-bit weight scheme's score on SmolLM2-135M measure the scheme, or its alignment with the
checkpoint's own Q4_1 grid (16 levels per 32 consecutive values)? Each layer matrix (and the tied
head) is quantized and dequantized by a scheme with its groups aligned to that grid (offset 0) or
shifted half a Q4_1 block (offset 16: every group straddles two Q4_1 blocks), then scored in fp32 with
HF transformers on the first LAMBADA docs and a seeded sample of WikiText-2 windows.

Schemes: the runtime's codec (group-wise asymmetric min-max, fp16 minimum and step) at group 64 and
32, and a k-quant-like layout at the bytes of group 64 (4.5 bits a weight: groups of 32 with 4-bit
codes whose step and minimum are 6-bit numbers scaled by fp16 maxima per 256 values).

Usage: FLEXGEN_DATA_DIR=../shared/data .venv/bin/python scripts/weight_grid_alignment.py --json OUT.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from flexgen_core.memory.compression import QuantConfig, _least_error_range, _minmax_range, dequantize, quantize  # noqa: E402
from flexgen_core.model.store import fetch_model  # noqa: E402
from flexgen_eval.bench.compression_accuracy import (  # noqa: E402
    data_dir,
    lambada_metrics,
    lambada_pairs,
    machine,
    wiki_metrics,
    wikitext_windows,
)

SCHEMES = ["fp32", "minmax-g64", "minmax-g32", "kquant-like"]


def codec(w: torch.Tensor, group: int) -> torch.Tensor:
    cfg = QuantConfig(4, group)
    return dequantize(quantize(w, cfg), w.shape[-1], cfg, torch.float32)


def kquant_like(w: torch.Tensor) -> torch.Tensor:
    rows, n = w.shape
    x = w.float()
    if n % 256:
        x = torch.cat([x, x[:, -1:].expand(-1, -n % 256)], 1)
    sub = x.reshape(-1, 8, 32)
    lo, step = _minmax_range(sub, sub.amin(-1), sub.amax(-1), 15)
    lo, step = (t.float() for t in _least_error_range(sub, lo, step, 15))  # the codec's "mse" ranges
    step_max = step.amax(-1, keepdim=True).half().float().clamp_min(1e-12)
    step = (step / step_max * 63).round().clamp(1, 63) * step_max / 63
    lo_max = lo.abs().amax(-1, keepdim=True).half().float().clamp_min(1e-12)
    lo = (lo / lo_max * 31).round().clamp(-31, 31) * lo_max / 31
    codes = ((sub - lo[..., None]) / step[..., None]).round().clamp(0, 15)
    return (lo[..., None] + codes * step[..., None]).reshape(rows, -1)[:, :n]


def fake_quantize(model, scheme: str, offset: int):
    fn = {"minmax-g64": lambda w: codec(w, 64), "minmax-g32": lambda w: codec(w, 32), "kquant-like": kquant_like}[scheme]
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):  # every layer matrix and the (tied) LM head
            w = torch.roll(m.weight.data, offset, 1)
            m.weight.data = torch.roll(fn(w), -offset, 1).to(m.weight.dtype)


@torch.no_grad()
def score(model, ctx, cont):
    logits = model(torch.tensor([ctx + cont])).logits[0, len(ctx) - 1:-1].float()
    target = torch.tensor(cont)
    ll = logits.log_softmax(-1)[torch.arange(len(cont)), target].sum().item()
    return ll, bool((logits.argmax(-1) == target).all())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--docs", type=int, default=200)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--json", required=True)
    args = p.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, model_path = data_dir(), fetch_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(model_path)
    tok.model_max_length = 10**9
    docs = lambada_pairs(path, tok, args.docs)
    windows, _ = wikitext_windows(path, tok, 1024)
    order = list(range(len(windows)))
    random.Random(0).shuffle(order)
    order = order[:args.windows]
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    rows = []
    for scheme in SCHEMES:
        for offset in ((0,) if scheme == "fp32" else (0, 16)):
            t = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
            if scheme != "fp32":
                fake_quantize(model, scheme, offset)
            lam = {i: score(model, *pair) for i, pair in enumerate(docs)}
            wiki = {i: (score(model, *windows[i])[0], len(windows[i][1])) for i in order}
            lm, wm = lambada_metrics(lam, list(lam)), wiki_metrics(wiki, order)
            row = {"scheme": scheme, "offset": offset, "lambada_acc": 100 * lm["acc"], "lambada_ppl": lm["ppl"],
                   "wiki_ppl": wm["ppl"], "lambada_greedy": [g for _, g in lam.values()],
                   "seconds": time.perf_counter() - t}
            rows.append(row)
            print(f"{scheme} offset {offset}: acc {row['lambada_acc']:.1f}, LAMBADA ppl {row['lambada_ppl']:.1f}, "
                  f"WikiText-2 ppl {row['wiki_ppl']:.2f}", flush=True)
    meta = {"command": "FLEXGEN_DATA_DIR=" + path + " .venv/bin/python " + " ".join(sys.argv),
            "machine": machine(), "started_utc": started, "lambada_docs": len(docs), "wiki_windows": order,
            "wiki_window_tokens": 1024}
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
