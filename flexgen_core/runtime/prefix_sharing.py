"""Prefix sharing: tokens that several rows start with are computed once.

Two ways. Packing (`pack_choices`): multiple-choice scoring asks for log p(choice | context)
for every choice; packed as context + choice1[:-1] + choice2[:-1] + ..., with each choice's
positions starting where the context ends and a mask that lets a choice see only the context
and itself, one forward pass computes the context once and every choice exactly as if it had
been scored alone. Block prefixes (`prefix_blocks`): rows that start alike (few-shot examples)
go to the same blocks, and the scheduler runs a block's common prefix once for all its rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Pack:
    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    targets: list[tuple[int, int]] = field(default_factory=list)  # (row position, expected next token)
    owners: list[int] = field(default_factory=list)  # choice index of each target


def pack_choices(context: list[int], continuations: list[list[int]], max_len: int) -> list[Pack]:
    """One or more packs (more when the choices don't fit max_len tokens together)."""
    n_ctx = len(context)
    packs: list[Pack] = []
    current = None
    for c, cont in enumerate(continuations):
        if n_ctx + len(cont) - 1 > max_len:
            raise ValueError(f"context + continuation of {n_ctx + len(cont)} tokens exceed the model context of {max_len}")
        if current is None or len(current.tokens) + len(cont) - 1 > max_len:
            current = Pack(list(context), list(range(n_ctx)), [0] * n_ctx)
            packs.append(current)
        segment = max(current.segments) + 1
        start = len(current.tokens)
        body = cont[:-1]
        current.tokens += body
        current.positions += list(range(n_ctx, n_ctx + len(body)))
        current.segments += [segment] * len(body)
        # the context's last token predicts the first token; each body token predicts the next
        sources = [n_ctx - 1] + list(range(start, start + len(body)))
        current.targets += list(zip(sources, cont))
        current.owners += [c] * len(cont)
    return packs


def prefix_groups(prompts: list[list[int]], min_shared: int | None) -> list[tuple[list[int], int]]:
    """(prompt indices, shared length) per group of prompts that start with the same `shared`
    tokens (at least `min_shared`; each keeps at least one token of its own); shared 0 for a
    prompt on its own. None: no grouping.

    Prompts are taken in token order, so alike ones are neighbours. A prompt joins the group
    before it when that saves more than it costs: it saves the shared tokens it no longer
    computes, and costs every member the tokens by which the shared start would shrink (e.g. a
    chat template's header is common to all prompts, but one question's answers share far more)."""
    if min_shared is None:
        return [([i], 0) for i in range(len(prompts))]
    groups: list[tuple[list[int], int]] = []
    for i in sorted(range(len(prompts)), key=lambda i: prompts[i]):
        p = prompts[i]
        if groups:
            members, shared = groups[-1]
            first = prompts[members[0]]
            n = common_prefix(first, p, min(shared if len(members) > 1 else len(first) - 1, len(p) - 1))
            shrink = (shared - n) * len(members) if len(members) > 1 else 0
            if n >= min_shared and n > shrink:
                groups[-1] = (members + [i], n)
                continue
        groups.append(([i], len(p)))
    return [(members, shared if len(members) > 1 else 0) for members, shared in groups]


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """How many leading tokens a and b share, at most `limit`."""
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def prefix_blocks(rows: list[list[int]], min_shared: int | None, block_size, lengths: list[int] | None = None
                  ) -> list[list[int]]:
    """Row indices cut into blocks; `block_size(i)`: how many rows a block led by row i takes.
    Each prefix group gives whole blocks of its rows, which can compute their common start once
    (few-shot examples); the other rows, and what is left of each group, follow longest first, so
    their blocks pad little. No more blocks than without grouping. `lengths`: what each row costs
    in tokens, when more than the row (a context's continuations)."""
    size = lengths or [len(r) for r in rows]
    whole, rest = [], []
    for members, _ in prefix_groups(rows, min_shared):
        members = sorted(members, key=lambda i: -size[i])
        while len(members) > 1 and len(members) >= block_size(members[0]):
            n = block_size(members[0])
            whole.append(members[:n])
            members = members[n:]
        rest += members
    whole.sort(key=lambda b: -size[b[0]])
    rest.sort(key=lambda i: -size[i])
    i = 0
    while i < len(rest):
        n = block_size(rest[i])
        whole.append(rest[i:i + n])
        i += n
    return whole
