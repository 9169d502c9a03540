"""Replica monitor: what each server of a database is, and how far behind.

Owns: one dedicated connection per backend, probed every ``probe_interval`` for
``pg_is_in_recovery()``, the replay / receive LSN of standbys and the insert LSN of the
server taking writes; lag in bytes and in seconds; which backend takes writes (following
a promotion); backoff for backends that are down; the periodic read of user functions'
volatility from ``pg_proc``. It publishes an immutable ``ClusterState`` per database,
replaced in one assignment, so readers never see a half-updated picture.
Must not touch: client traffic and pools (the router reads snapshots; nothing here
decides where a statement goes).

Lag in seconds is the age of the oldest writer-LSN sample the replica has not replayed
yet: samples are taken only when the writer's LSN moves, so on an idle, caught-up system
the lag is 0, unlike ``now() - pg_last_xact_replay_timestamp()``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from router.backends import Backend, ServerCredentials
from router.config import TlsSettings
from router.errors import ProxyError
from router.lsn import parse_lsn
from router.server import ServerConnection

log = logging.getLogger("pgrouter.monitor")

PROBE_SQL: Final = (
    "SELECT pg_catalog.pg_is_in_recovery(), "
    "CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() "
    "ELSE pg_catalog.pg_current_wal_insert_lsn() END, "
    "pg_catalog.pg_last_wal_receive_lsn()"
)
VOLATILE_SQL: Final = (
    "SELECT n.nspname, p.proname FROM pg_catalog.pg_proc p "
    "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
    "WHERE p.provolatile = 'v' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
)
SAMPLE_HISTORY: Final = 600.0  # seconds of writer-LSN samples kept for lag-in-seconds


@dataclass(frozen=True, slots=True)
class BackendState:
    backend: Backend
    up: bool = False
    in_recovery: bool | None = None
    replay_lsn: int | None = None  # standbys: pg_last_wal_replay_lsn()
    receive_lsn: int | None = None  # standbys: pg_last_wal_receive_lsn()
    insert_lsn: int | None = None  # the writer: pg_current_wal_insert_lsn()
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    checked_at: float | None = None  # monotonic time of the last successful probe
    error: str | None = None
    failures: int = 0

    @property
    def name(self) -> str:
        return self.backend.name


@dataclass(frozen=True, slots=True)
class ClusterState:
    database: str
    backends: tuple[BackendState, ...]
    writer: str | None  # the backend taking writes now; None when no server does
    writer_lsn: int | None
    taken_at: float

    def get(self, name: str) -> BackendState | None:
        for state in self.backends:
            if state.name == name:
                return state
        return None


class LagClock:
    """Writer-LSN samples, to turn a replay LSN into an age in seconds."""

    def __init__(self, history: float = SAMPLE_HISTORY) -> None:
        self._samples: deque[tuple[float, int]] = deque()
        self._history = history

    def record(self, now: float, lsn: int) -> None:
        if not self._samples or lsn > self._samples[-1][1]:
            self._samples.append((now, lsn))
        while len(self._samples) > 1 and now - self._samples[1][0] > self._history:
            self._samples.popleft()

    def last(self) -> int | None:
        """The newest writer LSN seen."""
        return self._samples[-1][1] if self._samples else None

    def lag_seconds(self, now: float, replayed: int) -> float:
        """Age of the oldest sample beyond ``replayed``; 0 when nothing is outstanding."""
        for taken, lsn in self._samples:
            if lsn > replayed:
                return max(0.0, now - taken)
        return 0.0


def choose_writer(states: tuple[BackendState, ...], previous: str | None) -> str | None:
    """The configured primary while it takes writes; otherwise a promoted replica. When no
    server is seen taking writes (down, or a probe timed out), the previous writer stays:
    writes then fail on connecting, for the clients that send them, with the real cause."""
    writers = [s for s in states if s.up and s.in_recovery is False]
    for state in writers:
        if state.backend.role == "primary":
            if len(writers) > 1:
                log.warning("more than one server accepts writes: %s", [s.name for s in writers])
            return state.name
    return writers[0].name if writers else previous


class Monitor:
    """Probes the backends of one database; ``state`` is the latest snapshot."""

    def __init__(
        self,
        database: str,
        backends: list[Backend],
        credentials: ServerCredentials | None,
        *,
        interval: float,
        timeout: float,
        max_backoff: float,
        tls: TlsSettings,
        ssl_context: ssl.SSLContext | None,
        function_refresh: float = 60.0,
        on_functions: Callable[[frozenset[str]], None] | None = None,
    ) -> None:
        self.database = database
        self.backends = backends
        self.credentials = credentials
        self.interval = interval
        self.timeout = timeout
        self.max_backoff = max_backoff
        self._tls = tls
        self._ssl_context = ssl_context
        self._function_refresh = function_refresh
        self._on_functions = on_functions
        self._functions_at = -1e9
        self._conns: dict[str, ServerConnection] = {}
        self._retry_at: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Task[BackendState]] = {}
        self.clock = LagClock()
        now = time.monotonic()
        configured = next((b.name for b in backends if b.role == "primary"), None)
        self.state = ClusterState(
            database, tuple(BackendState(b) for b in backends), configured, None, now
        )
        self._task: asyncio.Task[None] | None = None
        self.probes = 0

    @property
    def stale_after(self) -> float:
        """A replica not heard from for this long is not eligible for reads."""
        return 2 * self.interval

    def start(self) -> None:
        if self.credentials is None:
            log.warning(
                "database %s: no user for the replica monitor (set monitor.user); "
                "reads stay on the primary",
                self.database,
            )
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for task in self._inflight.values():
            task.cancel()
        self._inflight.clear()
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self.probe_once()
            except Exception:
                log.exception("database %s: probe round failed", self.database)
            next_at += self.interval
            now = loop.time()
            if next_at < now:  # fell behind (a slow probe): skip, don't burst
                next_at = now
            await asyncio.sleep(next_at - now)

    async def probe_once(self) -> ClusterState:
        """Start a probe of every backend due for one, wait up to one interval (the first
        time, up to the probe timeout), publish what is known and return it. A probe still
        running carries over to later rounds, so one silent server never holds back the
        news from the others."""
        now = time.monotonic()
        for backend in self.backends:
            name = backend.name
            if name not in self._inflight and now >= self._retry_at.get(name, 0.0):
                task = asyncio.get_running_loop().create_task(self._probe(backend))
                self._inflight[name] = task
        if self._inflight:
            patience = self.timeout if self.probes == 0 else self.interval
            await asyncio.wait(list(self._inflight.values()), timeout=patience)
        latest = {s.name: s for s in self.state.backends}
        for name, task in list(self._inflight.items()):
            if task.done():
                del self._inflight[name]
                latest[name] = task.result()
        results = tuple(latest[b.name] for b in self.backends)
        now = time.monotonic()
        writer = choose_writer(results, self.state.writer)
        writer_state = latest.get(writer) if writer is not None else None
        writer_lsn = writer_state.insert_lsn if writer_state is not None else None
        if writer_lsn is not None and writer_state is not None and writer_state.up:
            self.clock.record(now, writer_lsn)
        else:  # the writer is down or unknown: it writes nothing new meanwhile
            writer_lsn = self.clock.last()
        published = tuple(self._with_lag(s, writer_lsn, now) for s in results)
        self.state = ClusterState(self.database, published, writer, writer_lsn, now)
        self.probes += 1
        idle_writer = writer is not None and writer not in self._inflight
        if idle_writer and now - self._functions_at > self._function_refresh:
            assert writer is not None
            self._functions_at = now
            await self._read_functions(writer)  # on the probe connection, between probes
        return self.state

    def _with_lag(self, state: BackendState, writer_lsn: int | None, now: float) -> BackendState:
        if not state.up or not state.in_recovery or state.replay_lsn is None:
            return replace(state, lag_bytes=None, lag_seconds=None)
        if writer_lsn is None:
            return replace(state, lag_bytes=None, lag_seconds=None)
        return replace(
            state,
            lag_bytes=max(0, writer_lsn - state.replay_lsn),
            lag_seconds=self.clock.lag_seconds(now, state.replay_lsn),
        )

    async def _probe(self, backend: Backend) -> BackendState:
        previous = self.state.get(backend.name) or BackendState(backend)
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self._connection(backend)
                result = await conn.query(PROBE_SQL)
            if result.error is not None or not result.rows:
                raise ProbeFailed(result.error.message if result.error else "no row")
            in_recovery, position, received = result.rows[0]
        except (ProxyError, ProbeFailed, OSError, TimeoutError) as exc:
            return self._down(backend, previous, time.monotonic(), exc)
        now = time.monotonic()  # heard from now: what freshness is measured against
        self._retry_at.pop(backend.name, None)
        recovering = in_recovery == b"t"
        lsn = parse_lsn(position.decode()) if position else None
        if previous.error is not None or not previous.up:
            role = "standby" if recovering else "accepts writes"
            log.info("%s %s is up (%s)", self.database, backend.label, role)
        return BackendState(
            backend,
            up=True,
            in_recovery=recovering,
            replay_lsn=lsn if recovering else None,
            receive_lsn=parse_lsn(received.decode()) if received else None,
            insert_lsn=None if recovering else lsn,
            checked_at=now,
        )

    def _down(
        self, backend: Backend, previous: BackendState, now: float, exc: BaseException
    ) -> BackendState:
        conn = self._conns.pop(backend.name, None)
        if conn is not None:
            conn.close()
        failures = previous.failures + 1
        backoff = min(self.max_backoff, self.interval * 2 ** min(failures, 16))
        self._retry_at[backend.name] = now + backoff
        if isinstance(exc, TimeoutError):  # a slow answer, not necessarily a dead server
            reason = f"no answer to the probe within {self.timeout:g}s"
        else:
            reason = str(exc) or type(exc).__name__
        if previous.up or previous.failures == 0:
            log.warning("%s %s is down: %s", self.database, backend.label, reason)
        return BackendState(
            backend,
            up=False,
            replay_lsn=previous.replay_lsn,  # a lower bound stays true while it is down
            checked_at=previous.checked_at,
            error=reason,
            failures=failures,
        )

    async def _connection(self, backend: Backend) -> ServerConnection:
        conn = self._conns.get(backend.name)
        if conn is not None and not conn.closed:
            return conn
        assert self.credentials is not None
        conn = await ServerConnection.open(
            backend,
            self.credentials,
            tls=self._tls,
            ssl_context=self._ssl_context,
            timeout=self.timeout,
        )
        self._conns[backend.name] = conn
        return conn

    async def _read_functions(self, writer: str) -> None:
        conn = self._conns.get(writer)
        if conn is None or self._on_functions is None:
            return
        try:
            async with asyncio.timeout(self.timeout * 5):
                result = await conn.query(VOLATILE_SQL)
        except (ProxyError, TimeoutError):
            conn.close()
            return
        if result.error is not None:
            return
        names: set[str] = set()
        for schema, name in result.rows:
            if schema is None or name is None:
                continue
            names.add(name.decode().lower())
            names.add(f"{schema.decode().lower()}.{name.decode().lower()}")
        self._on_functions(frozenset(names))


class ProbeFailed(Exception):
    pass
