"""Byte sizes as people write them ("16GiB", "200GB", "1.5TB") and back."""
from __future__ import annotations

import re

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(value) -> int:
    """Bytes from an int, or a string such as '16GiB', '200GB', '1.5TB', '512MiB', '1024'.

    Decimal units (KB, MB, GB, TB) are powers of 1000, binary ones (KiB ... TiB) of 1024,
    as the SI/IEC names say; a bare 'G' is read as GB.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must be non-negative, got {value}")
        return value
    if isinstance(value, float):
        if value < 0 or value != value:
            raise ValueError(f"size must be non-negative, got {value}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"not a size: {value!r}")
    m = _PATTERN.match(value)
    if not m:
        raise ValueError(f"not a size: {value!r} (expected e.g. '16GiB', '200GB', '1.5TB' or a byte count)")
    number, unit = m.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown size unit {unit!r} in {value!r} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    return int(round(float(number) * factor))


def format_size(nbytes: float) -> str:
    """Binary units with three significant digits: 1536 -> '1.50 KiB'."""
    n = float(nbytes)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{sign}{n:.0f} B" if unit == "B" else f"{sign}{_three(n)} {unit}"
        n /= 1024
    return f"{sign}{_three(n)} TiB"


def _three(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"
