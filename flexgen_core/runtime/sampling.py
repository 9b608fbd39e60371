"""Sampling parameters and token choice: greedy, temperature, top-k, top-p, seeded per row."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int = 0
    logprobs: bool = True
    top_logprobs: int = 0

    def __post_init__(self):
        object.__setattr__(self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ()))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"SamplingParams.n must be an integer >= 1, got {self.n!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be a finite number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p!r}")
        for name in ("top_k", "top_logprobs", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"SamplingParams.{name} must be an integer >= 0, got {value!r}")
        if any(not s for s in self.stop):
            raise ValueError("SamplingParams.stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class RowSampler:
    """Chooses tokens for one output row; its generator depends only on (seed, request, completion),
    so results do not change with block shape or request order."""

    params: SamplingParams
    request_index: int
    completion_index: int
    generator: torch.Generator | None = field(default=None, init=False)

    def __post_init__(self):
        if not self.params.greedy:
            self.generator = torch.Generator().manual_seed(
                (self.params.seed * 1_000_003 + self.request_index * 7919 + self.completion_index) % (2**63)
            )

    def choose(self, logits_row: torch.Tensor) -> int:
        p = self.params
        if p.greedy:
            return int(torch.argmax(logits_row))
        scores = logits_row.float().cpu() / p.temperature
        if p.top_k > 0 and p.top_k < scores.shape[-1]:
            kth = torch.topk(scores, p.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            cumulative = torch.softmax(sorted_scores, -1).cumsum(-1)
            drop = cumulative - torch.softmax(sorted_scores, -1) >= p.top_p  # keep the token that crosses top_p
            scores = scores.scatter(0, order[drop], float("-inf"))
        probs = torch.softmax(scores, -1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
