"""Routing decisions: which backend runs a unit, and why. Pure.

Owns: eligibility of each replica for a request (up, a standby, recently probed, within
the route's lag bound with hysteresis, replayed at least the required LSN), the choice
among eligible ones (least outstanding queries, power of two random choices, weighted),
and what to do when none qualifies (``on_stale``).
Must not touch: sockets, timers, SQL (the caller passes a ClusterState snapshot, the
policy's RouteRequest, the required LSN, ``now`` and the load per backend).

Every Decision carries a ``reason``: ``write``, ``transaction``, ``rule:<name>``,
``replica-stale:min_lsn``, ``replica-stale:lag``, ``no-replica:down``, ... It feeds
metrics, ``SHOW ROUTE`` and debug logs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from policies.lag import within
from policies.match import RouteRequest
from policies.model import LagBound
from router.lsn import format_lsn
from router.monitor import BackendState, ClusterState

READMIT_FRACTION: Final = 0.8  # a replica excluded for lag returns below 80% of the bound


@dataclass(slots=True)
class Decision:
    """Made per routed unit: a written-out __init__ that compiles (see director.Unit).
    Treat it as immutable."""

    backend: str | None  # None: no server can take it (see error) or wait for a replica
    reason: str
    replica: bool  # a standby serves it
    fallback: bool  # a read sent to the writer for freshness or availability
    wait: bool  # on_stale is wait: the caller waits for a fresh replica
    error: str | None
    required_lsn: int | None
    best_lsn: int | None
    wait_timeout: float
    candidates: tuple[str, ...]  # for a wait: replicas short only of the LSN, freshest first

    def __init__(
        self,
        backend: str | None,
        reason: str,
        replica: bool = False,
        fallback: bool = False,
        wait: bool = False,
        error: str | None = None,
        required_lsn: int | None = None,
        best_lsn: int | None = None,
        wait_timeout: float = 0.0,
        candidates: tuple[str, ...] = (),
    ) -> None:
        self.backend = backend
        self.reason = reason
        self.replica = replica
        self.fallback = fallback
        self.wait = wait
        self.error = error
        self.required_lsn = required_lsn
        self.best_lsn = best_lsn
        self.wait_timeout = wait_timeout
        self.candidates = candidates


def lag_admits(bound: LagBound, state: BackendState, excluded: bool) -> bool:
    """Within the lag bound; a replica ``excluded`` before must get below 80% of it.
    (policies.lag.within directly, not LagBound.admits: that is interpreted code, and
    this is asked per replica per read.)"""
    limit_bytes, limit_seconds = bound.bytes, bound.seconds
    if excluded:
        if limit_bytes is not None:
            limit_bytes = int(limit_bytes * READMIT_FRACTION)
        if limit_seconds is not None:
            limit_seconds = limit_seconds * READMIT_FRACTION
    return within(limit_bytes, limit_seconds, state.lag_bytes, state.lag_seconds)


def ineligible(
    state: BackendState,
    bound: LagBound,
    required_lsn: int | None,
    now: float,
    stale_after: float,
    lag_excluded: bool = False,
) -> str | None:
    """Why ``state`` may not serve a read now; None when it may."""
    if not state.up:
        return "down"
    if not state.in_recovery:
        return "not-standby"
    if state.checked_at is None or now - state.checked_at > stale_after:
        return "no-recent-probe"
    if not lag_admits(bound, state, lag_excluded):
        return f"lag>{bound}"
    if required_lsn is not None and (state.replay_lsn is None or state.replay_lsn < required_lsn):
        return "stale:min_lsn"
    return None


def pick(
    candidates: list[tuple[str, float]], load: Mapping[str, int], rng: random.Random
) -> str:
    """Power of two choices: two weighted random draws, the one with fewer outstanding
    queries per unit of weight wins; a tie keeps the first draw, so idle replicas share
    the reads in proportion to their weights."""
    if len(candidates) == 1:
        return candidates[0][0]
    total = 0.0
    for _, weight in candidates:
        total += weight
    first = _draw(candidates, total, rng)
    name, weight = candidates[first]
    rest = total - weight
    if rest <= 0:
        return name
    second = _draw(candidates, rest, rng, skip=first)
    other, other_weight = candidates[second]
    if load.get(other, 0) * weight < load.get(name, 0) * other_weight:
        return other
    return name


def _draw(candidates: list[tuple[str, float]], total: float, rng: random.Random,
          skip: int = -1) -> int:  # fmt: skip
    """An index drawn with probability proportional to its weight (``skip`` left out;
    ``total`` is the sum of the others' weights)."""
    point = rng.random() * total
    last = -1
    for index, (_, weight) in enumerate(candidates):
        if index == skip or weight <= 0:
            continue
        last = index
        point -= weight
        if point < 0:
            return index
    return last  # rounding left ``point`` at the very end: the last candidate


def choose(
    request: RouteRequest,
    cluster: ClusterState,
    *,
    required_lsn: int | None,
    now: float,
    stale_after: float,
    load: Mapping[str, int],
    rng: random.Random,
    primary_reads_weight: float = 0.0,
    lag_excluded: frozenset[str] = frozenset(),
) -> Decision:
    writer = cluster.writer
    if request.target == "primary":
        if writer is None:
            return Decision(None, request.reason, error=_no_writer(cluster))
        return Decision(writer, request.reason)
    candidates: list[tuple[str, float]] = []
    why: dict[str, str] = {}
    for state in cluster.backends:
        if state.name == writer:
            continue
        reason = ineligible(
            state, request.max_lag, required_lsn, now, stale_after, state.name in lag_excluded
        )
        if reason is None and state.backend.weight > 0:
            candidates.append((state.name, state.backend.weight))
        elif reason is not None:
            why[state.name] = reason
    writer_weight = 1.0 if request.target == "any" else primary_reads_weight
    if writer is not None and writer_weight > 0 and (candidates or request.target == "any"):
        candidates.append((writer, max(writer_weight, 1e-9)))
    if candidates:
        chosen = pick(candidates, load, rng)
        return Decision(chosen, request.reason, replica=chosen != writer)
    return _none_eligible(request, cluster, why, required_lsn)


def _none_eligible(
    request: RouteRequest,
    cluster: ClusterState,
    why: dict[str, str],
    required_lsn: int | None,
) -> Decision:
    writer = cluster.writer
    best = max(
        (s.replay_lsn for s in cluster.backends if s.name != writer and s.replay_lsn is not None),
        default=None,
    )
    stale = [r for r in why.values() if r.startswith(("stale", "lag"))]
    if not stale:
        reason = "no-replica:" + (",".join(sorted(set(why.values()))) or "none-configured")
        if writer is None:
            return Decision(None, reason, error=_no_writer(cluster))
        return Decision(writer, reason, fallback=True)
    kind = "min_lsn" if any(r.startswith("stale") for r in stale) else "lag"
    reason = f"replica-stale:{kind}"
    detail = _stale_detail(required_lsn if kind == "min_lsn" else None, best, request.max_lag)
    if request.on_stale == "wait" and writer is not None:
        short = [s for s in cluster.backends if why.get(s.name) == "stale:min_lsn"]
        short.sort(key=lambda s: s.replay_lsn or 0, reverse=True)
        return Decision(
            writer,
            reason,
            fallback=True,
            wait=bool(short),
            required_lsn=required_lsn,
            best_lsn=best,
            wait_timeout=request.wait_timeout,
            candidates=tuple(s.name for s in short),
        )
    if request.on_stale == "error" or writer is None:
        return Decision(
            None,
            reason,
            error=f"no replica is fresh enough: {detail}",
            required_lsn=required_lsn,
            best_lsn=best,
        )
    return Decision(writer, reason, fallback=True, required_lsn=required_lsn, best_lsn=best)


def _stale_detail(required: int | None, best: int | None, bound: LagBound) -> str:
    if required is not None:
        have = "none" if best is None else format_lsn(best)
        return f"needs {format_lsn(required)}, best {have}"
    return f"every replica lags more than {bound}"


def _no_writer(cluster: ClusterState) -> str:
    down = [s.backend.label for s in cluster.backends if s.backend.role == "primary"]
    return f"no server accepts writes for database {cluster.database} ({', '.join(down)} is down)"
