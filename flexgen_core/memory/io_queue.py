"""Ordered background transfers that overlap with compute.

Each queue is one worker thread running tasks in submission order, so a read
submitted after a write to the same buffer sees the write. A task may also wait for
a task of another queue (`after`): reads and writes run on separate queues, so a
write that waits for the device never holds up the reads queued behind it. On CUDA
a queue owns a stream: work it issues is fenced by events instead of a global
synchronize. With overlap off the same tasks run inline, in the same order.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

# Tasks a writes queue may hold before submit waits for the oldest. Each holds its device tensors (a
# batch's new keys and values, or its hidden states) until it runs, and a write runs only once the
# device has produced them: with the host far ahead of the device (all weights resident, a prefill)
# an unbounded queue can hold every layer's keys and values at once (the likely cause of an
# out-of-memory error 1.2 GiB above the plan: OPT-6.7B, batch 8 x 512 tokens, H200 with a 16 GiB
# cap). The cost model counts this many in flight.
WRITES_IN_FLIGHT = 4


class Pending:
    def __init__(self, future: Future, device: torch.device):
        self.future, self.device = future, device

    def result(self):
        value, event = self.future.result()
        if event is not None:  # make compute wait for the copy, not the whole device
            torch.cuda.current_stream(self.device).wait_event(event)
        return value


class IOQueue:
    def __init__(self, name: str, device: torch.device, overlap: bool, max_pending: int | None = None):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"flexgen-{name}") if overlap else None
        self.stream = torch.cuda.Stream(self.device) if (self.cuda and overlap) else None
        self.max_pending = max_pending  # tasks queued or running before submit waits (None: no limit)
        self._inflight: list[Future] = []  # kept so a failed store is reported, not lost

    def submit(self, fn, *args, after: "Pending | None" = None) -> Pending:
        """Run fn(*args) on this queue's thread (and stream); with `after`, not before that task
        (of any queue) is done, device work included."""
        if self.pool is None:
            done: Future = Future()
            done.set_result((fn(*args), None))
            return Pending(done, self.device)
        ready = None
        if self.cuda:  # the task may read tensors the compute stream is still producing
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
            for t in _tensors(args):  # and compute may drop them before this stream is done
                if t.is_cuda:
                    t.record_stream(self.stream)
        self._inflight = [f for f in self._inflight if not f.done() or f.exception() is not None]
        if self.max_pending is not None:
            running = [f for f in self._inflight if not f.done()]
            for oldest in running[: max(0, len(running) - self.max_pending + 1)]:
                oldest.exception()  # wait; a failure is raised by drain(), as for any task
        future = self.pool.submit(self._run, fn, args, ready, after)
        self._inflight.append(future)
        return Pending(future, self.device)

    def _run(self, fn, args, ready, after):
        before = after.future.result()[1] if after is not None else None  # raises what that task raised
        with torch.inference_mode():
            return self._run_on_stream(fn, args, ready, before)

    def _run_on_stream(self, fn, args, ready, before=None):
        if not self.cuda:
            return fn(*args), None
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            self.stream.wait_event(ready)
            if before is not None:
                self.stream.wait_event(before)
            value = fn(*args)
            done = torch.cuda.Event()
            done.record(self.stream)
        for t in _tensors(value):  # keep the allocator from reusing these before compute is done
            if t.is_cuda:
                t.record_stream(torch.cuda.current_stream(self.device))
        return value, done

    def drain(self):
        """Wait for every task, and raise the first error any of them hit."""
        inflight, self._inflight = self._inflight, []
        for future in inflight:
            future.result()

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif hasattr(value, "tensors"):
        yield from value.tensors()
