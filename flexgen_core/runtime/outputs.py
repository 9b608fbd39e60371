"""What the runtime returns."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # log p(token) under the model, one per token
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    text: str | None = None
    finish_reason: str = "length"  # "stop" (EOS, stop token or stop string) or "length"


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


@dataclass
class ScoreOutput:
    logprobs: list[float]  # one per continuation token
    is_greedy: bool  # every continuation token is the argmax given its prefix

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))
