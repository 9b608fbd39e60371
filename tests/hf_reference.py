"""Reference numbers from HF transformers (fp32, CPU), one sequence at a time (no padding)."""
from __future__ import annotations

import torch


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def greedy(model, prompt: list[int], max_new_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy tokens and the log-prob of each under the model (EOS does not stop it)."""
    ids = torch.tensor([prompt])
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                         pad_token_id=0, attention_mask=torch.ones_like(ids))
    tokens = out[0, len(prompt):].tolist()
    return tokens, token_logprobs(model, prompt + tokens)[len(prompt) - 1:]


@torch.no_grad()
def token_logprobs(model, seq: list[int]) -> list[float]:
    """log p(seq[i] | seq[:i]) for i >= 1."""
    logits = model(torch.tensor([seq])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return [lp[i - 1, seq[i]].item() for i in range(1, len(seq))]
