import os

import pytest
import torch

from flexgen_core.memory.tiers import TieredRows, TierSet, split_rows


@pytest.mark.parametrize("rows, percents, expected", [
    (10, (30, 50, 20), [3, 5, 2]),
    (10, (100, 0, 0), [10, 0, 0]),
    (7, (0, 0, 100), [0, 0, 7]),
    (3, (33.3, 33.3, 33.4), [1, 1, 1]),
    (1, (30, 50, 20), [0, 1, 0]),
])
def test_split_rows_never_loses_a_row(rows, percents, expected):
    assert split_rows(rows, percents) == expected
    assert sum(split_rows(rows, percents)) == rows


def test_tiered_rows_round_trip_and_accounting(tmp_path):
    tiers = TierSet(torch.device("cpu"), str(tmp_path))
    value = torch.randn(10, 6, 4)
    buf = TieredRows(tiers, value.shape, value.dtype, (30, 50, 20), "t")
    assert [buf.rows_on(t) for t in ("gpu", "cpu", "disk")] == [3, 5, 2]
    buf.write(value)
    assert torch.equal(buf.read(), value)
    assert torch.equal(buf.read(slice(1, 3)), value[:, 1:3])
    buf.write(value[:, 2:3] * 0 + 7, slice(2, 3))
    assert (buf.read()[:, 2] == 7).all() and torch.equal(buf.read()[:, 3:], value[:, 3:])
    stats = tiers.stats.as_dict()
    row_bytes = 6 * 4 * 4
    assert stats["resident"] == {"gpu": 3 * row_bytes, "cpu": 5 * row_bytes, "disk": 2 * row_bytes}
    assert stats["read"]["disk"] >= 2 * row_bytes and stats["written"]["disk"] >= 2 * row_bytes
    buf.free()
    assert tiers.stats.as_dict()["resident"]["disk"] == 0
    assert tiers.stats.as_dict()["peak"]["disk"] == 2 * row_bytes
    tiers.close()


def test_truncated_offload_file_is_reported(tmp_path):
    tiers = TierSet(torch.device("cpu"), str(tmp_path))
    buf = TieredRows(tiers, (8,), torch.float32, (0, 0, 100), "w")
    buf.write(torch.arange(8.0))
    path = buf.parts[0][3].path
    with open(path, "r+b") as f:
        f.truncate(8)
    with pytest.raises(ValueError, match="truncated"):
        buf.read()
    tiers.close()


@pytest.mark.parametrize("percents", [(100, 0, 0), (30, 30, 40), (0, 0, 100), (10, 85, 5), (0, 100, 0)])
def test_gather_reads_spans_from_every_tier(tmp_path, percents):
    """Table rows looked up where they live, including rows cut by a tier boundary; only their
    bytes are read."""
    tiers = TierSet(torch.device("cpu"), str(tmp_path))
    data = torch.randint(0, 255, (1000,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    buf = TieredRows(tiers, data.shape, data.dtype, percents, "table")
    buf.write(data)
    for offset, span in ((0, 10), (16, 24), (100, 7)):
        rows = (1000 - offset) // span
        index = torch.tensor([0, rows - 1, 3, 3, rows // 2, rows // 3])
        before = sum(tiers.stats.as_dict()["read"].values())
        got = buf.gather(offset, span, index)
        assert sum(tiers.stats.as_dict()["read"].values()) - before == len(index) * span
        want = torch.stack([data[offset + i * span: offset + (i + 1) * span] for i in index.tolist()])
        assert torch.equal(got, want)
    for stop in (1, 300, 999, 1000):
        assert torch.equal(buf.read(stop=stop), data[:stop])
    tiers.close()


def test_files_are_removed_at_exit_without_close(tmp_path):
    """lm_eval and helm-run exit without closing the model: its temporary files still go."""
    import subprocess
    import sys

    code = ("import sys; from flexgen_core.memory.tiers import TierSet; "
            "own = TierSet('cpu'); given = TierSet('cpu', sys.argv[1]); "
            "print(own.offload_dir); print(given.scratch_dir)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    own_dir, scratch_dir = out.stdout.split()
    assert not os.path.exists(own_dir) and not os.path.exists(scratch_dir)
    assert os.path.isdir(tmp_path)  # a directory the caller named stays


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_strided_device_to_host_writes_go_through_pinned_staging():
    """Some positions of every host cache row, written from the GPU: the values land where a plain
    strided copy would put them, and nothing else changes."""
    from flexgen_core.memory.tiers import staged_to_host

    host = torch.zeros(6, 10, 4, dtype=torch.float16).pin_memory()
    src = torch.randn(6, 3, 4, device="cuda").half()
    staged_to_host(host[:, 2:5], src)
    expected = torch.zeros(6, 10, 4, dtype=torch.float16)
    expected[:, 2:5] = src.cpu()
    assert torch.equal(host, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prefix_reads_of_host_rows_reach_the_gpu_whole_or_gathered(tmp_path):
    """The first positions of every host row, read to the GPU: whole rows are moved when they are at
    most 4x the prefix, the prefix is gathered otherwise; the values are the same either way."""
    tiers = TierSet(torch.device("cuda"), str(tmp_path))
    buf = TieredRows(tiers, (6, 10, 4), torch.float16, (0, 100, 0), "k")
    value = torch.randn(6, 10, 4).half()
    buf.write(value.cuda())
    for t in (2, 5, 10):  # gathered (10 > 4 x 2), whole rows, everything
        got = buf.read_part(0, slice(0, t), to="gpu")
        assert got.is_cuda and torch.equal(got.cpu(), value[:, :t])
    tiers.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_host_rows_on_cuda_are_page_locked_at_their_size_and_reused(tmp_path):
    """The CPU tier's buffers on CUDA: page-locked (so copies run at link speed and asynchronously),
    locked at exactly their size (torch's pinned allocator would lock 64 KiB for these 42,000
    bytes), round trips intact, a freed buffer's memory serves the next of its size, and closing
    unlocks it."""
    tiers = TierSet(torch.device("cuda"), str(tmp_path))
    shape = (6, 1000, 7)
    buf = TieredRows(tiers, shape, torch.float16, (0, 100, 0), "k")
    host = buf.parts[0][3]
    assert host.is_pinned() and tiers.pinned.locked_bytes == 42_000 and tiers.pinned.disabled is None
    value = torch.randn(shape, device="cuda").half()
    buf.write(value)
    assert torch.equal(buf.read(), value) and torch.equal(buf.read(slice(0, 3)), value[:, :3])
    ptr = host.data_ptr()
    buf.free()
    again = TieredRows(tiers, shape, torch.float16, (0, 100, 0), "k")
    assert again.parts[0][3].data_ptr() == ptr and tiers.pinned.locked_bytes == 42_000
    again.free()
    tiers.close()
    assert tiers.pinned.locked_bytes == 0


def test_whole_rows_are_moved_only_for_a_prefix_worth_it():
    """The rule behind reading host cache rows to a GPU: a prefix of positions [0, t) of contiguous
    rows moves whole rows when they hold at most 4x the positions asked for."""
    from flexgen_core.memory.tiers import _row_prefix_worth_whole_rows as whole

    rows = torch.empty(3, 10, 4)
    assert whole(slice(0, 5), rows) and whole(slice(None, 3), rows)
    assert not whole(slice(0, 2), rows)  # 10 positions for 2: gather them
    assert not whole(slice(1, 5), rows) and not whole(slice(0, 8, 2), rows)  # not a prefix
    assert not whole(slice(0, 10), rows) and not whole(None, rows)  # already everything
    assert not whole(slice(0, 5), rows[:, :8])  # rows that are not contiguous


@pytest.mark.parametrize("positions, whole_rows", [(slice(0, 9), True), (slice(0, 2), False), (slice(3, 5), False),
                                                   (slice(0, 12), True), (slice(0, 0), False)])
def test_disk_rows_read_at_some_positions(tmp_path, positions, whole_rows):
    """A disk part's positions (a cache row's first ones) read with pread, as whole rows when the
    positions are most of a row, else each row's run; the bytes counted are the bytes read."""
    tiers = TierSet(torch.device("cpu"), str(tmp_path))
    value = torch.randn(10, 12, 3)
    buf = TieredRows(tiers, value.shape, value.dtype, (0, 0, 100), "kv")
    buf.write(value)
    before = tiers.stats.as_dict()["read"]["disk"]
    got = buf.read_part(0, positions, to="cpu", rows=slice(2, 7))
    assert got.is_contiguous() and torch.equal(got, value[2:7, positions])
    wanted = 12 if whole_rows else len(range(*positions.indices(12)))
    assert tiers.stats.as_dict()["read"]["disk"] - before == 5 * wanted * 3 * 4
    tiers.close()


def test_large_disk_reads_in_pieces_fill_every_byte(tmp_path, monkeypatch):
    """A read cut into pieces read at once (several in flight) lands every byte where it belongs."""
    import flexgen_core.memory.tiers as tiers_module
    monkeypatch.setattr(tiers_module, "READ_PIECE", 1000)  # 4 KiB rows: pieces cut inside rows
    tiers = TierSet(torch.device("cpu"), str(tmp_path))
    value = torch.randn(33, 1024)
    buf = TieredRows(tiers, value.shape, value.dtype, (0, 0, 100), "w")
    buf.write(value)
    assert torch.equal(buf.read(), value)
    assert torch.equal(buf.read_part(0, slice(0, 100), to="cpu", rows=slice(1, 30)), value[1:30, :100])
    tiers.close()


def test_read_each_gives_what_read_gives_with_the_disk_reads_together(tmp_path, monkeypatch):
    import flexgen_core.memory.tiers as tiers_module
    monkeypatch.setattr(tiers_module, "READ_PIECE", 4096)  # several pieces per buffer
    tiers = TierSet(torch.device("cpu"), str(tmp_path))
    values = [torch.randint(0, 255, (n,), dtype=torch.uint8) for n in (10000, 5000, 7, 12288)]
    buffers = [TieredRows(tiers, v.shape, v.dtype, p, f"e{i}")
               for i, (v, p) in enumerate(zip(values, [(0, 0, 100), (100, 0, 0), (0, 0, 100), (0, 100, 0)]))]
    for b, v in zip(buffers, values):
        b.write(v)
    before = tiers.stats.as_dict()["read"]["disk"]
    got = tiers_module.read_each(buffers)
    assert all(torch.equal(g, v) for g, v in zip(got, values))
    assert tiers.stats.as_dict()["read"]["disk"] - before == 10000 + 7
    tiers.close()


@pytest.mark.parametrize("index, rows", [(slice(0, 40), None), (slice(8, 48), slice(2, 5)), (None, slice(1, 4))])
def test_large_writes_to_disk_rows_go_around_the_memory_map(tmp_path, monkeypatch, index, rows):
    """A write of at least WRITE_AROUND_MIN bytes a row into part of a disk buffer (a prefill's cache
    positions) is written with pwrite and dropped from the page cache, never through the memory map,
    whose pages would stay in the process; a token's few bytes a row still go through the map."""
    from flexgen_core.memory import tiers as tiers_module

    monkeypatch.setattr(tiers_module, "WRITE_AROUND_MIN", 40 * 3 * 4)
    tiers = TierSet(torch.device("cpu"), str(tmp_path))
    value = torch.randn(6, 48, 3)
    buf = TieredRows(tiers, value.shape, value.dtype, (0, 0, 100), "kv")
    disk = buf.parts[0][3]
    lo, hi = (0, 6) if rows is None else (rows.start, rows.stop)
    positions = index or slice(None)
    buf.write_part(0, value[:, positions], index, rows)
    assert disk._map is None  # the file was never mapped
    expected = torch.zeros_like(value)
    expected[lo:hi, positions] = value[lo:hi, positions]
    assert torch.equal(buf.read(), expected)
    buf.write(value[:, 47:48] + 1, slice(47, 48))  # one position: through the map
    assert disk._map is not None
    expected[:, 47:48] = value[:, 47:48] + 1
    assert torch.equal(buf.read(), expected)
    tiers.close()
