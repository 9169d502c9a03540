"""Server connection pools: one per (database, user, backend).

Owns: opening server connections within ``size`` and ``max_db_connections``, the LIFO
list of idle connections, the FIFO queue of clients waiting for one (bounded by
``query_wait_timeout``), resetting connections before reuse, retiring them after
``server_idle_timeout`` / ``server_lifetime`` and keeping ``min_size`` open.
Must not touch: client protocol state (the client decides *when* to release; the pool
decides *whether* the connection can be reused).

Waiters are served synchronously, the way PgBouncer hands a released server to the next
client in line: a ``Waiter`` carries a ``grant`` callback (called with the connection,
inside ``release``) and a ``refuse`` callback (called with the error: query_wait_timeout,
or a connection that could not be opened). A waiter that went away is marked settled and
skipped, and ``grant`` returns False when its taker is gone, so the connection goes to
the next in line: none is ever lost with a departed waiter. One timer per pool, armed
for the head of the queue, enforces ``query_wait_timeout`` and ``reserve_timeout``, so
waiting costs no task, future or timer per request. Coroutines wait through ``acquire``,
which wraps a Waiter around a future.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Final

from router.backends import Backend, ServerCredentials
from router.config import PoolSettings, TlsSettings
from router.errors import BackendUnavailable, PoolTimeout, ProxyError
from router.server import ServerConnection
from router.sessionstate import session_effect

log = logging.getLogger("pgrouter.pool")
# A Final alias: compiled code calls it without a module attribute lookup.
monotonic: Final = time.monotonic

Opener = Callable[..., Awaitable[ServerConnection]]  # the signature of ServerConnection.open


@dataclass(frozen=True, slots=True)
class PoolKey:
    database: str
    user: str
    backend: str

    def __str__(self) -> str:
        return f"{self.database}/{self.user}/{self.backend}"


class ConnectionBudget:
    """``max_db_connections``: the cap shared by all users' pools of one database+backend."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.pools: list[Pool] = []

    def available(self) -> bool:
        return self.limit == 0 or self.count < self.limit

    def freed(self) -> None:
        for pool in self.pools:
            pool.kick()

    def reclaim(self, requester: Pool) -> bool:
        """Close the oldest idle connection of another pool, making room for ``requester``
        (its close calls ``freed``, which serves the waiters)."""
        for pool in self.pools:
            if pool is not requester and pool.idle:
                pool.idle.pop(0).close()
                return True
        return False


@dataclass
class PoolStats:
    """Counters since start; times in seconds, traffic in bytes."""

    xact_count: int = 0
    query_count: int = 0
    xact_time: float = 0.0
    query_time: float = 0.0
    received: int = 0
    sent: int = 0
    wait_count: int = 0
    wait_time: float = 0.0
    max_wait: float = 0.0
    connect_failures: int = 0


class Waiter:
    """One request for a connection, queued on a pool; settled exactly once."""

    __slots__ = ("deadline", "grant", "refuse", "reserve_at", "settled", "since")

    def __init__(
        self,
        grant: Callable[[ServerConnection], bool],
        refuse: Callable[[ProxyError], None],
        since: float,
        deadline: float,
        reserve_at: float,
    ) -> None:
        self.grant = grant  # False: the taker is gone, offer the connection to the next
        self.refuse = refuse
        self.since = since  # monotonic
        self.deadline = deadline  # query_wait_timeout (inf: none)
        self.reserve_at = reserve_at  # reserve_timeout (inf: no reserve, or already used)
        self.settled = False

    def done(self) -> bool:
        return self.settled

    def cancel(self) -> None:
        """The taker went away: skip it."""
        self.settled = True


class Pool:
    def __init__(
        self,
        key: PoolKey,
        backend: Backend,
        settings: PoolSettings,
        *,
        credentials: Callable[[], ServerCredentials],
        tls: TlsSettings,
        ssl_context: ssl.SSLContext | None,
        budget: ConnectionBudget,
        max_message_size: int,
    ) -> None:
        self.key = key
        self.backend = backend
        self.settings = settings  # see the property: per-request values copied out
        self.generation = 0
        self._credentials = credentials
        self._tls = tls
        self._ssl_context = ssl_context
        self._max_message_size = max_message_size
        self.budget = budget
        budget.pools.append(self)
        self.idle: list[ServerConnection] = []
        self.active: set[ServerConnection] = set()
        self.opening = 0
        self.waiters: deque[Waiter] = deque()
        self._timer: asyncio.TimerHandle | None = None  # for the queue's next deadline
        self.stats = PoolStats()
        self.last_error: str | None = None
        self.paused = False
        self.retired = False  # dropped from the proxy (its database left the config)
        self.parsed: set[str] = set()  # statements known to parse (see Forwarder)
        self._resumed = asyncio.Event()
        self._resumed.set()
        reset = session_effect(settings.server_reset_query)
        self._reset_clears = (reset.discards_statements, bool(reset.reset_all))
        # How a connection is opened; replaceable (tests open stand-ins with no socket).
        self.open_connection: Opener = ServerConnection.open

    @property
    def settings(self) -> PoolSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: PoolSettings) -> None:
        # The values read per request, as plain attributes: a pydantic model's attribute
        # is a dictionary lookup, the copies are direct reads in compiled code.
        self._settings = settings
        self._size = settings.size
        self._check_delay = (
            settings.server_check_delay if settings.server_check_query else None
        )
        self._wait_timeout = settings.query_wait_timeout
        self._reserve_timeout = settings.reserve_timeout if settings.reserve_size else math.inf
        self._lifetime = settings.server_lifetime

    @property
    def total(self) -> int:
        return len(self.idle) + len(self.active) + self.opening

    def _may_open(self, reserve: bool = False) -> bool:
        limit = self.settings.size + (self.settings.reserve_size if reserve else 0)
        return self.total < limit and self.budget.available()

    # ---------------------------------------------------------------- acquire

    async def acquire(self) -> ServerConnection:
        """A server connection for the caller's exclusive use, or PoolTimeout /
        BackendUnavailable."""
        if self.paused:
            await self._resumed.wait()
        while self.idle:
            server = self.idle.pop()
            if not server.closed and await self._healthy(server):
                return self._checkout(server)
        if not self.waiters and self._may_open():
            return self._checkout(await self._open())
        return await self._wait()

    def take_idle(self) -> ServerConnection | None:
        """An idle connection that needs no check, right now; None means ``acquire``."""
        if self.paused or self.waiters:
            return None
        delay = self._check_delay
        while self.idle:
            server = self.idle.pop()
            if server.closed:
                continue
            if delay is not None and monotonic() - server.last_used >= delay:
                self.idle.append(server)  # due for a check: acquire() runs it
                return None
            return self._checkout(server)
        return None

    def may_queue(self) -> bool:
        """Whether a request may wait in line with ``enqueue`` (no coroutine): the pool is
        not paused and holds no idle connection due for a check (``acquire`` runs those)."""
        return not self.paused and (not self.idle or bool(self.waiters))

    async def _healthy(self, server: ServerConnection) -> bool:
        """Run ``server_check_query`` on a connection idle longer than the check delay."""
        query = self.settings.server_check_query
        if not query or monotonic() - server.last_used < self.settings.server_check_delay:
            return True
        self.opening += 1  # counted as in use while it is tested
        try:
            async with asyncio.timeout(self.settings.server_connect_timeout):
                result = await server.query(query)
        except (ProxyError, TimeoutError):
            server.close()  # silent or broken: never handed out
            return False
        finally:
            self.opening -= 1
        if result.error is not None or server.tx_status != "I":
            log.info("%r failed server_check_query, closing", server)
            server.close()
            return False
        return True

    def enqueue(
        self,
        grant: Callable[[ServerConnection], bool],
        refuse: Callable[[ProxyError], None],
    ) -> Waiter:
        """Queue a request for a connection; ``grant`` or ``refuse`` is called once, later
        or (when a connection is at hand) before this returns. ``cancel()`` withdraws it."""
        now = monotonic()
        timeout = self._wait_timeout
        waiter = Waiter(
            grant,
            refuse,
            now,
            now + timeout if timeout > 0 else math.inf,
            now + self._reserve_timeout,
        )
        self.waiters.append(waiter)
        self.stats.wait_count += 1
        if self._timer is None:
            self._arm(now)
        self.kick()
        return waiter

    async def _wait(self) -> ServerConnection:
        """Wait in the queue like everyone else, as a coroutine."""
        future: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()

        def grant(server: ServerConnection) -> bool:
            if future.done():  # the waiting task was cancelled: not taken
                return False
            future.set_result(server)
            return True

        def refuse(exc: ProxyError) -> None:
            if not future.done():
                future.set_exception(exc)

        waiter = self.enqueue(grant, refuse)
        try:
            return await future
        except asyncio.CancelledError:
            waiter.cancel()
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result(), reusable=True)
            raise

    def _settle(self, waiter: Waiter, now: float) -> None:
        waiter.settled = True
        waited = now - waiter.since
        self.stats.wait_time += waited
        if waited > self.stats.max_wait:
            self.stats.max_wait = waited

    def _arm(self, now: float) -> None:
        """Set the timer for the earliest deadline among the waiters, if any."""
        due = min((min(w.deadline, w.reserve_at) for w in self.waiters if not w.settled),
                  default=math.inf)  # fmt: skip
        if due < math.inf:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, due - now), self._tick)

    def _tick(self) -> None:
        """Expire waiters past query_wait_timeout; open the reserve for those past
        reserve_timeout."""
        self._timer = None
        now = monotonic()
        expired: list[Waiter] = []
        for waiter in self.waiters:
            if waiter.settled:
                continue
            if waiter.deadline <= now:
                expired.append(waiter)
            elif waiter.reserve_at <= now:
                waiter.reserve_at = math.inf
                if self._may_open(reserve=True):
                    log.info("pool %s: using the reserve pool", self.key)
                    self._open_soon(self._open_for_waiter)
        timeout = self.settings.query_wait_timeout
        for waiter in expired:
            self._settle(waiter, now)
            waiter.refuse(
                PoolTimeout(
                    f"query_wait_timeout: no server connection to {self.backend.label} became "
                    f"free within {timeout:g}s",
                    detail=f"pool {self.key} has {self.total} of {self.settings.size} "
                    "connections in use",
                    hint="raise pool.size or query_wait_timeout, or shorten transactions",
                )
            )
        self._forget_done_waiters()
        if self._timer is None:
            self._arm(now)

    def _forget_done_waiters(self) -> None:
        while self.waiters and self.waiters[0].settled:
            self.waiters.popleft()

    def _checkout(self, server: ServerConnection) -> ServerConnection:
        self.active.add(server)
        server.owner = self
        return server

    async def _open(self) -> ServerConnection:
        self.opening += 1
        self.budget.count += 1
        return await self._connect()

    def _open_soon(self, opener: Callable[[], Coroutine[None, None, None]]) -> None:
        """Start ``opener`` (which calls ``_connect``) in a task, counting the connection
        as opening from now: kicks before the task runs must not open more."""
        self.opening += 1
        self.budget.count += 1
        asyncio.get_running_loop().create_task(opener())

    async def _connect(self) -> ServerConnection:
        """Open a connection whose place ``opening`` and the budget already count."""
        try:
            server = await self.open_connection(
                self.backend,
                self._credentials(),
                tls=self._tls,
                ssl_context=self._ssl_context,
                timeout=self.settings.server_connect_timeout,
                max_message_size=self._max_message_size,
                max_prepared=self.settings.max_prepared_statements,
            )
        except BaseException as exc:
            self.budget.count -= 1
            self.stats.connect_failures += 1
            self.last_error = str(exc)
            raise
        finally:
            self.opening -= 1
        server.generation = self.generation
        server.owner = self
        log.debug("opened %r for %s", server, self.key)
        return server

    def kick(self) -> None:
        """Serve waiters: hand them idle connections, or open new ones within limits."""
        self._forget_done_waiters()
        while self.waiters and self.idle:
            server = self.idle.pop()
            if not server.closed:
                self._hand_over(server, monotonic())
        free = self._size - self.total
        if free <= 0 or not self.waiters:
            return
        wanted = sum(not w.settled for w in self.waiters) - self.opening
        for _ in range(min(free, wanted)):
            if not self.budget.available():
                self.budget.reclaim(self)
                break
            self._open_soon(self._open_for_waiter)

    async def _open_for_waiter(self) -> None:
        try:
            server = await self._connect()
        except ProxyError as exc:
            self._fail_first_waiter(exc)
            return
        except Exception as exc:
            self._fail_first_waiter(BackendUnavailable(f"{self.backend.label}: {exc}", lost=False))
            return
        self._checkout(server)
        self.release(server, reusable=True, reset=False)

    def _fail_first_waiter(self, exc: ProxyError) -> None:
        self._forget_done_waiters()
        if self.waiters:
            waiter = self.waiters.popleft()
            self._settle(waiter, monotonic())
            waiter.refuse(exc)

    def _hand_over(self, server: ServerConnection, now: float) -> bool:
        """Give ``server`` to the first waiter that takes it; False when nobody does."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if waiter.settled:
                continue
            self._settle(waiter, now)
            self.active.add(server)
            if waiter.grant(server):
                return True
            self.active.discard(server)
        return False

    # ---------------------------------------------------------------- release

    def release(
        self, server: ServerConnection, *, reusable: bool, reset: bool = True, now: float = 0.0
    ) -> None:
        """Take ``server`` back. Unreusable, retired or expired connections are closed.
        ``now``: the caller's reading of the monotonic clock, when it has one (one reading
        serves the whole release and hand-over, which run within the same callback)."""
        if not now:
            now = monotonic()
        self.active.discard(server)
        server.unlink(now)
        dirty = server.tx_status != "I" or not server.tracker.idle
        if not reusable or dirty or server.closed or not self._fresh(server, now):
            server.close()
            self.kick()
            return
        if reset and self.settings.server_reset_query:
            self.opening += 1  # counted as in use while it resets
            asyncio.get_running_loop().create_task(self._reset(server))
            return
        self._park(server, now)

    async def _reset(self, server: ServerConnection) -> None:
        try:
            result = await server.query(self.settings.server_reset_query)
        except ProxyError:
            result = None
        finally:
            self.opening -= 1
        if result is None or result.error is not None or server.tx_status != "I":
            log.info("%r: reset query failed, closing", server)
            server.close()
            self.kick()
            return
        clears_statements, clears_parameters = self._reset_clears
        if clears_statements:
            server.statements.clear()
        if clears_parameters:
            server.applied.clear()
        server.settings_key = None  # whatever the reset query did, sync the next client
        self._park(server, monotonic())

    def _park(self, server: ServerConnection, now: float) -> None:
        if self._hand_over(server, now):
            return
        self.idle.append(server)
        if not self.budget.available():
            self.budget.freed()  # a sibling pool's waiter may reclaim this connection

    def _fresh(self, server: ServerConnection, now: float) -> bool:
        lifetime = self._lifetime
        return server.generation == self.generation and not (
            lifetime > 0 and now - server.created_at > lifetime
        )

    def server_closed(self, server: ServerConnection) -> None:
        """Called by the connection when its socket closes, whoever closed it."""
        self.active.discard(server)
        if server in self.idle:
            self.idle.remove(server)
        self.budget.count = max(0, self.budget.count - 1)
        self.budget.freed()

    # ---------------------------------------------------------------- janitor

    def maintain(self, now: float) -> None:
        """Close idle connections past their idle timeout or lifetime; keep min_size."""
        idle_timeout = self.settings.server_idle_timeout
        keep: list[ServerConnection] = []
        for server in self.idle:
            expired = idle_timeout > 0 and now - server.last_used > idle_timeout
            surplus = len(keep) >= self.settings.min_size
            if server.closed:
                continue
            if (expired and surplus) or not self._fresh(server, now):
                server.close()
            else:
                keep.append(server)
        self.idle = keep
        missing = self.settings.min_size - self.total
        if missing > 0 and self._credentials().usable():
            for _ in range(missing):
                if not self.budget.available():
                    break
                self._open_soon(self._prefill)

    async def _prefill(self) -> None:
        try:
            server = await self._connect()
        except (ProxyError, OSError) as exc:
            log.info("pool %s: could not open a min_size connection: %s", self.key, exc)
            return
        self._checkout(server)
        self.release(server, reusable=True, reset=False)

    def set_tls(self, tls: TlsSettings, context: ssl.SSLContext | None) -> None:
        self._tls = tls
        self._ssl_context = context

    def pause(self) -> None:
        self.paused = True
        self._resumed.clear()

    def resume(self) -> None:
        self.paused = False
        self._resumed.set()

    def retire_all(self) -> None:
        """After a config change: close idle connections now, active ones on release."""
        self.generation += 1
        for server in self.idle:
            server.close()
        self.idle.clear()

    def close(self) -> None:
        for server in [*self.idle, *self.active]:
            server.close()
        self.idle.clear()
