"""Byte sizes as people write them: ``64MiB``, ``256M``, ``1GiB``, ``500MB``, ``1048576``.

``K``/``M``/``G``/``T`` alone are powers of 1024, as GNU ``sort -S`` reads them (so
``--memory-budget 256M`` is 256 MiB); ``KB``/``MB``/``GB``/``TB`` are powers of 1000.
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1000,
    "m": 1 << 20,
    "mb": 1000**2,
    "g": 1 << 30,
    "gb": 1000**3,
    "t": 1 << 40,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in ``text``: K/M/G and KiB/MiB/GiB are powers of 1024, KB/MB/GB of 1000."""
    match = _SIZE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"'{text}' is not a size (examples: 64MiB, 1GiB, 500MB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(size: int) -> str:
    """A short human form: 1.5 GiB, 64.0 MiB, 512 B."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
