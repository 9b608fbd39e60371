"""Pack one context and several continuations into a single row (prefix sharing).

Multiple-choice scoring asks for log p(choice | context) for every choice. Packed as
context + choice1[:-1] + choice2[:-1] + ..., with each choice's positions starting
where the context ends and a mask that lets a choice see only the context and
itself, one forward pass computes the context once and every choice exactly as if
it had been scored alone.
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
