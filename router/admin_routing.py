"""Admin console reports on routing: SHOW REPLICAS, SHOW ROUTES and SHOW ROUTE FOR, and the
read-only view of each backend that the metrics collector and the dashboard share.

Owns: ``BackendView`` / ``backend_views`` (the monitor's latest snapshot of every backend,
with its eligibility for the default route, its pools' server counts and its load),
``preview`` (the decision a director would take right now, computed without counting it)
and the three handlers.
Must not touch: the director's statistics and hysteresis state (read, never written: an
admin asking "where would this go?" must not change what the metrics say), sockets,
the running classifier's cache and counters (explanations use a private classifier).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from policies.match import RouteRequest, StatementFacts
from policies.model import LagBound
from protocol import frontend as fe
from protocol import sqlstate
from router.admin_commands import AdminError, Context, Table, server_state
from router.classifier import Classifier
from router.director import Session
from router.explain import explain_statement
from router.lsn import InvalidLsn, format_lsn
from router.monitor import BackendState, ClusterState
from router.routing import Decision, choose, ineligible
from router.units import Planner

if TYPE_CHECKING:
    from router.director import Director
    from router.proxy import Proxy

ELIGIBLE = "yes"


@dataclass(frozen=True, slots=True)
class BackendView:
    """One backend of one database as the monitor last saw it, with what depends on it."""

    database: str
    name: str
    host: str
    port: int
    role: str  # configured: primary / replica
    up: bool
    in_recovery: bool | None
    writer: bool  # takes writes now
    replay_lsn: int | None
    receive_lsn: int | None
    insert_lsn: int | None
    lag_bytes: int | None
    lag_seconds: float | None
    probe_age: float | None  # seconds since the last successful probe
    ineligible: str | None  # why it may not serve a default-route read now; None: it may
    sv_active: int
    sv_idle: int
    load: int  # units in flight
    error: str | None


def routing_off(proxy: Proxy, database: str) -> str | None:
    """Why reads of ``database`` never leave the writer, or None when they may."""
    if not proxy.settings.routing.enabled:
        return "routing-disabled"
    if not proxy.settings.databases[database].replicas:
        return "no-replicas-configured"
    if proxy.settings.pool_for(database).mode == "session":
        return "session-pool-mode"
    return None


def lag_excluded(director: Director, bound: LagBound) -> frozenset[str]:
    """Replicas the director's lag hysteresis keeps out for ``bound`` (read only)."""
    return director.lag_excluded(bound)


def suspects(director: Director, now: float) -> frozenset[str]:
    """Replicas kept out between probes after a failed connect (read only)."""
    return director.suspects(now)


def backend_views(proxy: Proxy, now: float) -> list[BackendView]:
    """Every backend of every database, in configuration order; ``now`` is monotonic."""
    bound = proxy.policy.policy.defaults.max_lag
    views: list[BackendView] = []
    for database, director in proxy.directors.items():
        if database not in proxy.settings.databases:
            continue
        state = director.state
        excluded = lag_excluded(director, bound)
        suspect = suspects(director, now)
        off = routing_off(proxy, database)
        for backend_state in state.backends:
            views.append(
                _view(proxy, director, backend_state, state, bound, now, excluded, suspect, off)
            )
    return views


def _view(
    proxy: Proxy,
    director: Director,
    s: BackendState,
    cluster: ClusterState,
    bound: LagBound,
    now: float,
    excluded: frozenset[str],
    suspect: frozenset[str],
    off: str | None,
) -> BackendView:
    backend = s.backend
    why = ineligible(s, bound, None, now, director.monitor.stale_after, s.name in excluded)
    if why is None and s.name in suspect:
        why = "connect-failed"
    if why is None and backend.weight <= 0:
        why = "weight-0"
    if why is None and off is not None:
        why = off
    active = idle = 0
    for pool in proxy.pools.values():
        if pool.key.database == cluster.database and pool.key.backend == s.name:
            active += sum(server_state(server, pool) == "active" for server in pool.active)
            idle += len(pool.idle)
    return BackendView(
        database=cluster.database,
        name=s.name,
        host=backend.host,
        port=backend.port,
        role=backend.role,
        up=s.up,
        in_recovery=s.in_recovery,
        writer=cluster.writer == s.name,
        replay_lsn=s.replay_lsn,
        receive_lsn=s.receive_lsn,
        insert_lsn=s.insert_lsn,
        lag_bytes=s.lag_bytes,
        lag_seconds=s.lag_seconds,
        probe_age=None if s.checked_at is None else max(0.0, now - s.checked_at),
        ineligible=why,
        sv_active=active,
        sv_idle=idle,
        load=director.load.get(s.name, 0),
        error=s.error,
    )


def lsn_text(value: int | None) -> str:
    return "" if value is None else format_lsn(value)


def _yes_no(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "no")


# --------------------------------------------------------------------------- SHOW REPLICAS


REPLICAS_COLUMNS = (
    "database", "backend", "host", "port", "role", "state", "in_recovery", "writer",
    "replay_lsn", "receive_lsn", "insert_lsn", "lag_bytes", "lag_seconds",
    "last_probe_ms_ago", "eligible", "sv_active", "sv_idle", "load", "error",
)  # fmt: skip


def show_replicas(ctx: Context) -> Table:
    """Every backend of every database as the replica monitor last saw it. ``eligible`` is
    ``yes`` or why a read on the default route may not use it now (``down``,
    ``not-standby``, ``no-recent-probe``, ``lag>10s``, ...); ``load`` counts units in
    flight; ``insert_lsn`` is the writer's current WAL position."""
    rows: list[tuple[object, ...]] = []
    for v in backend_views(ctx.proxy, ctx.mono):
        rows.append((
            v.database, v.name, v.host, v.port, v.role, "up" if v.up else "down",
            _yes_no(v.in_recovery), "yes" if v.writer else "no",
            lsn_text(v.replay_lsn), lsn_text(v.receive_lsn), lsn_text(v.insert_lsn),
            v.lag_bytes, None if v.lag_seconds is None else f"{v.lag_seconds:.3f}",
            None if v.probe_age is None else int(v.probe_age * 1000),
            v.ineligible or ELIGIBLE, v.sv_active, v.sv_idle, v.load, v.error or "",
        ))  # fmt: skip
    return Table(REPLICAS_COLUMNS, rows)


# --------------------------------------------------------------------------- SHOW ROUTES


def show_routes(ctx: Context) -> Table:
    """Routing counters per database since start: units per policy rule, per decision
    reason and per backend, then totals: reads sent to the writer for freshness or
    availability (fallbacks), waits for a replica to catch up, and their mean in ms."""
    rows: list[tuple[object, ...]] = []
    for database, director in ctx.proxy.directors.items():
        stats = director.stats
        for kind, counter in (
            ("rule", stats.by_rule),
            ("reason", stats.by_reason),
            ("backend", stats.by_backend),
        ):
            rows += [(database, kind, name, count) for name, count in sorted(counter.items())]
        average = stats.wait_time * 1000 / stats.waits if stats.waits else 0.0
        rows.append((database, "total", "fallbacks", stats.fallbacks))
        rows.append((database, "total", "waits", stats.waits))
        rows.append((database, "total", "avg_wait_ms", f"{average:.1f}"))
    return Table(("database", "kind", "name", "count"), rows)


# --------------------------------------------------------------------------- SHOW ROUTE FOR


def preview(
    director: Director, request: RouteRequest, required_lsn: int | None, now: float
) -> Decision:
    """The decision ``director.decide`` would take now, without counting it or moving
    the lag hysteresis; the replica among equals is a random pick, as for real."""
    state = director.state
    suspect = suspects(director, now)
    if suspect:
        backends = tuple(replace(s, up=False) if s.name in suspect else s for s in state.backends)
        state = replace(state, backends=backends)
    return choose(
        request,
        state,
        required_lsn=required_lsn,
        now=now,
        stale_after=director.monitor.stale_after,
        load=dict(director.load),
        rng=random.Random(),
        primary_reads_weight=director.primary_reads_weight,
        lag_excluded=lag_excluded(director, request.max_lag),
    )


def candidates(director: Director, request: RouteRequest, required: int | None, now: float) -> str:
    """Each standby: eligible, or why not, for this request."""
    excluded = lag_excluded(director, request.max_lag)
    suspect = suspects(director, now)
    state = director.state
    parts = []
    for s in state.backends:
        if s.name == state.writer:
            continue
        why = ineligible(
            s, request.max_lag, required, now, director.monitor.stale_after, s.name in excluded
        )
        if why is None and s.name in suspect:
            why = "connect-failed"
        parts.append(f"{s.name} {why or 'eligible'}")
    return ", ".join(parts) or "(no replicas)"


def explain_live(
    proxy: Proxy, database: str, sql: str, user: str, application_name: str
) -> list[tuple[str, str]]:
    """The offline explanation, then where the statement would go right now."""
    classifier = Classifier(proxy.classifier.catalog, cache_size=16)
    facts = StatementFacts("read", database=database, user=user, application_name=application_name)
    lines = [("database", database), *explain_statement(classifier, proxy.policy, sql, facts)]
    director = proxy.directors[database]
    unit = Planner(classifier, lambda name: None).plan([("Q", fe.Query(sql).encode())])
    session = Session(database, user, application_name, None)
    request = director.request(proxy.policy, unit, session)
    required = director.required_lsn(request, unit, session)
    now = time.monotonic()
    off = routing_off(proxy, database) if request.target != "primary" else None
    if off is not None:
        decision = Decision(director.writer().name, off)
    else:
        decision = preview(director, request, required, now)
    if request.target != dict(lines)["target"]:  # e.g. a statement learned to be a write
        lines.append(("live target", f"{request.target} ({request.reason})"))
    lines.append(("required_lsn", lsn_text(required) or "-"))
    if request.target != "primary":
        lines.append(("candidates", candidates(director, request, required, now)))
    lines.append(("chosen", director.explain(decision)))
    if decision.reason.startswith("replica-stale") and decision.required_lsn is not None:
        best = "none" if decision.best_lsn is None else format_lsn(decision.best_lsn)
        lines.append(("stale", f"replica-stale: needs {format_lsn(decision.required_lsn)}, "
                      f"best {best}"))  # fmt: skip
    if decision.wait:
        waiting = ", ".join(decision.candidates)
        lines.append(("wait", f"up to {decision.wait_timeout:g}s for {waiting}, then the writer"))
    if decision.error is not None:
        lines.append(("error", decision.error))
    if director.monitor.probes == 0:
        lines.append(("note", "the replica monitor has not probed the servers yet"))
    return lines


def show_route_for(ctx: Context, sql: str | None) -> Table:
    """How a statement is classified, which rule matches, and where it would go now (for
    the first configured database, a client with no writes of its own)."""
    if not sql:
        raise AdminError(
            sqlstate.SYNTAX_ERROR,
            "SHOW ROUTE FOR needs a statement",
            hint="e.g. SHOW ROUTE FOR SELECT * FROM orders",
        )
    database = next(iter(ctx.proxy.settings.databases), None)
    if database is None or database not in ctx.proxy.directors:
        raise AdminError(sqlstate.UNDEFINED_OBJECT, "no database is configured")
    try:
        lines = explain_live(ctx.proxy, database, sql, ctx.client.user, ctx.client.application_name)
    except InvalidLsn as exc:
        raise AdminError(sqlstate.INVALID_TEXT_REPRESENTATION, str(exc)) from exc
    return Table(("field", "value"), list(lines))
