"""Memory sizes as people write them (``"12GiB"``, ``"800 MiB"``) and as the logs print them.

Kept free of torch so that the config table (:mod:`nas_core.config`) can use it.
"""

from __future__ import annotations

import math
import re

__all__ = ["SIZE_PATTERN", "parse_bytes", "format_bytes"]

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
          "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
          "tib": 2**40}
#: JSON Schema pattern of a size written as text (the units are checked by :func:`parse_bytes`)
SIZE_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*[a-zA-Z]*\s*$"
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | float | str) -> int:
    """Bytes of ``value``: a number of bytes, or text like ``"12GiB"``, ``"800 MiB"``,
    ``"1.5GB"`` (units B, KB/MB/GB/TB = powers of 1000, KiB/MiB/GiB/TiB = powers of 1024).
    ValueError (one line, naming the value) otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a memory size: {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0 or not math.isfinite(value):
            raise ValueError(f"not a positive memory size: {value!r}")
        return int(value)
    m = _SIZE.match(str(value))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"not a memory size: {value!r} (e.g. 12GiB, 800MiB, 2000000000)")
    n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise ValueError(f"not a positive memory size: {value!r}")
    return n


def format_bytes(n: float | None) -> str:
    """``1.23 GiB``, ``456 MiB``, ``7.5 MiB``, ``320 KiB``; ``?`` for None."""
    if n is None:
        return "?"
    if abs(n) >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if abs(n) >= 100 * 2**20:
        return f"{n / 2**20:.0f} MiB"
    if abs(n) >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**10:.0f} KiB"
