"""Cutting one call's requests into chunks for the workers.

Requests are ordered by their tokens, so prompts that start alike (a question with each of its
answers, the same few-shot examples) stay in one chunk and each worker still computes their
common start once; runs of that order are cut at about equal work, several chunks per worker, so
a worker that finishes early pulls another instead of waiting for the slowest one. The costliest
chunks go first (longest processing time first), which keeps the last chunk short.
"""
from __future__ import annotations


def make_chunks(keys: list, costs: list[int], workers: int, per_worker: int = 4,
                max_requests: int | None = None) -> list[list[int]]:
    """Request indices per chunk, costliest chunk first. keys[i] orders the requests (their token
    ids), costs[i] is request i's work (its tokens); at most `max_requests` requests a chunk."""
    if not keys:
        return []
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    target = sum(costs) / max(1, workers * per_worker)
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
