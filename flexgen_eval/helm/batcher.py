"""Micro-batching for HELM's default executor, which calls the client from `-n` threads with
one request each: a worker thread gathers whatever requests are waiting and runs them as
one batch. While a batch runs, the next one queues up, so batches grow to about `-n`."""
from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable


class MicroBatcher:
    def __init__(self, run_batch: Callable[[list], list], max_batch: int = 256, wait_s: float = 0.01):
        self._run_batch, self._max_batch, self._wait_s = run_batch, max_batch, wait_s
        self._cond = threading.Condition()
        self._pending: list[tuple[object, Future]] = []
        self._worker: threading.Thread | None = None
        self.batch_sizes: list[int] = []  # for logs and tests

    def submit(self, item) -> object:
        """Blocks until `item` has been run as part of some batch; returns its result."""
        future: Future = Future()
        with self._cond:
            self._pending.append((item, future))
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._loop, name="flexgen-helm-batcher", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        return future.result()

    def _loop(self):
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._pending, timeout=5.0):
                    self._worker = None  # idle: exit; the next submit starts a new worker
                    return
                # A short grace period lets threads that are about to submit join this batch.
                self._cond.wait_for(lambda: len(self._pending) >= self._max_batch, timeout=self._wait_s)
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch:]
            self.batch_sizes.append(len(batch))
            try:
                results = self._run_batch([item for item, _ in batch])
                for (_, future), result in zip(batch, results):
                    future.set_result(result)
            except BaseException as e:  # noqa: BLE001 - every waiting thread must hear about it
                if len(batch) == 1:
                    batch[0][1].set_exception(e)
                    continue
                # One bad request must not fail its neighbours: run them one by one.
                for item, future in batch:
                    try:
                        future.set_result(self._run_batch([item])[0])
                    except BaseException as e1:  # noqa: BLE001
                        future.set_exception(e1)
