"""The I/O queues' ordering and back-pressure, on the CPU (threads, no streams)."""
import threading

import pytest
import torch

from flexgen_core.memory.io_queue import IOQueue


@pytest.fixture
def queues():
    made = []

    def make(*args, **kw):
        q = IOQueue(*args, **kw)
        made.append(q)
        return q

    yield make
    for q in made:
        q.close()


def test_a_read_waits_for_the_write_it_depends_on_not_for_others(queues):
    reads, writes = queues("reads", "cpu", True), queues("writes", "cpu", True)
    gate, buf, seen = threading.Event(), torch.zeros(3), []
    blocked = writes.submit(gate.wait)  # a write stuck on the device, as it were
    # a read that depends on nothing runs at once, though a write is stuck
    assert reads.submit(lambda: seen.append("free read") or 1).result() == 1
    written = writes.submit(buf.fill_, 7.0)
    dependent = reads.submit(lambda: buf.clone(), after=written)
    assert not dependent.future.done()
    gate.set()
    assert dependent.result().tolist() == [7.0, 7.0, 7.0]
    assert blocked.result() is True and seen == ["free read"]


def test_a_failed_write_fails_the_read_after_it(queues):
    reads, writes = queues("reads", "cpu", True), queues("writes", "cpu", True)

    def broken():
        raise OSError("disk full")

    written = writes.submit(broken)
    with pytest.raises(OSError, match="disk full"):
        reads.submit(lambda: 1, after=written).result()
    with pytest.raises(OSError, match="disk full"):
        writes.drain()


def test_submit_waits_while_max_pending_tasks_are_queued(queues):
    writes = queues("writes", "cpu", True, max_pending=2)
    gate, third_in = threading.Event(), threading.Event()
    writes.submit(gate.wait)
    writes.submit(lambda: None)

    def submit_third():
        writes.submit(lambda: None)
        third_in.set()

    threading.Thread(target=submit_third, daemon=True).start()
    assert not third_in.wait(0.3)  # two tasks pending: the third submit waits
    gate.set()
    assert third_in.wait(10)
    writes.drain()


def test_inline_queues_run_tasks_in_order_at_once():
    q = IOQueue("inline", "cpu", False, max_pending=1)
    out = []
    first = q.submit(out.append, 1)
    q.submit(out.append, 2, after=first)
    assert out == [1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_a_read_on_another_stream_sees_the_write_it_waits_for(queues):
    """The write copies device -> pinned host asynchronously on its stream; the read, on another
    stream, waits for that copy's event before copying the host memory back."""
    reads, writes = queues("reads", "cuda", True), queues("writes", "cuda", True)
    for value in (3.0, 5.0):
        src = torch.full((1 << 24,), value, device="cuda")  # 64 MB: the copy takes long enough to race
        host = torch.empty(src.shape, pin_memory=True)
        written = writes.submit(lambda h=host, s=src: h.copy_(s, non_blocking=True))
        back = reads.submit(lambda h=host: h.to("cuda", non_blocking=True), after=written)
        assert torch.equal(back.result(), src)
