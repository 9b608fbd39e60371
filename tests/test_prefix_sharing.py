import pytest

from flexgen_core.runtime.prefix_sharing import pack_choices


def test_pack_layout():
    (pack,) = pack_choices([1, 2, 3], [[4, 5], [6], [7, 8, 9]], max_len=100)
    assert pack.tokens == [1, 2, 3, 4, 7, 8]
    assert pack.positions == [0, 1, 2, 3, 3, 4]
    assert pack.segments == [0, 0, 0, 1, 2, 2]  # a one-token choice adds no row tokens
    # context's last token predicts each choice's first token
    assert pack.targets == [(2, 4), (3, 5), (2, 6), (2, 7), (4, 8), (5, 9)]
    assert pack.owners == [0, 0, 1, 2, 2, 2]


def test_choices_that_do_not_fit_together_are_split():
    packs = pack_choices([1, 2, 3], [[4, 5, 6], [7, 8, 9]], max_len=6)
    assert [p.tokens for p in packs] == [[1, 2, 3, 4, 5], [1, 2, 3, 7, 8]]
    with pytest.raises(ValueError, match="exceed the model context"):
        pack_choices([1, 2, 3], [[4, 5, 6, 7, 8]], max_len=6)
