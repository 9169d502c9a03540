"""Directing units of work: classification + policy + replica state -> a backend.

Owns, per database: the replica monitor, the number of units in flight per backend (the
load balancer's input), lag hysteresis state, replicas found failing between probes,
statements learned to be writes (a replica answered 25006), and the counters per rule
and per reason shown by ``SHOW ROUTES``.
Must not touch: sockets or client state (the client session asks ``decide`` and reports
``started`` / ``finished``); the decision itself is ``routing.choose``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace
from typing import Final

from policies.match import CompiledPolicy, RouteRequest, StatementFacts
from policies.model import LagBound, Route
from router.backends import Backend
from router.lsn import format_lsn
from router.monitor import BackendState, ClusterState, Monitor
from router.routing import Decision, choose, lag_admits, pick

SUSPECT_FOR: Final = 2.0  # seconds a replica that failed a connect is kept out between probes
_NONE: Final[frozenset[str]] = frozenset()


# Unit and Session are made per routed unit: dataclasses for their fields, equality and
# repr, with a written-out __init__ that compiles (the generated one is interpreted code,
# and a frozen one sets each field through object.__setattr__). Treat them as immutable.


@dataclass(slots=True)
class Unit:
    """What the router knows of one unit of work (a Query, or messages up to Sync)."""

    kind: str  # "read" only when every statement in it may run on a replica
    reason: str  # the classifier's reason for the deciding statement
    tables: frozenset[str]
    functions: frozenset[str]
    tags: frozenset[str]
    hint: str | None  # "primary" / "replica" from a comment or SET pgrouter.route
    min_lsn: int | None  # a token presented with the statement
    fingerprints: tuple[str, ...]  # of its reads: what a replica's 25006 can teach

    def __init__(
        self,
        kind: str,
        reason: str,
        tables: frozenset[str] = _NONE,
        functions: frozenset[str] = _NONE,
        tags: frozenset[str] = _NONE,
        hint: str | None = None,
        min_lsn: int | None = None,
        fingerprints: tuple[str, ...] = (),
    ) -> None:
        self.kind = kind
        self.reason = reason
        self.tables = tables
        self.functions = functions
        self.tags = tags
        self.hint = hint
        self.min_lsn = min_lsn
        self.fingerprints = fingerprints


@dataclass(slots=True)
class Session:
    """The client facts a decision needs."""

    database: str
    user: str
    application_name: str
    client_addr: str | None
    last_write_lsn: int | None
    min_lsn: int | None  # SET pgrouter.min_lsn / startup option
    last_write_at: float | None  # monotonic

    def __init__(
        self,
        database: str,
        user: str,
        application_name: str,
        client_addr: str | None,
        last_write_lsn: int | None = None,
        min_lsn: int | None = None,
        last_write_at: float | None = None,
    ) -> None:
        self.database = database
        self.user = user
        self.application_name = application_name
        self.client_addr = client_addr
        self.last_write_lsn = last_write_lsn
        self.min_lsn = min_lsn
        self.last_write_at = last_write_at


@dataclass
class RouteStats:
    # Plain dicts, not Counters: bumped per unit, and compiled code indexes a dict directly.
    by_rule: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    by_backend: dict[str, int] = field(default_factory=dict)
    fallbacks: int = 0  # reads sent to the writer for freshness or availability
    waits: int = 0
    wait_time: float = 0.0


class Director:
    def __init__(
        self,
        database: str,
        backends: list[Backend],
        monitor: Monitor,
        *,
        primary_reads_weight: float = 0.0,
        sticky_after_write: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.database = database
        self.backends = {b.name: b for b in backends}
        self.monitor = monitor
        self.primary_reads_weight = primary_reads_weight
        self.sticky_after_write = sticky_after_write
        self.load: dict[str, int] = dict.fromkeys(self.backends, 0)  # units in flight
        self.stats = RouteStats()
        self.learned_writes: set[str] = set()
        self._suspect: dict[str, float] = {}
        self._lag_excluded: set[tuple[str, LagBound]] = set()
        # The lag gate, evaluated once per monitor snapshot and bound (hysteresis moves
        # with observations, not with the number of reads): (state, bound) -> excluded.
        self._gate: dict[int, tuple[ClusterState, frozenset[str], LagBound]] = {}
        self._rng = rng or random.Random()

    # ---------------------------------------------------------------- state

    @property
    def state(self) -> ClusterState:
        return self.monitor.state

    def writer(self) -> Backend:
        """The backend taking writes; the configured primary until the monitor knows."""
        name = self.state.writer
        return self.backends[name] if name is not None else self.backends["primary"]

    def login_backend(self) -> Backend:
        """Where a new client's first connection goes: the writer, else any live server,
        so reads go on while the primary is down."""
        state = self.state
        writer = state.get(state.writer) if state.writer is not None else None
        if self.monitor.probes == 0 or writer is None or writer.up:
            return self.writer()
        for backend_state in state.backends:
            if backend_state.up:
                return backend_state.backend
        return self.writer()

    def lag_excluded(self, bound: LagBound) -> frozenset[str]:
        """Replicas currently kept out by the lag hysteresis for ``bound``."""
        return frozenset(name for name, b in self._lag_excluded if b == bound)

    def suspects(self, now: float) -> frozenset[str]:
        """Replicas kept out after a failed connect, until ``now``'s next good probe."""
        if not self._suspect:
            return _NONE
        return frozenset(name for name, until in self._suspect.items() if until > now)

    def suspect(self, name: str) -> None:
        """A connect to ``name`` failed: keep reads off it until the next good probe."""
        self._suspect[name] = time.monotonic() + SUSPECT_FOR

    # ---------------------------------------------------------------- decisions

    def facts(self, unit: Unit, session: Session) -> StatementFacts:
        return StatementFacts(
            kind=unit.kind,
            tables=unit.tables,
            functions=unit.functions,
            tags=unit.tags,
            database=session.database,
            user=session.user,
            application_name=session.application_name,
            client_addr=session.client_addr,
        )

    def request(self, policy: CompiledPolicy, unit: Unit, session: Session) -> RouteRequest:
        """The policy's answer, with hints and stickiness applied."""
        learned = self.learned_writes
        kind = "write" if learned and not learned.isdisjoint(unit.fingerprints) else unit.kind
        if kind != unit.kind:
            unit = Unit(kind, "learned-write", unit.tables, unit.functions, unit.tags, unit.hint)
        if policy.needs_facts:
            request = policy.decide(self.facts(unit, session))
        else:  # the default policy, or rules with no conditions: nothing to match on
            request = policy.decide_kind(kind)
        if request.target == "primary":
            return request
        if unit.hint == "primary":
            return _retarget(request, "primary", "hint:primary")
        if unit.hint == "replica":
            return _retarget(request, "replica", "hint:replica")
        sticky = self.sticky_after_write or policy.policy.defaults.sticky_after_write
        written = session.last_write_at
        if sticky > 0 and written is not None and time.monotonic() - written < sticky:
            return _retarget(request, "primary", "sticky-after-write")
        return request

    def required_lsn(self, request: RouteRequest, unit: Unit, session: Session) -> int | None:
        if request.consistency == "eventual":
            return unit.min_lsn
        candidates = [session.last_write_lsn, session.min_lsn, unit.min_lsn]
        if request.consistency == "strong":
            candidates.append(self.state.writer_lsn)
        known = [lsn for lsn in candidates if lsn is not None]
        return max(known) if known else None

    def decide(self, request: RouteRequest, required_lsn: int | None) -> Decision:
        now = time.monotonic()
        state = self.state
        # By the bound's identity (a LagBound's hash and equality are interpreted code);
        # the entry keeps the bound itself, so a reused id never matches another bound.
        bound = request.max_lag
        gate = self._gate.get(id(bound))
        if gate is not None and gate[0] is state and gate[2] is bound:
            excluded = gate[1]
        else:
            excluded = self._update_lag_gate(bound, state)
            if len(self._gate) > 64:  # bounds come from the policy: a handful
                self._gate.clear()
            self._gate[id(bound)] = (state, excluded, bound)
        suspects = self.suspects(now)
        if suspects:
            state = ClusterState(
                state.database,
                tuple(s if s.name not in suspects else _as_down(s) for s in state.backends),
                state.writer,
                state.writer_lsn,
                state.taken_at,
            )
        decision = choose(
            request,
            state,
            required_lsn=required_lsn,
            now=now,
            stale_after=self.monitor.stale_after,
            load=self.load,
            rng=self._rng,
            primary_reads_weight=self.primary_reads_weight,
            lag_excluded=excluded,
        )
        stats = self.stats
        rule = request.rule or "(default)"
        stats.by_rule[rule] = stats.by_rule.get(rule, 0) + 1
        stats.by_reason[decision.reason] = stats.by_reason.get(decision.reason, 0) + 1
        if decision.fallback:
            self.stats.fallbacks += 1
        return decision

    def _update_lag_gate(self, bound: LagBound, state: ClusterState) -> frozenset[str]:
        """Hysteresis: track which replicas are out for this bound; return their names."""
        out = set()
        for backend in state.backends:
            key = (backend.name, bound)
            was_out = key in self._lag_excluded
            if backend.up and backend.in_recovery and not lag_admits(bound, backend, was_out):
                self._lag_excluded.add(key)
                out.add(backend.name)
            else:
                self._lag_excluded.discard(key)
        return frozenset(out)

    def wait_candidate(self, decision: Decision) -> str:
        """Among the freshest replicas a wait may use, the least loaded (weighted)."""
        state = self.state
        replay = {
            name: (state.get(name) or _UNKNOWN).replay_lsn or 0 for name in decision.candidates
        }
        best = max(replay.values())
        names = [(n, self.backends[n].weight or 1.0) for n, lsn in replay.items() if lsn == best]
        return pick(names, self.load, self._rng)

    def waited(self, seconds: float, *, caught_up: bool) -> None:
        self.stats.waits += 1
        self.stats.wait_time += seconds
        if caught_up:
            reasons = self.stats.by_reason
            reasons["waited-for-replica"] = reasons.get("waited-for-replica", 0) + 1

    def started(self, backend: str) -> None:
        load = self.load
        load[backend] = load.get(backend, 0) + 1
        counts = self.stats.by_backend
        counts[backend] = counts.get(backend, 0) + 1

    def finished(self, backend: str) -> None:
        load = self.load
        load[backend] = load.get(backend, 0) - 1

    def explain(self, decision: Decision) -> str:
        where = decision.backend or "-"
        text = f"{where} ({decision.reason})"
        if decision.required_lsn is not None:
            best = "none" if decision.best_lsn is None else format_lsn(decision.best_lsn)
            text += f" needs {format_lsn(decision.required_lsn)}, best {best}"
        return text


def _retarget(request: RouteRequest, target: Route, reason: str) -> RouteRequest:
    return RouteRequest(
        target,
        request.max_lag,
        request.consistency,
        request.on_stale,
        request.wait_timeout,
        request.rule,
        reason,
    )


_UNKNOWN: Final = BackendState(Backend("?", "replica", "", 0, ""))


def _as_down(state: BackendState) -> BackendState:
    return replace(state, up=False)
