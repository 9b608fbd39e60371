"""The zig-zag block schedule: token step -> layer -> GPU batch.

Weights of a layer are loaded once per step for the whole block and shared by its
GPU batches; while batch k computes, the next layer's weights, batch k+1's cache
and activations are on their way and batch k-1's results are being stored. Reads
and writes have queues of their own: a write to host memory waits for the device
to produce its data, and reads queued behind it would wait too (measured on an
H200, OPT-30B with the cache on the CPU: the one queue's thread spent 1.4 s of a
2.9 s decode step in such waits). A read waits only for the last write to the
same buffer. The same loop runs with overlap off; only the queues run inline.

On a CPU a decode step runs each decoder layer once over all of the block's batches (attention
still batch by batch, each over its own cache): there a batch's matmuls read the layer's
weights from memory again, so k batches of b rows cost up to k times one batch of k*b rows
(OLMoE-1B-7B, 256 rows, weights in RAM: 12.6 s per decode step as 32x8 against 3.33 s as 256x1).
The prefill stays batch by batch, which is what bounds its working memory.
"""
from __future__ import annotations

import time
from typing import Protocol

import torch

from ..memory import host_heap, key_groups
from ..memory.compression import QuantConfig
from ..memory.io_queue import WRITES_IN_FLIGHT, IOQueue
from ..memory.kv_cache import BlockCache, decode_over_segments, prompt_stored_and_seen
from ..memory.tiers import TieredRows, TierSet
from ..model.attention import prefill_attention
from ..planning.policy import Policy

HEAD_CHUNK_ROWS = 1024  # logits rows per head call: bounds the [rows, vocab] tensor


class Job(Protocol):
    """What a block computes; the scheduler asks it for inputs and hands it logits."""

    batch_sizes: list[int]
    num_steps: int

    prefix_len: int  # tokens every row shares, computed once per block (0: none)

    def prompt_len(self, k: int) -> int: ...
    def prefix_inputs(self) -> tuple[torch.Tensor, torch.Tensor]: ...  # [1, prefix_len] ids, positions
    def inputs(self, step: int, k: int) -> tuple[torch.Tensor, torch.Tensor]: ...  # token ids, positions
    def key_valid(self, step: int, k: int) -> torch.Tensor: ...  # [b, keys] bool
    def prefill_mask(self, k: int, window: int | None) -> torch.Tensor | None: ...  # [b, 1, s, s] bool
    def pads(self, k: int) -> list[int]: ...  # left padding of each row
    def select(self, step: int, k: int) -> torch.Tensor | None: ...
    def consume(self, step: int, k: int, rows: slice, logits: torch.Tensor) -> None: ...
    def done(self) -> bool: ...


class _Context:
    """Per (layer, batch) context handed to a layer: positions and the attention hook."""

    def __init__(self, positions, select=None, attend=None):
        self.positions, self.select, self._attend = positions, select, attend

    def attend(self, q, k, v, scale=None, softcap=None):
        return self._attend(q, k, v, scale, softcap)


class Activations:
    """Hidden states of each GPU batch between layers, on the tiers the policy names."""

    def __init__(self, tiers: TierSet, percents, reads: IOQueue, writes: IOQueue):
        self.tiers, self.percents, self.reads, self.writes = tiers, percents, reads, writes
        self.resident = percents[0] == 100
        self.slots: dict[int, object] = {}
        self.buffers: dict[tuple[int, tuple], TieredRows] = {}

    def put(self, k: int, y: torch.Tensor):
        if self.resident:
            self.slots[k] = y
            return
        key = (k, tuple(y.shape))
        buf = self.buffers.get(key)
        if buf is None:
            for old in [b for kk, b in self.buffers.items() if kk[0] == k]:
                old.free()
            self.buffers = {kk: b for kk, b in self.buffers.items() if kk[0] != k}
            buf = self.buffers[key] = TieredRows(self.tiers, (y.shape[0] * y.shape[1], y.shape[2]), y.dtype,
                                                 self.percents, f"act{k}")
        written = self.writes.submit(buf.write, y.reshape(-1, y.shape[2]))
        self.slots[k] = (buf, y.shape, written)

    def fetch(self, k: int):
        if self.resident:
            return _Ready(self.slots[k])
        buf, shape, written = self.slots[k]
        # the next write to this buffer is submitted after compute has waited for this read
        return self.reads.submit(lambda: buf.read().view(shape), after=written)

    def free(self):
        for buf in self.buffers.values():
            buf.free()
        self.buffers, self.slots = {}, {}


class _Ready:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class Scheduler:
    def __init__(self, layers, weights, tiers: TierSet, policy: Policy, spec, dtype: torch.dtype):
        self.layers, self.weights, self.tiers, self.policy, self.spec = layers, weights, tiers, policy, spec
        self.dtype = dtype
        self.cache_quant = (QuantConfig(policy.compression_bits, policy.compression_group_size)
                            if policy.compress_cache else None)
        self.weight_queue = IOQueue("weights", tiers.device, policy.overlap)
        self.read_queue = IOQueue("reads", tiers.device, policy.overlap)
        self.write_queue = IOQueue("writes", tiers.device, policy.overlap, max_pending=WRITES_IN_FLIGHT)
        # the experts a router picks, read while the layer computes those already there; a queue of
        # their own, so they do not wait behind the next layer's weights
        self.expert_queue = IOQueue("experts", tiers.device, policy.overlap)
        self._cache_writes: dict[tuple[int, int], object] = {}  # (layer, batch) -> its last cache write
        # one decoder call over all batches in decode steps (see above); a GPU keeps batch by batch, whose
        # cache loads overlap the batch before's compute
        self.merge_decode = tiers.device.type == "cpu"
        self.step_seconds: list[float] = []  # host time of each token step of the last block run
        # freed host memory that the next layer steps reuse stays with the process; more goes back
        self.keep_free = max(host_heap.KEEP_RESIDENT_FREE, 2 * max(weights.layer_bytes(j) for j in range(len(layers))))

    def close(self):
        for queue in (self.weight_queue, self.read_queue, self.write_queue, self.expert_queue):
            queue.close()

    def run(self, job: Job, policy: Policy | None = None):
        """Run one block. `policy` may change the block's cache and activation placement, CPU
        attention and sparsity (per bucket of request lengths); weights stay as loaded."""
        policy, spec = policy or self.policy, self.spec
        nb = len(job.batch_sizes)
        cache = None
        if job.num_steps > 1:
            shapes = [(b, job.prompt_len(k) + job.num_steps - 1) for k, b in enumerate(job.batch_sizes)]
            cache = BlockCache(self.tiers, spec.num_layers, shapes, spec.num_kv_heads, spec.head_dim, self.dtype,
                               policy.cache, policy.cpu_attention, self.cache_quant, policy.attn_sparsity,
                               spec.windows(), channel_keys=self.policy.cache_keys == "channel")
        acts = Activations(self.tiers, policy.activations, self.read_queue, self.write_queue)
        self._cache_writes, self.step_seconds = {}, []
        n_layers = len(self.layers)
        tokens = [sum(b * job.prompt_len(k) for k, b in enumerate(job.batch_sizes)), sum(job.batch_sizes)]
        pending_w = self._load_weights(0, tokens[0])
        held = [0]  # layers whose loaded weights count as device memory until released
        prefix = {}  # the shared prefix's hidden states and its keys and values at the current layer
        try:
            for step in range(job.num_steps):
                if step > 0 and job.done():
                    break
                masks, step_start = {}, time.perf_counter()
                for j, layer in enumerate(self.layers):
                    w = pending_w.result()
                    last = j == n_layers - 1 and step == job.num_steps - 1
                    pending_w = None if last else self._load_weights(
                        (j + 1) % n_layers, tokens[0 if step == 0 and j + 1 < n_layers else 1])
                    if not last:
                        held.append((j + 1) % n_layers)
                    if step == 0 and job.prefix_len and layer.kind != "head":
                        self._prefix_layer(job, layer, w, prefix)
                    if step > 0 and nb > 1 and layer.kind == "decoder" and self.merge_decode:
                        self._decode_merged(job, step, j, layer, w, acts, cache, policy.attn_sparsity)
                    else:
                        self._batch_by_batch(job, step, j, layer, w, acts, cache, masks, policy, prefix)
                    del w
                    self.weights.release(held.pop(0))
                    host_heap.give_back(self.keep_free)  # freed memory piling up in malloc's heaps
                self.step_seconds.append(time.perf_counter() - step_start)
            if pending_w is not None:
                pending_w.result()
        finally:
            for queue in (self.write_queue, self.read_queue, self.weight_queue, self.expert_queue):
                queue.drain()
            for j in held:
                self.weights.release(j)
            acts.free()
            if cache is not None:
                cache.free()

    def _fetcher(self, job, step, j, layer, acts, cache):
        decoder_index = j - 1

        def fetch(k):
            if layer.kind == "embed":
                x = _Ready(job.inputs(step, k)[0])
            else:
                x = acts.fetch(k)
            segs = None
            if layer.kind == "decoder" and step > 0:
                t = job.prompt_len(k) + step - 1
                segs = self._cache_read(cache, decoder_index, k, t)
            return x, segs

        return fetch

    def _batch_by_batch(self, job, step, j, layer, w, acts, cache, masks, policy, prefix):
        """Layer j over the block's batches one after the other, each batch's input and cache read while
        the one before computes."""
        nb = len(job.batch_sizes)
        fetch = self._fetcher(job, step, j, layer, acts, cache)
        pending = fetch(0)
        for k in range(nb):
            x, segments = (p.result() if p is not None else None for p in pending)
            if k + 1 < nb:
                pending = fetch(k + 1)
            if layer.kind == "head":
                self._head(job, step, k, layer, x, w)
            else:
                positions = job.inputs(step, k)[1]
                attend = None
                if layer.kind == "decoder":
                    attend = self._attend_fn(job, step, j - 1, k, cache, segments, masks,
                                             policy.attn_sparsity, prefix.get("kv"))
                acts.put(k, layer.forward(x, w, _Context(positions, attend=attend)))
            x = segments = attend = None  # nothing of this batch stays alive into the next

    def _decode_merged(self, job, step, j, layer, w, acts, cache, sparsity):
        """One decode step of decoder layer j over every batch of the block at once: the rows of all
        batches through one call, attention batch by batch, each batch's cache read while the one
        before attends."""
        nb, layer_index = len(job.batch_sizes), j - 1
        inputs = [acts.fetch(k) for k in range(nb)]
        bounds = [0]
        for b in job.batch_sizes:
            bounds.append(bounds[-1] + b)
        rows = [slice(bounds[k], bounds[k + 1]) for k in range(nb)]

        def read(k):
            return self._cache_read(cache, layer_index, k, job.prompt_len(k) + step - 1)

        pending = read(0)

        def attend(q, new_k, new_v, scale=None, softcap=None):
            nonlocal pending
            out = torch.empty_like(q)
            for k in range(nb):
                segments = pending.result()
                pending = read(k + 1) if k + 1 < nb else None
                batch_attend = self._attend_fn(job, step, layer_index, k, cache, segments, {}, sparsity)
                out[rows[k]] = batch_attend(q[rows[k]], new_k[rows[k]], new_v[rows[k]], scale, softcap)
                segments = batch_attend = None  # only this batch's and the next one's cache alive at once
            return out

        x = torch.cat([p.result() for p in inputs])
        positions = torch.cat([job.inputs(step, k)[1] for k in range(nb)])
        inputs = None
        y = layer.forward(x, w, _Context(positions, attend=attend))
        del x
        for k in range(nb):
            acts.put(k, y[rows[k]])

    def _load_weights(self, j: int, tokens: int):
        """Layer j's weights for a step over `tokens` tokens (the block's): through the weights queue,
        or at once when they are views of device memory (a thread hand-off per layer costs more than
        the views)."""
        if self.weights.resident(j):
            return _Ready(self.weights.load(j, self.expert_queue, tokens))
        return self.weight_queue.submit(self.weights.load, j, self.expert_queue, tokens)

    def _cache_read(self, cache, j: int, k: int, t: int):
        """Layer j, batch k's cache up to position t: through the reads queue once its last write is
        done, or at once when the whole cache is device memory (loads are views; nothing to overlap)."""
        if cache.resident:
            return _Ready(cache.load(j, k, t))
        return self.read_queue.submit(cache.load, j, k, t, after=self._cache_writes.get((j, k)))

    def _cache_write(self, cache, fn, j: int, k: int, *args):
        """A write to layer j, batch k's cache (through the writes queue, which keeps them in order)."""
        if cache.resident:
            fn(j, k, *args)
            return
        self._cache_writes[j, k] = self.write_queue.submit(fn, j, k, *args)

    def _prefix_layer(self, job, layer, w, state):
        """Run the block's shared prefix (one row) through a layer, once for all its batches,
        keeping the layer's keys and values for the batches to attend to."""
        ids, positions = job.prefix_inputs()

        def attend(q, k, v, scale=None, softcap=None):  # no sliding layers here: LLM shares no prefix then
            state["kv"] = (k, v)
            return prefill_attention(q, k, v, None, [0], scale=scale, softcap=softcap)

        x = ids if layer.kind == "embed" else state["hidden"]
        state["hidden"] = layer.forward(x, w, _Context(positions, attend=attend))

    def _attend_fn(self, job, step, layer_index, k, cache, segments, masks, sparsity, prefix_kv=None):
        window = self.spec.window(layer_index)
        channel = key_groups.used(self.cache_quant, self.policy.cache_keys == "channel", window)

        def attend(q, new_k, new_v, scale=None, softcap=None):
            if step == 0:
                if (k, window) not in masks:  # sliding and global layers see the same rows differently
                    masks[k, window] = job.prefill_mask(k, window)
                mask = masks[k, window]
                if prefix_kv is not None:  # the rows follow the shared prefix: attend to both
                    b = q.shape[0]
                    keys, values = (torch.cat([p.expand(b, -1, -1, -1), new], dim=2)
                                    for p, new in zip(prefix_kv, (new_k, new_v)))
                    if cache is not None:
                        stored = (pair[0] for pair in prompt_stored_and_seen(keys, values, self.cache_quant, channel))
                        self._cache_write(cache, cache.store_prefill, layer_index, k, *stored)
                    return prefill_attention(q, keys, values, mask, scale=scale, softcap=softcap)
                # attend to what the cache will give back
                (stored_k, seen_k), (stored_v, seen_v) = prompt_stored_and_seen(new_k, new_v, self.cache_quant, channel,
                                                                                  job.pads(k))
                out = prefill_attention(q, seen_k, seen_v, mask, job.pads(k), sparsity, scale, softcap)
                if cache is not None:
                    self._cache_write(cache, cache.store_prefill, layer_index, k, stored_k, stored_v)
                return out
            # a sliding layer's cache is a ring of its window: what it gives back is the window
            t = job.prompt_len(k) + step - 1

            def store(part, rows, k_rows, v_rows):
                self._cache_write(cache, cache.store_token, layer_index, k, part, rows, k_rows, v_rows, t)

            return decode_over_segments(q, new_k, new_v, segments, job.key_valid(step, k), t, cache, layer_index, k,
                                        store, scale, softcap)

        return attend

    def _head(self, job, step, k, layer, x, w):
        select = job.select(step, k)
        total = x.shape[0] * x.shape[1] if select is None else select.shape[0]
        for start in range(0, total, HEAD_CHUNK_ROWS):
            rows = slice(start, min(start + HEAD_CHUNK_ROWS, total))
            chosen = torch.arange(rows.start, rows.stop, device=x.device) if select is None else select[rows]
            logits = layer.forward(x, w, _Context(None, select=chosen))
            job.consume(step, k, rows, logits)
