"""Attention kernels that the runtime picks by where the rows live."""
import pytest
import torch

from flexgen_core.model import attention
from flexgen_core.model.attention import cpu_decode_attention_rows, decode_attention_rows


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_attention_computes_half_rows_in_fp32_chunks(dtype, monkeypatch):
    """Rows stored in half precision on the CPU are attended in fp32, a few rows at a time (here
    3 rows per chunk, the last chunk short), and give what fp32 attention over the same values gives."""
    gen = torch.Generator().manual_seed(0)
    rows, length, d, groups = 10, 7, 16, 2
    monkeypatch.setattr(attention, "CPU_ATTENTION_CHUNK_BYTES_PER_THREAD", 3 * length * d * 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    cache_k = torch.randn(rows, length + 5, d, generator=gen).to(dtype)  # a cache row holds more positions
    cache_v = torch.randn(rows, length + 5, d, generator=gen).to(dtype)
    k, v = cache_k[:, :length], cache_v[:, :length]  # strided views, as the cache hands them out
    q = torch.randn(rows, groups, d, generator=gen).to(dtype)
    valid = torch.ones(rows, length, dtype=torch.bool)
    valid[::3, :2] = False  # left padding on some rows

    out = cpu_decode_attention_rows(q, k, v, valid)
    expected = decode_attention_rows(q.float(), k.float(), v.float(), valid)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out, expected.to(dtype))  # to the last bit of the half type


def test_cpu_attention_of_fp32_rows_is_the_plain_kernel():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(4, 1, 8, generator=gen), torch.randn(4, 5, 8, generator=gen),
               torch.randn(4, 5, 8, generator=gen))
    valid = torch.ones(4, 5, dtype=torch.bool)
    assert torch.equal(cpu_decode_attention_rows(q, k, v, valid), decode_attention_rows(q, k, v, valid))
