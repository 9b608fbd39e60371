"""FlexGenClient: HELM's `CachingClient` over the flexgen runtime.

A translator plus a cache key: requests become runtime calls (translate.py), calls run in
batches (execute.py), either gathered across HELM's threads (batcher.py) or handed over a
whole run spec at a time by the batching runner (runner.py calls `prefetch`).
"""
from __future__ import annotations

import json
import threading
import time

from helm.clients.client import CachingClient
from helm.common.cache import CacheConfig, create_key_value_store
from helm.common.hierarchical_logger import hlog
from helm.common.request import EMBEDDING_UNAVAILABLE_REQUEST_RESULT, Request, RequestResult

from .batcher import MicroBatcher
from .execute import run_calls
from .models import load_llm, policy_from_args
from .translate import BadRequest, Call, build_call, cache_key, prompt_text, to_result


class FlexGenClient(CachingClient):
    def __init__(self, cache_config: CacheConfig, model: str, policy: dict | None = None, percent=None,
                 memory: dict | None = None, dtype: str | None = None, device: str | None = None,
                 offload_dir: str | None = None, apply_chat_template: bool | None = None,
                 end_of_text_token: str | None = None, max_batch: int = 256, prefetch_chunk: int | None = None,
                 hardware: str | None = None, workload: list | None = None, compress_weight: bool = False,
                 compress_cache: bool = False, compression: dict | None = None, data_parallel: int = 1,
                 ray_address: str | None = None):
        super().__init__(cache_config=cache_config)
        pol = policy_from_args(policy, percent)
        planning = {"compress_weight": bool(compress_weight), "compress_cache": bool(compress_cache)}
        if compression:  # the planned policy's compression fields (LLM.from_pretrained's `compression`)
            planning["compression"] = dict(compression)
        if hardware:
            planning["hardware"] = hardware
        if workload:
            planning["workload"] = tuple(int(x) for x in workload)
        start = time.time()
        self.shared = load_llm(model, pol, dtype=dtype, device=device, memory=memory, offload_dir=offload_dir,
                               data_parallel=data_parallel, ray_address=ray_address, **planning)
        load_s = time.time() - start
        llm = self.shared.llm
        self.tokenizer = llm.tokenizer
        self.end_of_text_token = end_of_text_token
        if apply_chat_template is None:
            # HELM's HuggingFace client decides the same way, so both see the same prompts.
            apply_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
            hlog(f"flexgen: apply_chat_template={apply_chat_template} (from the tokenizer; set it in the "
                 "deployment args to override)")
        self.apply_chat_template = apply_chat_template
        self.identity = {"engine": "flexgen", "model": str(model), "dtype": str(llm.dtype).replace("torch.", "")}
        if llm.policy.compress_weight or llm.policy.compress_cache:
            p = llm.policy
            self.identity["compression"] = [p.compress_weight, p.compress_cache, p.compression_bits,
                                            p.compression_group_size]
            if p.compress_weight and p.weight_ranges != "minmax":  # earlier min-max runs keep their cache
                self.identity["compression"].append(p.weight_ranges)
            if p.compress_cache and p.cache_keys != "token":  # as do earlier per-token key runs
                self.identity["compression"].append(f"keys per {p.cache_keys}")
        if llm.policy.attn_sparsity < 1:
            self.identity["attn_sparsity"] = llm.policy.attn_sparsity
        self.prefetch_chunk = prefetch_chunk  # None: a whole run spec at once, cut into the runtime's blocks
        shared = self.shared
        self.batcher = shared.shared_batcher(lambda: MicroBatcher(lambda calls: run_calls(shared, calls), max_batch))
        self._prefetched: dict[str, dict] = {}  # responses computed by `prefetch`, by cache key
        self._prefetched_lock = threading.Lock()
        if llm.budgets is not None:
            hlog(f"flexgen: {llm.budgets.describe()}")
        hlog(f"flexgen: {model} ({llm.describe_placement()}; {self.identity['dtype']}, {llm.device}) "
             f"ready in {load_s:.2f}s")

    # -- one request (HELM's executor, any thread) -----------------------------------------
    def prepare(self, request: Request) -> tuple[Call, dict]:
        """The runtime call and the cache key; BadRequest for what can never succeed."""
        with self.shared.tokenizer_lock:
            prompt = prompt_text(request, self.tokenizer, self.apply_chat_template)
            call = build_call(request, prompt, self.tokenizer, self.shared.llm.spec.max_seq_len,
                              self.end_of_text_token)
        return call, CachingClient.make_cache_key(cache_key(request, prompt, self.identity), request)

    def make_request(self, request: Request) -> RequestResult:
        if request.embedding:
            return EMBEDDING_UNAVAILABLE_REQUEST_RESULT
        call, key = self.prepare(request)  # BadRequest propagates: HELM does not retry it
        with self._prefetched_lock:
            response = self._prefetched.get(_key_str(key))
        if response is not None:
            return to_result(response, cached=False)
        if self.cache is None:
            return to_result(self.batcher.submit(call), cached=False)
        response, cached = self.cache.get(key, lambda: self.batcher.submit(call))
        return to_result(response, cached)

    # -- a whole run spec (BatchingRunner) ------------------------------------------------
    def prefetch(self, requests: list[Request]) -> int:
        """Compute every request not in the cache (the runtime cuts them into its planned blocks);
        each block's results are written to HELM's cache as it finishes, so a killed run resumes
        where it stopped, losing at most the block in flight."""
        todo: dict[str, tuple[Call, dict]] = {}
        with self._prefetched_lock:
            self._prefetched.clear()  # only the current run spec's responses are kept in memory
        with self._store() as store:
            for request in requests:
                if request.embedding:
                    continue
                try:
                    call, key = self.prepare(request)
                except BadRequest:
                    continue  # make_request reports it
                k = _key_str(key)
                if k not in todo and (store is None or not store.contains(key)):
                    todo[k] = (call, key)
        if not todo:
            return 0
        # Same sampling settings together, and prompts in token order, so prompts that start alike
        # (one question with each answer; shared in-context examples) land in the same chunk and
        # the runtime computes their common start once (it sorts each chunk by length itself).
        items = sorted(todo.items(), key=lambda kv: (str(kv[1][0].params), kv[1][0].echo, kv[1][0].prompt_ids))
        chunk_size = self.prefetch_chunk or len(items)
        hlog(f"flexgen: {len(items)} of {len(requests)} requests to compute"
             + (f", in chunks of {chunk_size}" if chunk_size < len(items) else "")
             + "; each block's results are cached as it finishes")
        for start in range(0, len(items), chunk_size):
            chunk = items[start:start + chunk_size]

            def keep(finished, chunk=chunk):
                with self._store() as store:
                    if store is not None:
                        store.multi_put([(chunk[i][1][1], r) for i, r in finished])
                with self._prefetched_lock:
                    self._prefetched.update({chunk[i][0]: r for i, r in finished})

            run_calls(self.shared, [call for _, (call, _) in chunk], on_done=keep)
        return len(items)

    def _store(self):
        if self.cache is None:
            return _NoStore()
        return create_key_value_store(self.cache.config)


class _NoStore:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _key_str(key) -> str:
    return json.dumps(key, sort_keys=True)
