"""Run many Calls as few runtime calls: one scoring pass for every echoed prompt, one
`generate` per distinct set of sampling parameters. Returns HELM-cacheable JSON dicts."""
from __future__ import annotations

import time
from collections import defaultdict

from helm.common.hierarchical_logger import hlog

from .translate import Call


def run_calls(shared, calls: list[Call], log=hlog, on_done=None) -> list[dict]:
    """HELM responses for `calls`, in order. on_done([(call index, response), ...]) is told of the
    responses each runtime block completes, as it completes them (a run killed later keeps them)."""
    llm = shared.llm
    start = last = time.time()
    prompt_lps, generated, shapes, responses = {}, {}, [], {}
    # a call is done when its parts are: the echoed prompt's log-probs and its generation
    parts = {i: int(c.echo) + int(c.params is not None) for i, c in enumerate(calls)}
    eos = set(llm.spec.eos_token_ids) | {llm.tokenizer.eos_token_id}

    def parts_done(indices):
        for i in indices:
            parts[i] -= 1
        finish([i for i in indices if parts[i] == 0])

    def finish(ready):
        nonlocal last
        now = time.time()
        with shared.tokenizer_lock:
            for i in ready:
                responses[i] = _response(llm.tokenizer, eos, calls[i], prompt_lps.get(i), generated.get(i))
                # Amortised: a block's time shared among the requests it finished, so HELM's sums
                # add up to the wall time.
                responses[i].update(request_time=(now - last) / len(ready), request_datetime=int(start),
                                    batch_size=len(calls))
        if ready:
            last = now
            if on_done is not None:
                on_done([(i, responses[i]) for i in ready])

    with shared.lock:
        finish([i for i, n in parts.items() if n == 0])  # max_tokens 0 without echo: an empty response
        echo = [i for i, c in enumerate(calls) if c.echo]
        if echo:
            def echoed(results):
                for j, lps in results:
                    prompt_lps[echo[j]] = [0.0] + [float(x) for x in lps[1:]]  # HELM: the first token has no context
                parts_done([echo[j] for j, _ in results])

            llm.prompt_logprobs([list(calls[i].prompt_ids) for i in echo], on_block=echoed)
            shapes.append(f"score {len(echo)}")
        groups = defaultdict(list)
        for i, c in enumerate(calls):
            if c.params is not None:
                groups[c.params].append(i)
        for params, idx in groups.items():
            def produced(results, idx=idx):
                for j, out in results:
                    generated[idx[j]] = out.outputs
                parts_done([idx[j] for j, _ in results])

            llm.generate([list(calls[i].prompt_ids) for i in idx], params, on_block=produced)
            shapes.append(f"generate {len(idx)}x{params.n} (max_tokens={params.max_new_tokens})")
    seconds = time.time() - start
    if shapes:
        log(f"flexgen: batch of {len(calls)} requests ({', '.join(shapes)}) in {seconds:.2f}s")
    return [responses[i] for i in range(len(calls))]


def _response(tokenizer, eos: set, call: Call, prompt_lps, outputs) -> dict:
    prefix_text, prefix_tokens, prefix_lps = "", [], []
    if call.echo:
        prefix_text = tokenizer.decode(list(call.prompt_ids))
        prefix_tokens = [tokenizer.decode([t]) for t in call.prompt_ids]
        prefix_lps = prompt_lps
    if outputs is None:  # max_tokens == 0: the prompt (if echoed) is the whole completion
        one = {"text": prefix_text, "tokens": prefix_tokens, "logprobs": prefix_lps, "finish_reason": "length"}
        return {"completions": [dict(one) for _ in range(call.num_completions)]}
    completions = []
    for out in outputs:
        text, tokens, lps, reason = _completion(tokenizer, eos, out, call.stop)
        completions.append({"text": prefix_text + text, "tokens": prefix_tokens + tokens,
                            "logprobs": prefix_lps + lps, "finish_reason": reason})
    return {"completions": completions}


def _completion(tokenizer, eos: set, out, stops: tuple[str, ...]):
    """Text cut before the first stop string, tokens that lie inside that text, their log-probs."""
    ids, lps, reason = list(out.token_ids), [float(x) for x in out.logprobs], out.finish_reason
    if ids and ids[-1] in eos:
        ids, lps, reason = ids[:-1], lps[:-1], "endoftext"
    # Decoded with special tokens, as HELM's HF client does, then cut like its truncate_sequence.
    text = tokenizer.decode(ids)
    cuts = [text.index(s) for s in stops if s in text]
    if cuts:
        text, reason = text[: min(cuts)], "stop"
        keep = len(ids)
        while keep > 0 and len(tokenizer.decode(ids[:keep])) > len(text):
            keep -= 1
        ids, lps = ids[:keep], lps[:keep]
    return text, [tokenizer.decode([t]) for t in ids], lps, reason
