"""HELM Request <-> runtime call: what to compute for a request, its cache key, and the result.

Tokenization follows HELM's own HuggingFace client so predictions match it: generation
prompts are encoded with the tokenizer's default special tokens, echoed prompts exactly as
HELM's tokenizer counts them (no special tokens added), first token log-prob 0.0.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from helm.common.request import GeneratedOutput, Request, RequestResult, Token
from helm.proxy.retry import NonRetriableException

CACHE_FORMAT = 1  # bump when the response layout changes, so old cache entries are not reused


class BadRequest(NonRetriableException):
    """A request the runtime can never serve: HELM fails it at once instead of retrying 5 times."""


@dataclass(frozen=True)
class Call:
    """One request as the runtime sees it."""

    prompt_ids: tuple[int, ...]
    echo: bool  # report the prompt's tokens and log-probs before the completion
    num_completions: int
    params: object | None  # flexgen_core.SamplingParams; None when nothing is generated
    stop: tuple[str, ...]  # cut the completion text before these (plus end of text)


def prompt_text(request: Request, tokenizer, apply_chat_template: bool) -> str:
    if request.multimodal_prompt is not None:
        raise BadRequest("flexgen client: multimodal prompts are not supported")
    if request.prompt and request.messages:
        raise BadRequest("flexgen client: a request may set `prompt` or `messages`, not both")
    if not apply_chat_template:
        if request.messages:
            raise BadRequest("flexgen client: chat messages need apply_chat_template (the tokenizer has no template "
                             "or it was switched off)")
        return request.prompt
    messages = request.messages or [{"role": "user", "content": request.prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def seed_of(request: Request) -> int:
    """HELM varies `random` to ask for a different sample of the same request."""
    if request.random is None:
        return 0
    return int(hashlib.sha256(str(request.random).encode()).hexdigest()[:12], 16)


def build_call(request: Request, prompt: str, tokenizer, max_seq_len: int, end_of_text: str | None) -> Call:
    from flexgen_core import SamplingParams

    if request.num_completions < 1:
        raise BadRequest(f"flexgen client: num_completions must be >= 1, got {request.num_completions}")
    if request.max_tokens < 0:
        raise BadRequest(f"flexgen client: max_tokens must be >= 0, got {request.max_tokens}")
    if request.temperature < 0:
        raise BadRequest(f"flexgen client: temperature must be >= 0, got {request.temperature}")
    if not 0 < request.top_p <= 1:
        raise BadRequest(f"flexgen client: top_p must be in (0, 1], got {request.top_p}")
    ids = tokenizer.encode(prompt, add_special_tokens=not request.echo_prompt)
    if not ids:
        raise BadRequest("flexgen client: the prompt is empty (no tokens)")
    if len(ids) + request.max_tokens > max_seq_len:
        raise BadRequest(f"flexgen client: prompt of {len(ids)} tokens plus max_tokens={request.max_tokens} exceeds "
                         f"the model context of {max_seq_len}")
    stops = tuple(s for s in request.stop_sequences if s)
    params = None
    if request.max_tokens > 0:
        params = SamplingParams(max_new_tokens=request.max_tokens, temperature=float(request.temperature),
                                top_p=float(request.top_p), n=request.num_completions, stop=stops,
                                seed=seed_of(request), logprobs=True)
    if end_of_text:
        stops = stops + (end_of_text,)
    return Call(tuple(ids), request.echo_prompt, request.num_completions, params, stops)


def cache_key(request: Request, prompt: str, model_identity: dict) -> dict:
    """Every field that changes the output; the placement policy does not, so it is left out."""
    return {
        "format": CACHE_FORMAT,
        **model_identity,
        "prompt": prompt,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "num_completions": request.num_completions,
        "max_tokens": request.max_tokens,
        "stop_sequences": list(request.stop_sequences),
        "echo_prompt": request.echo_prompt,
    }  # HELM's make_cache_key adds `random`


def to_result(response: dict, cached: bool) -> RequestResult:
    completions = []
    for c in response["completions"]:
        tokens = [Token(text=t, logprob=lp) for t, lp in zip(c["tokens"], c["logprobs"])]
        completions.append(GeneratedOutput(text=c["text"], logprob=sum(c["logprobs"]), tokens=tokens,
                                           finish_reason={"reason": c["finish_reason"]}))
    return RequestResult(success=True, cached=cached, request_time=response.get("request_time"),
                         request_datetime=response.get("request_datetime"), completions=completions, embedding=[])
