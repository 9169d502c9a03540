"""Units: durations and byte sizes as people write them in YAML, and back.

Owns: parsing ``"500ms"``, ``"2s"``, ``"16MB"`` and bare numbers into seconds (float) and
bytes (int); formatting them back for messages and dumps. Pure functions, no imports from
the rest of pgrouter, so ``router/config.py`` can reuse them.
Must not touch: files, sockets, clocks.

Durations: a non-negative number of seconds, or a number with a unit ``us``, ``ms``, ``s``,
``min`` (or ``m``), ``h``, ``d``. Sizes: a non-negative whole number of bytes, or a number
with a unit ``B``, ``kB``/``KiB``, ``MB``/``MiB``, ``GB``/``GiB``, ``TB``/``TiB``; as in
PostgreSQL, ``kB``, ``MB``... are powers of 1024. Units are case-insensitive. Every size
unit ends in ``b`` and no duration unit does, so ``5m`` (minutes) and ``5mb`` (bytes)
cannot be confused.
"""

from __future__ import annotations

import math
import re

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"^\s*{_NUMBER}\s*(us|ms|s|sec|min|m|h|d)?\s*$", re.IGNORECASE)
_SIZE = re.compile(rf"^\s*{_NUMBER}\s*(b|kb|kib|mb|mib|gb|gib|tb|tib)?\s*$", re.IGNORECASE)

_SECONDS_PER_UNIT = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_BYTES_PER_UNIT = {
    "b": 1,
    "kb": 1024,
    "kib": 1024,
    "mb": 1024**2,
    "mib": 1024**2,
    "gb": 1024**3,
    "gib": 1024**3,
    "tb": 1024**4,
    "tib": 1024**4,
}


def is_duration_text(value: str) -> bool:
    """Whether ``value`` is a number followed by a duration unit (``"2s"``, not ``"2"``)."""
    match = _DURATION.match(value)
    return match is not None and match.group(2) is not None


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string such as ``"100ms"``, ``"5s"``, ``"2m"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"a duration must be finite, not {value!r}")
        if value < 0:
            raise ValueError(f"a duration cannot be negative ({value!r})")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            unit = (match.group(2) or "s").lower()
            return float(match.group(1)) * _SECONDS_PER_UNIT[unit]
        if value.strip().startswith("-"):
            raise ValueError(f"a duration cannot be negative ({value!r})")
    raise ValueError(
        f"{value!r} is not a duration: use seconds or a string like '500ms', '2s', '5m'"
    )


def parse_size(value: object) -> int:
    """Bytes from a whole number of bytes or a string such as ``"16MB"``, ``"512kB"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"a size cannot be negative ({value!r})")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            unit = (match.group(2) or "b").lower()
            size = float(match.group(1)) * _BYTES_PER_UNIT[unit]
            if size == int(size):
                return int(size)
            raise ValueError(f"{value!r} is not a whole number of bytes")
        if value.strip().startswith("-"):
            raise ValueError(f"a size cannot be negative ({value!r})")
    raise ValueError(f"{value!r} is not a size: use bytes or a string like '16MB', '512kB'")


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: ``0.5`` -> ``"500ms"``, ``120`` -> ``"2min"``."""
    if seconds == 0:
        return "0s"
    for unit, scale in (("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)):
        if seconds >= scale and (seconds / scale).is_integer():
            return f"{int(seconds / scale)}{unit}"
    milliseconds = seconds * 1000
    if round(milliseconds, 6).is_integer():
        return f"{round(milliseconds)}ms"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """The largest exact unit: ``16777216`` -> ``"16MB"``, ``1000`` -> ``"1000B"``."""
    for unit, scale in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"
