"""Cutting one call's requests into chunks for the workers.

Requests are ordered by their tokens, so prompts that start alike (a question with each of its
answers, the same few-shot examples) stay in one chunk and each worker still computes their
common start once; runs of that order are cut at about equal work, several chunks per worker, so
a worker that finishes early pulls another instead of waiting for the slowest one. The costliest
chunks go first (longest processing time first), which keeps the last chunk short.
"""
from __future__ import annotations

# Fewer requests than this a chunk and a worker's block runs part empty: a block's time per step is
# mostly its streamed weights, whatever its rows (40 short generations in 8 chunks of 5 ran 2.5x
# slower on 2 workers than in one block on one).
MIN_CHUNK_REQUESTS = 16


def make_chunks(keys: list, costs: list[int], workers: int, per_worker: int = 4,
                max_requests: int | None = None, min_requests: int | None = None) -> list[list[int]]:
    """Request indices per chunk, costliest chunk first. keys[i] orders the requests (their token
    ids), costs[i] is request i's work (its tokens); chunks of about `min_requests` or more (so a
    small call gets fewer chunks than `workers x per_worker`, down to one), at most `max_requests`."""
    if not keys:
        return []
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    min_requests = MIN_CHUNK_REQUESTS if min_requests is None else min_requests
    chunks_wanted = max(1, min(workers * per_worker, len(keys) // max(1, min_requests)))
    target = sum(costs) / chunks_wanted
    chunks, current, work = [], [], 0
    for i in order:
        current.append(i)
        work += costs[i]
        if work >= target or (max_requests is not None and len(current) >= max_requests):
            chunks.append(current)
            current, work = [], 0
    if current:
        chunks.append(current)
    return sorted(chunks, key=lambda chunk: -sum(costs[i] for i in chunk))
