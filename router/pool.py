"""Server connection pools: one per (database, user, backend).

Owns: opening server connections within ``size`` and ``max_db_connections``, the LIFO
list of idle connections, the FIFO queue of clients waiting for one (bounded by
``query_wait_timeout``), resetting connections before reuse, retiring them after
``server_idle_timeout`` / ``server_lifetime`` and keeping ``min_size`` open.
Must not touch: client protocol state (the client decides *when* to release; the pool
decides *whether* the connection can be reused).

Waiters are futures. A released connection is handed to the first waiter whose future is
not done, with ``set_result``; a waiter that timed out or went away has a done future
and is skipped, and a waiter that is cancelled after its future received a connection
gives that connection back. So no connection is ever lost with a departed waiter.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from router.backends import Backend, ServerCredentials
from router.config import PoolSettings, TlsSettings
from router.errors import BackendUnavailable, PoolTimeout, ProxyError
from router.server import ServerConnection
from router.sessionstate import session_effect

log = logging.getLogger("pgrouter.pool")


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
        self.settings = settings
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
        self.waiters: deque[asyncio.Future[ServerConnection]] = deque()
        self.stats = PoolStats()
        self.last_error: str | None = None
        self.paused = False
        self.retired = False  # dropped from the proxy (its database left the config)
        self.parsed: set[str] = set()  # statements known to parse (see Forwarder)
        self._resumed = asyncio.Event()
        self._resumed.set()
        reset = session_effect(settings.server_reset_query)
        self._reset_clears = (reset.discards_statements, bool(reset.reset_all))

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
        delay = self.settings.server_check_delay if self.settings.server_check_query else None
        now = time.monotonic()
        while self.idle:
            server = self.idle.pop()
            if server.closed:
                continue
            if delay is not None and now - server.last_used >= delay:
                self.idle.append(server)  # due for a check: acquire() runs it
                return None
            return self._checkout(server)
        return None

    async def _healthy(self, server: ServerConnection) -> bool:
        """Run ``server_check_query`` on a connection idle longer than the check delay."""
        query = self.settings.server_check_query
        if not query or time.monotonic() - server.last_used < self.settings.server_check_delay:
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

    async def _wait(self) -> ServerConnection:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[ServerConnection] = loop.create_future()
        self.waiters.append(waiter)
        timeout = self.settings.query_wait_timeout
        timer = loop.call_later(timeout, self._expire, waiter, timeout) if timeout > 0 else None
        reserve = None
        if self.settings.reserve_size:
            reserve = loop.call_later(self.settings.reserve_timeout, self._use_reserve, waiter)
        started = time.monotonic()
        self.stats.wait_count += 1
        self.kick()
        try:
            server = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(waiter.result(), reusable=True)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if reserve is not None:
                reserve.cancel()
            waited = time.monotonic() - started
            self.stats.wait_time += waited
            self.stats.max_wait = max(self.stats.max_wait, waited)
        return server

    def _expire(self, waiter: asyncio.Future[ServerConnection], timeout: float) -> None:
        if not waiter.done():
            waiter.set_exception(
                PoolTimeout(
                    f"query_wait_timeout: no server connection to {self.backend.label} became "
                    f"free within {timeout:g}s",
                    detail=f"pool {self.key} has {self.total} of {self.settings.size} "
                    "connections in use",
                    hint="raise pool.size or query_wait_timeout, or shorten transactions",
                )
            )
            self._forget_done_waiters()

    def _use_reserve(self, waiter: asyncio.Future[ServerConnection]) -> None:
        """A client waited ``reserve_timeout``: open a connection from the reserve."""
        if not waiter.done() and self._may_open(reserve=True):
            log.info("pool %s: using the reserve pool", self.key)
            asyncio.get_running_loop().create_task(self._open_for_waiter())

    def _forget_done_waiters(self) -> None:
        while self.waiters and self.waiters[0].done():
            self.waiters.popleft()

    def _checkout(self, server: ServerConnection) -> ServerConnection:
        self.active.add(server)
        server.owner = self
        return server

    async def _open(self) -> ServerConnection:
        self.opening += 1
        self.budget.count += 1
        try:
            server = await ServerConnection.open(
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
                self._hand_over(server)
        free = self.settings.size - self.total
        wanted = len([w for w in self.waiters if not w.done()]) - self.opening
        for _ in range(min(free, wanted)):
            if not self.budget.available():
                self.budget.reclaim(self)
                break
            asyncio.get_running_loop().create_task(self._open_for_waiter())

    async def _open_for_waiter(self) -> None:
        try:
            server = await self._open()
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
            self.waiters.popleft().set_exception(exc)

    def _hand_over(self, server: ServerConnection) -> bool:
        """Give ``server`` to the first live waiter; False when nobody waits."""
        self._forget_done_waiters()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.active.add(server)
                waiter.set_result(server)
                return True
        return False

    # ---------------------------------------------------------------- release

    def release(self, server: ServerConnection, *, reusable: bool, reset: bool = True) -> None:
        """Take ``server`` back. Unreusable, retired or expired connections are closed."""
        self.active.discard(server)
        server.unlink()
        dirty = server.tx_status != "I" or not server.tracker.idle
        if not reusable or dirty or server.closed or not self._fresh(server):
            server.close()
            self.kick()
            return
        if reset and self.settings.server_reset_query:
            self.opening += 1  # counted as in use while it resets
            asyncio.get_running_loop().create_task(self._reset(server))
            return
        self._park(server)

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
        self._park(server)

    def _park(self, server: ServerConnection) -> None:
        if self._hand_over(server):
            return
        self.idle.append(server)
        if not self.budget.available():
            self.budget.freed()  # a sibling pool's waiter may reclaim this connection

    def _fresh(self, server: ServerConnection) -> bool:
        lifetime = self.settings.server_lifetime
        return server.generation == self.generation and not (
            lifetime > 0 and time.monotonic() - server.created_at > lifetime
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
            if (expired and surplus) or not self._fresh(server):
                server.close()
            else:
                keep.append(server)
        self.idle = keep
        missing = self.settings.min_size - self.total
        if missing > 0 and self._credentials().usable():
            for _ in range(missing):
                if not self.budget.available():
                    break
                asyncio.get_running_loop().create_task(self._prefill())

    async def _prefill(self) -> None:
        try:
            server = await self._open()
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
