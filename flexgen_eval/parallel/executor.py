"""DataParallelLLM: N Ray workers, each owning one LLM, behind the calls the adapters make on one.

A call's requests are cut into chunks of alike prompts (chunks.py) that idle workers pull, so a
slow worker holds up only its own chunk; results reach `on_block` in the caller's numbering as
each chunk finishes (the driver, and only the driver, writes the caches), and the call returns
them in request order. A worker that dies has its chunk handed to the next idle worker while Ray
restarts it; a chunk that fails by itself is split until the request at fault is found, which
raises its own error once every other request is done.
"""
from __future__ import annotations

import functools
import logging
import time
from collections import deque

import torch

from .chunks import make_chunks
from .worker import Worker, load_pretrained

log = logging.getLogger("flexgen_eval.parallel")
STARTUP_WARNING_S = 120
RESTART_POLL_S = 0.2


class WorkerLost(RuntimeError):
    """A chunk outlived more workers than its retries allow, or no worker is left."""


def connect(address: str | None = None) -> bool:
    """Join the cluster at `address` ("auto" or HOST:PORT), or start a local Ray instance with the
    machine's resources. True when this call started Ray (and its owner should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)
    return True


def _worker_failures():
    import ray.exceptions as rex

    return rex.RayActorError, rex.WorkerCrashedError, rex.OutOfMemoryError


class DataParallelLLM:
    """`workers` copies of one model on a Ray cluster. Each worker loads it with `load()` (default:
    `LLM.from_pretrained(name_or_dir, **llm_kwargs)` in the worker's process, so each plans within
    its own budgets), on one GPU when the cluster has one per worker, else on `threads` CPU cores
    (default: the cluster's cores shared out). A chunk is retried on `max_retries` more workers;
    a dead worker is restarted up to `max_restarts` times."""

    def __init__(self, name_or_dir: str | None = None, workers: int = 2, address: str | None = None,
                 load=None, threads: int | None = None, gpus: int | None = None, max_retries: int = 2,
                 max_restarts: int = 2, chunks_per_worker: int = 4, **llm_kwargs):
        import ray

        if int(workers) < 1:
            raise ValueError(f"data_parallel_size must be at least 1, got {workers}")
        if load is None and not name_or_dir:
            raise ValueError("DataParallelLLM needs a checkpoint (name_or_dir) or a load function")
        self._owns_ray = connect(address)
        n = int(workers)
        resources = ray.cluster_resources()
        gpus = self._gpus_per_worker(gpus, n, resources, llm_kwargs.get("device"))
        cpus = int(resources.get("CPU", 0))
        threads = int(threads) if threads else max(1, cpus // n)
        if not gpus and n * threads > cpus:
            self.close()
            raise ValueError(f"data_parallel_size={n} x {threads} threads needs {n * threads} CPUs; the Ray "
                             f"cluster has {cpus}: use fewer workers or threads, or add nodes")
        self.max_retries, self.chunks_per_worker = int(max_retries), int(chunks_per_worker)
        self.threads = threads
        self._load = load or functools.partial(load_pretrained, name_or_dir, **llm_kwargs)
        actor = ray.remote(Worker).options(num_cpus=threads, num_gpus=gpus, max_restarts=int(max_restarts),
                                           max_task_retries=0, scheduling_strategy="SPREAD")
        self._workers = [actor.remote(threads) for _ in range(n)]
        self._live = list(self._workers)
        placed = [w.node.remote() for w in self._workers]
        _, waiting = ray.wait(placed, num_returns=n, timeout=STARTUP_WARNING_S)
        if waiting:
            log.warning("flexgen: %d of %d workers have not started after %d s; the Ray cluster may lack "
                        "their resources (%d CPUs and %d GPUs each)", len(waiting), n, STARTUP_WARNING_S, threads, gpus)
        nodes = ray.get(placed)
        # workers of one node share its memory: each plans within its part of what is not named
        self._sharing = {w: nodes.count(node) for w, node in zip(self._workers, nodes)}
        ray.get([w.load.remote(self._load, self._sharing[w]) for w in self._workers])  # in parallel
        try:
            described = ray.get([w.describe.remote() for w in self._workers])
        except ray.exceptions.RayTaskError as e:  # the loader's own error: bad path, impossible budget
            self.close()
            raise (e.cause if isinstance(e.cause, BaseException) else e) from None
        first = described[0]
        self.spec, self._tokenizer, self.policy = first["spec"], first["tokenizer"], first["policy"]
        self.dtype, self.device, self.path = first["dtype"], torch.device(first["device"]), first["path"]
        self.budgets, self.plan, self._placement = first["budgets"], first["plan"], first["placement"]
        self.nodes = len({d["node"] for d in described})
        self._tokenizer_override = None
        self._stats: dict = {}  # worker -> its latest totals and memory stats
        self.workers_lost = 0  # chunks handed to another worker after theirs died
        log.info("flexgen: %d workers on %d nodes ready", n, self.nodes)

    @staticmethod
    def _gpus_per_worker(gpus, n, resources, device) -> int:
        if gpus is not None:
            return int(gpus)
        if device is not None and not str(device).startswith("cuda"):
            return 0
        have = int(resources.get("GPU", 0))
        if have == 0:
            return 0
        if have < n:
            raise ValueError(f"data_parallel_size={n} needs a GPU per worker; the Ray cluster has {have}: "
                             f"use data_parallel_size={have}, or device=cpu")
        return 1

    # -- what the adapters read ------------------------------------------------------------
    @property
    def workers(self) -> int:
        return len(self._workers)

    @property
    def tokenizer(self):
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer):
        """A tokenizer given by the caller (stop strings need one), sent to every worker."""
        import ray

        self._tokenizer = self._tokenizer_override = tokenizer
        ray.get([w.set_tokenizer.remote(tokenizer) for w in self._live])

    def describe_placement(self) -> str:
        return (f"{self.workers} data-parallel workers on {self.nodes} node(s), each {self._placement} "
                "(memory not named is shared out among a node's workers)")

    @property
    def totals(self) -> dict:
        """Per kind, summed over workers (seconds are worker-seconds)."""
        out: dict = {}
        for stats in self._stats.values():
            for kind, numbers in stats["totals"].items():
                into = out.setdefault(kind, dict.fromkeys(numbers, 0))
                for key, value in numbers.items():
                    into[key] = into.get(key, 0) + value
        return out

    def memory_stats(self) -> dict:
        return {"workers": [stats["memory"] for stats in self._stats.values()]}

    def close(self):
        import ray

        for w in getattr(self, "_workers", []):
            ray.kill(w, no_restart=True)
        self._workers, self._live = [], []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the calls: LLM's signatures ---------------------------------------------------------
    def generate(self, prompts, params=None, on_block=None, seed_ids=None):
        seeds = list(range(len(prompts))) if seed_ids is None else list(seed_ids)
        new = params.max_new_tokens if params is not None else 0
        return self._run("generate", prompts, [list(p) for p in prompts], [len(p) + new for p in prompts], on_block,
                         lambda chunk: {"params": params, "seed_ids": [seeds[i] for i in chunk]})

    def score(self, pairs, on_block=None):
        return self._run("score", pairs, [list(c) + list(x) for c, x in pairs], [len(c) + len(x) for c, x in pairs],
                         on_block)

    def score_choices(self, groups, on_block=None):
        return self._run("score_choices", groups, [list(c) for c, _ in groups],
                         [len(c) + sum(map(len, conts)) for c, conts in groups], on_block)

    def prompt_logprobs(self, prompts, on_block=None):
        return self._run("prompt_logprobs", prompts, [list(p) for p in prompts], [len(p) for p in prompts], on_block)

    def _run(self, method, items, keys, costs, on_block, kwargs_for=lambda chunk: {}):
        import ray

        results = [None] * len(items)
        queue = deque(make_chunks(keys, costs, len(self._live), self.chunks_per_worker))
        tries: dict[tuple, int] = {}
        failed: list[tuple[int, BaseException]] = []  # requests that fail on their own
        in_flight: dict = {}  # ref -> (worker, chunk), or (worker, None) for a restarted worker's ping
        idle = list(self._live)
        while queue or in_flight:
            while idle and queue:
                worker, chunk = idle.pop(0), queue.popleft()
                in_flight[worker.run.remote(method, [items[i] for i in chunk], kwargs_for(chunk))] = (worker, chunk)
            if not in_flight:
                raise WorkerLost(f"every worker died; {sum(map(len, queue))} requests were not computed")
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            worker, chunk = in_flight.pop(ref)
            try:
                answer = ray.get(ref)
            except _worker_failures() as e:
                if chunk is None and isinstance(e, ray.exceptions.ActorUnavailableError):
                    time.sleep(RESTART_POLL_S)  # still restarting: ask again
                    in_flight[self._reload(worker)] = (worker, None)
                    continue
                if chunk is None:  # no restart left
                    self._live.remove(worker)
                    log.warning("flexgen: a worker is gone for good (%s); %d left", type(e).__name__, len(self._live))
                    continue
                self._hand_over(chunk, tries, queue, e)
                in_flight[self._reload(worker)] = (worker, None)  # answers once Ray has restarted it
                continue
            except ray.exceptions.RayTaskError as e:
                idle.append(worker)
                if len(chunk) > 1:  # find the request at fault; the others still run
                    half = len(chunk) // 2
                    queue.extendleft([chunk[half:], chunk[:half]])
                else:
                    failed.append((chunk[0], e.cause if isinstance(e.cause, BaseException) else e))
                continue
            if chunk is None:  # restarted and loaded again, or not loadable any more
                if not answer:
                    self._live.remove(worker)
                    log.warning("flexgen: a restarted worker could not load the model; %d left", len(self._live))
                    continue
                if self._tokenizer_override is not None:
                    worker.set_tokenizer.remote(self._tokenizer_override)
            idle.append(worker)
            if chunk is None:
                continue
            out, self._stats[worker] = answer
            finished = list(zip(chunk, out))
            for i, result in finished:
                results[i] = result
            if on_block is not None:
                on_block(sorted(finished, key=lambda item: item[0]))
        if failed:
            index, error = min(failed, key=lambda item: item[0])
            if hasattr(error, "add_note"):
                error.add_note(f"(request {index} of this {method} call; its other requests were computed)")
            raise error
        return results

    def _reload(self, worker):
        """A restarted actor has lost its model: load it again (True once loaded)."""
        return worker.load.remote(self._load, self._sharing[worker])

    def _hand_over(self, chunk, tries, queue, error):
        key = tuple(chunk)
        tries[key] = tries.get(key, 0) + 1
        if tries[key] > self.max_retries:
            raise WorkerLost(f"a chunk of {len(chunk)} requests lost {tries[key]} workers "
                             f"(the last: {type(error).__name__}: {error}); raise max_retries or look at the "
                             "workers' logs (out of memory?)") from error
        self.workers_lost += 1
        log.warning("flexgen: a worker died (%s); its %d requests go to another", type(error).__name__, len(chunk))
        queue.appendleft(chunk)

