"""Blocks of requests as the scheduler sees them: padded inputs in, logits out.

Prompts of a GPU batch are left-padded to that batch's longest, so every row's
next token sits at the same column; padding never leaves this module.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.attention import prefill_mask
from .sampling import RowSampler


class _PaddedBatches:
    """rows: token ids. `positions`/`segments` (per row, same lengths) describe packed rows for
    prefix sharing; by default positions count real tokens and everything is one segment.
    Positions count the shared prefix: a row's first token after a prefix of p tokens is at p.

    `prefix`: tokens that every row starts with, left out of `rows`. The scheduler computes them
    once for the whole block and every row attends to their keys and values, so a cache row is
    [prefix | left padding | row | decoded tokens]."""

    def __init__(self, rows: list[list[int]], gpu_batch_size: int, num_steps: int, device, pad_id: int,
                 positions: list[list[int]] | None = None, segments: list[list[int]] | None = None,
                 prefix: list[int] | None = None):
        self.device, self.num_steps = device, num_steps
        p = self.prefix_len = len(prefix or [])
        self.prefix = torch.tensor([prefix], dtype=torch.long, device=device) if p else None
        self.groups = _row_groups(rows, gpu_batch_size, SCORING_PADDED_RATIO if num_steps == 1 else None)
        self.batch_sizes = [len(g) for g in self.groups]
        self.prompt_lens, self.widths, self.prompts, self.valid, self.real_lens = [], [], [], [], []
        self.packed_positions, self.segments, self.pad_counts = [], [], []
        for group in self.groups:
            width = max(len(rows[i]) for i in group)
            ids = torch.full((len(group), width), pad_id, dtype=torch.long)
            valid = torch.zeros((len(group), p + width + num_steps - 1), dtype=torch.bool)
            valid[:, :p] = True
            for r, i in enumerate(group):
                n = len(rows[i])
                ids[r, width - n:] = torch.tensor(rows[i], dtype=torch.long)
                valid[r, p + width - n:] = True  # the prompt and every token decoded after it
            self.prompt_lens.append(p + width)
            self.widths.append(width)
            self.pad_counts.append([width - len(rows[i]) for i in group])
            self.prompts.append(ids.to(device))
            self.valid.append(valid.to(device))
            self.real_lens.append(torch.tensor([p + len(rows[i]) for i in group], device=device))
            if positions is not None and any(_packed(positions[i], segments[i], p) for i in group):
                pos = torch.zeros((len(group), width), dtype=torch.long)
                seg = torch.zeros((len(group), width), dtype=torch.long)
                for r, i in enumerate(group):
                    n = len(rows[i])
                    pos[r, width - n:] = torch.tensor(positions[i], dtype=torch.long)
                    seg[r, width - n:] = torch.tensor(segments[i], dtype=torch.long)
                self.packed_positions.append(pos.to(device))
                self.segments.append(seg.to(device))
            else:  # plain causal rows: the fused causal attention path, no explicit mask
                self.packed_positions.append(None)
                self.segments.append(None)
        self._inputs: dict = {}

    def prompt_len(self, k: int) -> int:
        """Cache positions of batch k's prompts: the shared prefix and the padded rows."""
        return self.prompt_lens[k]

    def prefix_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared prefix's token ids and positions, [1, prefix_len] each."""
        return self.prefix, torch.arange(self.prefix_len, device=self.device)[None]

    def inputs(self, step: int, k: int):
        key = (step, k)
        if key not in self._inputs:
            self._inputs = {kk: v for kk, v in self._inputs.items() if kk[0] == step}  # keep only this step
            if step == 0:
                if self.packed_positions[k] is not None:
                    positions = self.packed_positions[k]
                else:
                    valid = self.valid[k][:, : self.prompt_lens[k]]
                    positions = (valid.long().cumsum(1) - 1).clamp(min=0)[:, self.prefix_len:]
                self._inputs[key] = (self.prompts[k], positions)
            else:
                positions = (self.real_lens[k] + step - 1)[:, None]
                self._inputs[key] = (self.next_tokens(k), positions)
        return self._inputs[key]

    def key_valid(self, step: int, k: int) -> torch.Tensor:
        return self.valid[k][:, : self.prompt_lens[k] + step]

    def prefill_mask(self, k: int, window: int | None) -> torch.Tensor | None:
        """An explicit mask for packed rows or a window shorter than the rows; None when plain
        causal attention over the left padding (`pads`) says it all."""
        segments = self.segments[k]
        if self.prefix_len:  # [b, 1, rows' columns, prefix + rows' columns]; the prefix is context: segment 0
            valid, p = self.key_valid(0, k), self.prefix_len
            positions = torch.cat([self.prefix_inputs()[1].expand(valid.shape[0], -1), self.inputs(0, k)[1]], dim=1)
            if segments is not None:
                segments = F.pad(segments, (p, 0))
            return prefill_mask(valid, positions, segments, window)[:, :, p:]
        if segments is None and (window is None or self.prompt_lens[k] <= window):
            return None
        return prefill_mask(self.key_valid(0, k), self.inputs(0, k)[1], segments, window)

    def pads(self, k: int) -> list[int]:
        return self.pad_counts[k]

    def next_tokens(self, k: int) -> torch.Tensor:
        raise NotImplementedError


SCORING_PADDED_RATIO = 1.25  # a scoring batch ends before its padded tokens exceed this x its real ones


def _row_groups(rows: list[list[int]], size: int, max_padded_ratio: float | None) -> list[list[int]]:
    """Consecutive rows in GPU batches of at most `size`. A one-step job (scoring) also ends a
    batch where the next row would pad it past `max_padded_ratio`: its batches share each
    layer's weights anyway, and padding is computed like real tokens (64 packed HELM rows of
    mixed lengths in one batch ran 2.1x slower than in batches of 8)."""
    groups, current, width, real = [], [], 0, 0
    for i, row in enumerate(rows):
        n = len(row)
        if current and (len(current) == size or (max_padded_ratio is not None
                                                 and max(width, n) * (len(current) + 1) > max_padded_ratio * (real + n))):
            groups.append(current)
            current, width, real = [], 0, 0
        current.append(i)
        width, real = max(width, n), real + n
    if current:
        groups.append(current)
    return groups


def _packed(positions: list[int], segments: list[int], start: int) -> bool:
    """Whether a row needs its packed positions and segment mask: a context with one continuation
    (segments 0 and 1, positions start..) is a plain causal row, e.g. every LAMBADA or wikitext request."""
    return max(segments) > 1 or positions != list(range(start, start + len(positions)))


class GenerationJob(_PaddedBatches):
    def __init__(self, rows, samplers: list[RowSampler], params, gpu_batch_size, device, pad_id, eos_ids, tokenizer,
                 prefix: list[int] | None = None):
        super().__init__(rows, gpu_batch_size, params.max_new_tokens, device, pad_id, prefix=prefix)
        self.samplers, self.params, self.tokenizer = samplers, params, tokenizer
        self.stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_ids))
        n = len(rows)
        self.tokens = [[] for _ in range(n)]
        self.logprobs = [[] for _ in range(n)]
        self.top = [[] for _ in range(n)]
        self.finish = [None] * n
        self.texts: list[str | None] = [None] * n
        self._next = [None] * len(self.groups)

    def select(self, step, k):
        if step == 0:  # only the last prompt column feeds the head
            b, width = len(self.groups[k]), self.widths[k]
            return torch.arange(b, device=self.device) * width + (width - 1)
        return None

    def consume(self, step, k, rows, logits):
        group = self.groups[k][rows]
        # One device round trip per step, not one per row: choose greedy rows together.
        if self.params.greedy:
            chosen = logits.argmax(-1).tolist()
        else:
            chosen = [self.samplers[i].choose(logits[r]) if self.finish[i] is None else 0 for r, i in enumerate(group)]
        need_logprobs = self.params.logprobs or self.params.top_logprobs
        logprobs = torch.log_softmax(logits.float(), dim=-1) if need_logprobs else None
        picked = logprobs.gather(1, torch.tensor(chosen, device=logits.device)[:, None])[:, 0].tolist() \
            if self.params.logprobs else None
        top = torch.topk(logprobs, self.params.top_logprobs) if self.params.top_logprobs else None
        for r, i in enumerate(group):
            if self.finish[i] is not None:
                chosen[r] = self.tokens[i][-1] if self.tokens[i] else 0  # finished rows idle until the block ends
                continue
            token = chosen[r]
            self.tokens[i].append(token)
            if picked is not None:
                self.logprobs[i].append(picked[r])
            if top is not None:
                self.top[i].append(dict(zip(top.indices[r].tolist(), top.values[r].tolist())))
            self._check_stop(i, token)
        ids = torch.tensor(chosen, dtype=torch.long, device=self.device)[:, None]
        self._next[k] = ids if rows.start == 0 else torch.cat([self._next[k], ids])

    def _check_stop(self, i, token):
        if token in self.stop_ids:
            self.finish[i] = "stop"
            return
        if self.params.stop:
            text = self.tokenizer.decode(self.tokens[i], skip_special_tokens=True)
            hits = [text.find(s) for s in self.params.stop if s in text]
            if hits:
                self.texts[i] = text[: min(hits)]
                self.finish[i] = "stop"
                return
        if len(self.tokens[i]) >= self.params.max_new_tokens:
            self.finish[i] = "length"

    def next_tokens(self, k):
        return self._next[k]

    def done(self):
        return all(f is not None for f in self.finish)


class ScoringJob(_PaddedBatches):
    """One forward pass per row; log-probs only at the target positions.

    rows[i] are the input ids; targets[i] lists (position in rows[i], token id) pairs:
    the token expected right after that position. A shared `prefix` has no targets."""

    def __init__(self, rows, targets, gpu_batch_size, device, pad_id, positions=None, segments=None,
                 prefix: list[int] | None = None):
        super().__init__(rows, gpu_batch_size, 1, device, pad_id, positions, segments, prefix)
        self.targets = targets
        self.logprobs = [[] for _ in rows]
        self.greedy = [[] for _ in rows]
        self._select, self._owners = [], []
        for k, group in enumerate(self.groups):
            width, flat, owners = self.widths[k], [], []
            for r, i in enumerate(group):
                pad = width - len(rows[i])
                for pos, tok in targets[i]:
                    flat.append(r * width + pad + pos)
                    owners.append((i, tok))
            self._select.append(torch.tensor(flat, dtype=torch.long, device=device))
            self._owners.append(owners)

    def select(self, step, k):
        return self._select[k]

    def consume(self, step, k, rows, logits):
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        owners = self._owners[k][rows]
        wanted = torch.tensor([tok for _, tok in owners], device=logits.device)
        picked = logprobs.gather(1, wanted[:, None])[:, 0].tolist()
        best = (logprobs.argmax(-1) == wanted).tolist()
        for (i, _), lp, g in zip(owners, picked, best):
            self.logprobs[i].append(lp)
            self.greedy[i].append(g)

    def done(self):
        return True
