"""The replication-lag test: whether a replica's lag is within a limit.

Owns: ``within``, the one place that says what a lag limit admits (an unset limit is not
checked; an unknown lag is never within a set one). ``LagBound.admits`` and the router's
per-read check (router/routing.py) both ask it. Kept apart from the pydantic model so it
is compiled (pgrouter_native): the router asks per replica per read.
Must not touch: policies' schema (``model.py``), ``router/``.
"""

from __future__ import annotations


def within(
    limit_bytes: int | None,
    limit_seconds: float | None,
    lag_bytes: int | None,
    lag_seconds: float | None,
) -> bool:
    """Whether a lag of ``lag_bytes`` / ``lag_seconds`` is within the limits; a limit
    that is ``None`` is not checked, and an unknown lag is never within a set limit."""
    if limit_bytes is not None and (lag_bytes is None or lag_bytes > limit_bytes):
        return False
    return limit_seconds is None or (lag_seconds is not None and lag_seconds <= limit_seconds)
