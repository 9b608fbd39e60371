"""Which requests a finished block completes, so callers can keep each result as soon as it exists.

A request is computed as one or more rows (n sampled copies of a prompt; a context packed with
its choices, split when they do not fit one row; a group of alike prompts packed together), and
its rows may fall in different blocks. A request is done once the last of its rows is.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

# on_block([(request index, result), ...]) after every block, for the requests it finished
OnBlock = Callable[[list[tuple[int, object]]], None]


class Completion:
    def __init__(self, owners: list[int], assemble: Callable[[int], object], on_block: OnBlock | None = None):
        """owners[row]: the request (or group of requests) each row belongs to; assemble(owner):
        the result(s) of an owner whose rows are all done, as a list of (request index, result)."""
        self.assemble, self.on_block = assemble, on_block
        self.left = Counter(owners)
        self.owners = owners
        self.results: dict[int, object] = {}

    def rows_done(self, rows: list[int]):
        finished = []
        for r in rows:
            owner = self.owners[r]
            self.left[owner] -= 1
            if self.left[owner] == 0:
                finished.extend(self.assemble(owner))
        self.results.update(finished)
        if finished and self.on_block is not None:
            self.on_block(sorted(finished, key=lambda item: item[0]))

    def in_order(self, n: int) -> list:
        return [self.results[i] for i in range(n)]
