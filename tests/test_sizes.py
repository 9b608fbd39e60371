import pytest

from flexgen_core.units import format_size, parse_size


@pytest.mark.parametrize("text, expected", [
    ("16GiB", 16 * 2**30), ("200GB", 200 * 10**9), ("1.5TB", 1_500_000_000_000), ("1500GiB", 1500 * 2**30),
    ("512MiB", 512 * 2**20), ("1024", 1024), (" 2 kib ", 2048), ("16gib", 16 * 2**30), ("3G", 3 * 10**9),
    ("0", 0), (".5KB", 500), ("7B", 7),
])
def test_parse_size_units(text, expected):
    assert parse_size(text) == expected


def test_parse_size_passes_ints_through():
    assert parse_size(12345) == 12345


@pytest.mark.parametrize("bad", ["", "GB", "16 XB", "1.5.2GB", "-5GB", "ten GB", None, True, -1, [16]])
def test_parse_size_rejects_bad_input_with_value_error(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_unknown_unit_is_named_in_the_message():
    with pytest.raises(ValueError, match="'XB'"):
        parse_size("16XB")


@pytest.mark.parametrize("nbytes, text", [
    (0, "0 B"), (1023, "1023 B"), (1536, "1.50 KiB"), (16 * 2**30, "16.0 GiB"), (200 * 2**30, "200 GiB"),
    (1_500_000_000_000, "1.36 TiB"),
])
def test_format_size(nbytes, text):
    assert format_size(nbytes) == text


@pytest.mark.parametrize("nbytes", [1, 999, 4096, 10**7, 3 * 2**30 + 12345, 7 * 10**12])
def test_format_then_parse_is_close(nbytes):
    assert parse_size(format_size(nbytes).replace(" ", "")) == pytest.approx(nbytes, rel=0.01)
