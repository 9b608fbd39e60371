"""The CPU tier's page-locked buffers on CUDA (flexgen_core.memory.pinned), with the CUDA calls replaced by
recorders so the pool's rules are checked on any machine; tests/test_tiers.py checks the real thing on
a GPU."""
import pytest
import torch

from flexgen_core.memory.pinned import KEEP_OVER_PEAK, PinnedPool


class FakeCuda:
    def __init__(self, fail=False):
        self.locked: dict[int, int] = {}  # pointer -> bytes
        self.events: list[str] = []
        self.fail = fail

    def lock(self, ptr, nbytes):
        if self.fail:
            raise RuntimeError("cudaHostRegister is not supported here")
        assert ptr % 4096 == 0 and ptr not in self.locked
        self.locked[ptr] = nbytes
        self.events.append("lock")

    def unlock(self, ptr):
        assert ptr in self.locked, "unlocking memory that is not locked"
        del self.locked[ptr]
        self.events.append("unlock")

    def settle(self):
        self.events.append("settle")

    def pool(self):
        return PinnedPool(self.lock, self.unlock, self.settle, fallback=lambda shape, dtype: torch.empty(shape, dtype=dtype))


def test_a_buffer_is_locked_at_exactly_its_size_not_a_power_of_two():
    cuda = FakeCuda()
    pool = cuda.pool()
    t = pool.take((3, 1000, 7), torch.float16)  # 42,000 bytes: torch's allocator would lock 65,536
    assert t.shape == (3, 1000, 7) and t.dtype == torch.float16 and t.is_contiguous()
    assert list(cuda.locked.values()) == [42_000]
    assert pool.locked_bytes == pool.in_use_bytes == 42_000
    t.fill_(1.5)
    assert bool((t == 1.5).all())


def test_a_given_back_buffer_is_reused_after_the_device_settles():
    cuda = FakeCuda()
    pool = cuda.pool()
    a = pool.take((1000,), torch.float32)
    ptr = a.data_ptr()
    pool.give(a)
    assert cuda.events == ["lock"]  # nothing waits at give time
    b = pool.take((1000,), torch.float32)
    assert b.data_ptr() == ptr and cuda.events == ["lock", "settle"]
    c = pool.take((1000,), torch.float32)  # no free block: a new one, nothing to wait for
    assert c.data_ptr() != ptr and cuda.events == ["lock", "settle", "lock"]


def test_a_free_block_serves_a_somewhat_smaller_request_but_not_a_much_smaller_one():
    cuda = FakeCuda()
    pool = cuda.pool()
    a = pool.take((1000,), torch.uint8)
    pool.give(a)
    assert pool.take((900,), torch.uint8).data_ptr() == a.data_ptr()  # within 25%
    pool.give(pool.take((1,), torch.uint8))
    b = pool.take((1000,), torch.uint8)
    pool.give(b)
    assert pool.take((500,), torch.uint8).data_ptr() != b.data_ptr()


def test_what_stays_locked_stays_near_the_most_ever_in_use():
    """Requests of changing sizes (blocks of different prompt lengths) must not pile up locked
    memory: free blocks are unlocked, after the device settles, to stay within 1/8 over the most
    ever in use at once."""
    cuda = FakeCuda()
    pool = cuda.pool()
    in_use = []
    for round_ in range(6):
        size = 1000 * (round_ + 1)
        in_use = [pool.take((size,), torch.uint8) for _ in range(3)]
        assert sum(cuda.locked.values()) == pool.locked_bytes <= pool.high_water * (1 + KEEP_OVER_PEAK)
        for t in in_use:
            pool.give(t)
    assert pool.high_water == 3 * 6000
    assert "unlock" in cuda.events
    first_unlock = cuda.events.index("unlock")
    assert "settle" in cuda.events[:first_unlock]  # copies in flight finish before memory is unlocked
    pool.clear()
    assert cuda.locked == {} and pool.locked_bytes == 0


def test_clear_unlocks_free_blocks_and_keeps_those_in_use():
    cuda = FakeCuda()
    pool = cuda.pool()
    kept = pool.take((10, 10), torch.float32)
    pool.give(pool.take((20, 10), torch.float32))
    pool.clear()
    assert list(cuda.locked.values()) == [400]
    pool.give(kept)
    pool.give(torch.empty(4))  # not the pool's: ignored
    pool.clear()
    assert cuda.locked == {}


def test_without_cudahostregister_buffers_come_from_the_fallback_with_one_warning():
    cuda = FakeCuda(fail=True)
    pool = cuda.pool()
    with pytest.warns(RuntimeWarning, match="page-locking host memory in place failed"):
        a = pool.take((100,), torch.float32)
    b = pool.take((100,), torch.float32)  # no second try, no second warning
    assert a.shape == b.shape == (100,) and pool.disabled and pool.locked_bytes == 0
    pool.give(a)


def test_an_empty_buffer_locks_nothing():
    cuda = FakeCuda()
    pool = cuda.pool()
    assert pool.take((0, 5), torch.float32).shape == (0, 5)
    assert cuda.locked == {}


def test_blocks_still_locked_when_the_pool_is_dropped_are_unlocked():
    cuda = FakeCuda()
    pool = cuda.pool()
    pool.take((64,), torch.uint8)
    pool.give(pool.take((128,), torch.uint8))
    del pool
    import gc

    gc.collect()
    assert cuda.locked == {}


def test_the_runtime_on_pool_buffers_gives_the_same_outputs_and_returns_every_buffer(tiny_opt_dir, tmp_path, monkeypatch):
    """The CPU tier's weights, cache and activations in the pool's own pages (as on CUDA; only the
    locking is recorded instead of done): the same tokens and log-probs as plain host memory, a second
    generate reuses the first one's buffers, and closing the model leaves nothing locked."""
    from flexgen_core import LLM, Policy, SamplingParams
    from flexgen_core.memory.tiers import TierSet

    policy = Policy(weights=(30, 50, 20), cache=(20, 80, 0), activations=(0, 100, 0), cpu_attention=0.5,
                    gpu_batch_size=2, num_gpu_batches=2)
    prompts = [[5, 17, 33, 40], [7, 8, 9], [100, 101, 102, 103, 104], [250, 251]]
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    with LLM.from_pretrained(tiny_opt_dir, policy=policy, offload_dir=str(tmp_path / "plain")) as llm:
        expected = llm.generate(prompts, params)

    cuda, pools = FakeCuda(), []
    real_init = TierSet.__init__

    def with_pool(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.pinned = cuda.pool()
        pools.append(self.pinned)

    monkeypatch.setattr(TierSet, "__init__", with_pool)
    llm = LLM.from_pretrained(tiny_opt_dir, policy=policy, offload_dir=str(tmp_path / "pool"))
    weights_only = pools[0].in_use_bytes
    assert weights_only == llm.memory_stats()["resident"]["cpu"] > 0
    for _ in range(2):
        got = llm.generate(prompts, params)
        for e, g in zip(expected, got):
            assert g.outputs[0].token_ids == e.outputs[0].token_ids
            assert g.outputs[0].logprobs == pytest.approx(e.outputs[0].logprobs, abs=1e-6)
        assert pools[0].in_use_bytes == weights_only  # the run's cache and activations came back
        if _ == 0:
            locks = cuda.events.count("lock")
    assert cuda.events.count("lock") == locks  # the second run reused the first one's buffers
    assert sum(cuda.locked.values()) == pools[0].locked_bytes <= pools[0].high_water * (1 + KEEP_OVER_PEAK)
    llm.close()
    assert cuda.locked == {}
