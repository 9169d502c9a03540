"""The pool's queue of waiting clients: served in order, synchronously, within limits.

A pool is driven with stand-in connections (no sockets): what is tested here is the
bookkeeping of ``enqueue`` / ``release`` / the queue timer, not PostgreSQL.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from router import pool as pool_module
from router.backends import Backend, ServerCredentials
from router.config import PoolSettings, TlsSettings
from router.errors import PoolTimeout, ProxyError
from router.pool import ConnectionBudget, Pool, PoolKey


class _Tracker:
    idle = True


class StandIn:
    """What the pool reads and calls on a server connection."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        self.tx_status = "I"
        self.tracker = _Tracker()
        self.generation = 0
        self.created_at = time.monotonic()
        self.last_used = self.created_at
        self.owner: Any = None

    def unlink(self) -> None:
        self.last_used = time.monotonic()

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return self.name


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test in a fresh event loop (the pool needs a running loop)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


def make_pool(**settings: Any) -> Pool:
    backend = Backend("primary", "primary", "127.0.0.1", 1, "db")
    return Pool(
        PoolKey("db", "app", "primary"),
        backend,
        PoolSettings(mode="transaction", server_reset_query="", **settings),
        credentials=lambda: ServerCredentials("app", password="x"),
        tls=TlsSettings(),
        ssl_context=None,
        budget=ConnectionBudget(0),
        max_message_size=1 << 20,
    )


def give(pool: Pool, server: StandIn) -> None:
    """Put ``server`` in the pool as a connection it opened."""
    pool.budget.count += 1
    pool._checkout(server)  # type: ignore[arg-type]
    pool.release(server, reusable=True, reset=False)  # type: ignore[arg-type]


class Taker:
    """A waiting client: records what it was granted or refused."""

    def __init__(self, pool: Pool, accept: bool = True) -> None:
        self.accept = accept
        self.granted: list[Any] = []
        self.refused: list[ProxyError] = []
        self.waiter = pool.enqueue(self.grant, self.refused.append)

    def grant(self, server: Any) -> bool:
        if self.accept:
            self.granted.append(server)
        return self.accept


@in_loop
async def test_released_connection_goes_to_the_first_waiter_at_once() -> None:
    pool = make_pool(size=1)
    first = StandIn("s1")
    give(pool, first)
    held = pool.take_idle()
    assert held is first
    a, b = Taker(pool), Taker(pool)
    assert a.granted == b.granted == []
    pool.release(first, reusable=True, reset=False)  # type: ignore[arg-type]
    assert a.granted == [first] and b.granted == []  # synchronously, in order
    assert first in pool.active and pool.idle == []
    pool.release(first, reusable=True, reset=False)  # type: ignore[arg-type]
    assert b.granted == [first]
    assert pool.stats.wait_count == 2
    assert pool.waiters == type(pool.waiters)()


@in_loop
async def test_withdrawn_and_declining_waiters_are_skipped_without_losing_the_connection() -> None:
    pool = make_pool(size=1)
    server = StandIn("s1")
    give(pool, server)
    assert pool.take_idle() is server
    gone, declines, takes = Taker(pool), Taker(pool, accept=False), Taker(pool)
    gone.waiter.cancel()
    pool.release(server, reusable=True, reset=False)  # type: ignore[arg-type]
    assert gone.granted == [] and declines.granted == [] and takes.granted == [server]
    assert server in pool.active


@in_loop
async def test_nobody_waiting_parks_the_connection() -> None:
    pool = make_pool(size=1)
    server = StandIn("s1")
    give(pool, server)
    assert pool.idle == [server] and not pool.active


@in_loop
async def test_query_wait_timeout_refuses_the_waiter_with_pool_timeout() -> None:
    pool = make_pool(size=1, query_wait_timeout=0.05)
    server = StandIn("s1")
    give(pool, server)
    assert pool.take_idle() is server
    taker = Taker(pool)
    await asyncio.sleep(0.2)
    assert taker.granted == []
    assert len(taker.refused) == 1 and isinstance(taker.refused[0], PoolTimeout)
    assert "query_wait_timeout" in taker.refused[0].message
    pool.release(server, reusable=True, reset=False)  # type: ignore[arg-type]
    assert pool.idle == [server]  # the timed-out waiter is not served later


@in_loop
async def test_many_waiters_at_once_never_open_more_than_the_pool_size() -> None:
    # Regression: kicks made before an open task ran saw nothing "opening" and each
    # started more connections, so a burst of clients opened past pool.size.
    pool = make_pool(size=3)
    opened: list[StandIn] = []

    async def open_connection(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.01)
        server = StandIn(f"s{len(opened) + 1}")
        opened.append(server)
        return server

    real = pool_module.ServerConnection.open
    pool_module.ServerConnection.open = open_connection  # type: ignore[assignment,method-assign]
    try:
        takers = [Taker(pool) for _ in range(10)]
        assert pool.opening == 3
        await asyncio.sleep(0.1)
    finally:
        pool_module.ServerConnection.open = real  # type: ignore[method-assign]
    assert len(opened) == 3
    assert sum(len(t.granted) for t in takers) == 3
    assert pool.total == 3


@in_loop
async def test_acquire_waits_in_the_same_queue_and_a_cancelled_acquire_passes_it_on() -> None:
    pool = make_pool(size=1)
    server = StandIn("s1")
    give(pool, server)
    assert pool.take_idle() is server
    cancelled = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)
    later = Taker(pool)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    pool.release(server, reusable=True, reset=False)  # type: ignore[arg-type]
    assert later.granted == [server]
