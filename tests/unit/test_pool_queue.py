"""The pool's queue of waiting clients: served in order, synchronously, within limits.

A pool is driven with connections that never had a socket: what is tested here is the
bookkeeping of ``enqueue`` / ``release`` / the queue timer, not PostgreSQL.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from router.backends import Backend, ServerCredentials
from router.config import PoolSettings, TlsSettings
from router.errors import PoolTimeout, ProxyError
from router.pool import ConnectionBudget, Pool, PoolKey
from router.server import ServerConnection


def stand_in(name: str) -> ServerConnection:
    """A server connection that never had a socket: all the pool looks at."""
    del name  # the tests name their connections for the reader
    return ServerConnection(Backend("primary", "primary", "127.0.0.1", 1, "db"), "app", 1 << 20)


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


def give(pool: Pool, server: ServerConnection) -> None:
    """Put ``server`` in the pool as a connection it opened."""
    pool.budget.count += 1
    pool._checkout(server)
    pool.release(server, reusable=True, reset=False)


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
    first = stand_in("s1")
    give(pool, first)
    held = pool.take_idle()
    assert held is first
    a, b = Taker(pool), Taker(pool)
    assert a.granted == b.granted == []
    pool.release(first, reusable=True, reset=False)
    assert a.granted == [first] and b.granted == []  # synchronously, in order
    assert first in pool.active and pool.idle == []
    pool.release(first, reusable=True, reset=False)
    assert b.granted == [first]
    assert pool.stats.wait_count == 2
    assert pool.waiters == type(pool.waiters)()


@in_loop
async def test_withdrawn_and_declining_waiters_are_skipped_without_losing_the_connection() -> None:
    pool = make_pool(size=1)
    server = stand_in("s1")
    give(pool, server)
    assert pool.take_idle() is server
    gone, declines, takes = Taker(pool), Taker(pool, accept=False), Taker(pool)
    gone.waiter.cancel()
    pool.release(server, reusable=True, reset=False)
    assert gone.granted == [] and declines.granted == [] and takes.granted == [server]
    assert server in pool.active


@in_loop
async def test_nobody_waiting_parks_the_connection() -> None:
    pool = make_pool(size=1)
    server = stand_in("s1")
    give(pool, server)
    assert pool.idle == [server] and not pool.active


@in_loop
async def test_query_wait_timeout_refuses_the_waiter_with_pool_timeout() -> None:
    pool = make_pool(size=1, query_wait_timeout=0.05)
    server = stand_in("s1")
    give(pool, server)
    assert pool.take_idle() is server
    taker = Taker(pool)
    await asyncio.sleep(0.2)
    assert taker.granted == []
    assert len(taker.refused) == 1 and isinstance(taker.refused[0], PoolTimeout)
    assert "query_wait_timeout" in taker.refused[0].message
    pool.release(server, reusable=True, reset=False)
    assert pool.idle == [server]  # the timed-out waiter is not served later


@in_loop
async def test_many_waiters_at_once_never_open_more_than_the_pool_size() -> None:
    # Regression: kicks made before an open task ran saw nothing "opening" and each
    # started more connections, so a burst of clients opened past pool.size.
    pool = make_pool(size=3)
    opened: list[ServerConnection] = []

    async def open_connection(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.01)
        server = stand_in(f"s{len(opened) + 1}")
        opened.append(server)
        return server

    pool.open_connection = open_connection
    takers = [Taker(pool) for _ in range(10)]
    assert pool.opening == 3
    await asyncio.sleep(0.1)
    assert len(opened) == 3
    assert sum(len(t.granted) for t in takers) == 3
    assert pool.total == 3


@in_loop
async def test_acquire_waits_in_the_same_queue_and_a_cancelled_acquire_passes_it_on() -> None:
    pool = make_pool(size=1)
    server = stand_in("s1")
    give(pool, server)
    assert pool.take_idle() is server
    cancelled = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)
    later = Taker(pool)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    pool.release(server, reusable=True, reset=False)
    assert later.granted == [server]
