"""Cutting one call's requests into chunks for the workers.

Requests that start alike (the same few-shot examples: at least the runtime's SHARED_PREFIX_MIN
tokens) stay in one chunk, so each worker still computes their common start once; everything
else is ordered by its work, so a chunk holds requests of about one length and its blocks pad
little (ordered by tokens instead, a chunk spans every length and its blocks pad: 7% slower on
the lm-eval suite of results/data_parallel_cpu.md). That order is cut at about equal work,
several chunks per worker, so a worker that finishes early pulls another instead of waiting for
the slowest one. The costliest chunks go first (longest processing time first), which keeps the
last chunk short.
"""
from __future__ import annotations

from flexgen_core.runtime.llm import SHARED_PREFIX_MIN
from flexgen_core.runtime.prefix_sharing import prefix_groups

# Fewer requests than this a chunk and a worker's block runs part empty: a block's time per step is
# mostly its streamed weights, whatever its rows (40 short generations in 8 chunks of 5 ran 2.5x
# slower on 2 workers than in one block on one).
MIN_CHUNK_REQUESTS = 16


def make_chunks(keys: list, costs: list[int], workers: int, per_worker: int = 4,
                max_requests: int | None = None, min_requests: int | None = None) -> list[list[int]]:
    """Request indices per chunk, costliest chunk first. keys[i] is request i's prompt (its token
    ids), costs[i] its work (its tokens); chunks of about `min_requests` or more (so a small call
    gets fewer chunks than `workers x per_worker`, down to one), at most `max_requests`."""
    if not keys:
        return []
    groups = [sorted(members, key=lambda i: -costs[i]) for members, _ in prefix_groups(keys, SHARED_PREFIX_MIN)]
    min_requests = MIN_CHUNK_REQUESTS if min_requests is None else min_requests
    chunks_wanted = max(1, min(workers * per_worker, len(keys) // max(1, min_requests)))
    target = sum(costs) / chunks_wanted
    chunks, current, work = [], [], 0
    for members in sorted(groups, key=lambda m: -costs[m[0]]):
        own = 0  # this group's work in the current chunk: a group is cut only where it fills a chunk alone
        for k, i in enumerate(members):
            current.append(i)
            work += costs[i]
            own += costs[i]
            full = work >= target and (k == len(members) - 1 or own >= target)
            if full or (max_requests is not None and len(current) >= max_requests):
                chunks.append(current)
                current, work, own = [], 0, 0
    if current:
        chunks.append(current)
    return sorted(chunks, key=lambda chunk: -sum(costs[i] for i in chunk))
