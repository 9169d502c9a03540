"""asyncpg through the proxy: its statement cache (named prepared statements), a pool
under concurrent load, explicit prepared statements, cancellation and LISTEN."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import asyncpg
import pytest
from harness import ProxyProcess

from e2e.util import (
    asyncpg_params,
    connect,
    primary_conn,
    proxy_fixtures,
    running,
    scalar,
    unique_name,
)
from router.localcluster import LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

POOL_MODES = ["session", "transaction"]
module_proxy, proxy = proxy_fixtures(POOL_MODES)

T = TypeVar("T")
TASKS = 20


def run(coro: Coroutine[Any, Any, T], timeout: float = 45) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@pytest.fixture
def table(proxy: ProxyProcess) -> Iterator[str]:
    name = unique_name("apg")
    with connect(proxy) as conn:
        conn.execute(
            f"CREATE TABLE {name} (id bigserial PRIMARY KEY, task int NOT NULL, "
            "kind text NOT NULL, n int NOT NULL)"
        )
    yield name
    with connect(proxy) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def test_statement_cache_reuses_named_statements(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(**asyncpg_params(proxy))
        try:
            query = "SELECT $1::int + $2::int, $3::text"
            for i in range(25):
                assert tuple(await conn.fetchrow(query, i, 1, f"t{i}")) == (i + 1, f"t{i}")
            # asyncpg prepared it once, under a name, and reuses it. (In a transaction with a
            # use of the statement, so the check sees that server connection in any pool mode.)
            async with conn.transaction():
                assert tuple(await conn.fetchrow(query, 99, 1, "last")) == (100, "last")
                names = await conn.fetch(
                    "SELECT name FROM pg_prepared_statements WHERE statement = $1", query
                )
            assert len(names) == 1
            assert await conn.fetchval("SELECT $1::numeric * 2", 1.25) == 2.5
            types = await conn.fetchrow(
                "SELECT $1::int[], $2::jsonb::text, $3::bytea", [1, 2], '{"a": 1}', b"\x00\xff"
            )
            assert tuple(types) == ([1, 2], '{"a": 1}', b"\x00\xff")
        finally:
            await conn.close()

    run(main())


def test_pool_with_concurrent_tasks(
    proxy: ProxyProcess, pg_cluster: LocalCluster, table: str
) -> None:
    async def work(pool: asyncpg.Pool, task: int) -> int:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT $1::int * 10", task) == task * 10
            async with conn.transaction():
                await conn.execute(
                    f"INSERT INTO {table} (task, kind, n) VALUES ($1, 'execute', 1)", task
                )
                await conn.executemany(
                    f"INSERT INTO {table} (task, kind, n) VALUES ($1, 'many', $2)",
                    [(task, i) for i in range(10)],
                )
            await conn.copy_records_to_table(
                table,
                records=[(task, "copy", i) for i in range(100)],
                columns=["task", "kind", "n"],
            )
            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute(
                        f"INSERT INTO {table} (task, kind, n) VALUES ($1, 'rolled back', 0)", task
                    )
                    await conn.execute(  # a duplicate primary key
                        f"INSERT INTO {table} SELECT * FROM {table} LIMIT 1"
                    )
            rows = await conn.fetch(
                f"SELECT kind, count(*) AS c FROM {table} WHERE task = $1 "
                "GROUP BY kind ORDER BY kind",
                task,
            )
            assert [(r["kind"], r["c"]) for r in rows] == [
                ("copy", 100),
                ("execute", 1),
                ("many", 10),
            ]
            return int(await conn.fetchval(f"SELECT sum(n) FROM {table} WHERE task = $1", task))

    async def main() -> list[int]:
        async with asyncpg.create_pool(**asyncpg_params(proxy), min_size=2, max_size=4) as pool:
            sums = await asyncio.gather(*(work(pool, task) for task in range(TASKS)))
            assert pool.get_size() <= 4
            return list(sums)

    sums = run(main())
    assert sums == [1 + sum(range(10)) + sum(range(100))] * TASKS
    with primary_conn(pg_cluster) as direct:
        assert scalar(direct, f"SELECT count(*) FROM {table}") == TASKS * 111
        assert scalar(direct, f"SELECT count(DISTINCT task) FROM {table}") == TASKS


def test_explicit_prepared_statements(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(**asyncpg_params(proxy))
        try:
            double = await conn.prepare("SELECT $1::int * 2 AS doubled")
            assert [p.name for p in double.get_parameters()] == ["int4"]
            assert [a.name for a in double.get_attributes()] == ["doubled"]
            assert [await double.fetchval(i) for i in (1, 21, -4)] == [2, 42, -8]
            series = await conn.prepare("SELECT g FROM generate_series(1, $1::int) g")
            assert len(await series.fetch(1000)) == 1000
            async with conn.transaction():  # a portal fetched in chunks
                seen = [r["g"] async for r in series.cursor(5000, prefetch=700)]
            assert seen == list(range(1, 5001))
            cursor_rows = []
            async with conn.transaction():
                cur = await series.cursor(100)
                cursor_rows += await cur.fetch(30)
                await cur.forward(40)
                cursor_rows += await cur.fetch(30)
            assert [r["g"] for r in cursor_rows] == [*range(1, 31), *range(71, 101)]
        finally:
            await conn.close()

    run(main())


def test_timeout_sends_cancel_and_connection_stays_usable(
    proxy: ProxyProcess, pg_cluster: LocalCluster
) -> None:
    marker = unique_name("apg_cancel")

    async def main() -> None:
        conn = await asyncpg.connect(**asyncpg_params(proxy))
        try:
            began = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.fetchval(f"SELECT pg_sleep(30) /* {marker} */"), 0.5)
            # asyncpg waits for the server to acknowledge the cancel before returning.
            assert await conn.fetchval("SELECT 'usable'") == "usable"
            assert time.monotonic() - began < 10
            assert not conn.is_in_transaction()
        finally:
            await conn.close()

    run(main())
    assert running(pg_cluster, marker) == []  # the cancel reached the server


def test_listen_via_add_listener(proxy: ProxyProcess) -> None:
    channel = unique_name("apg_chan")

    async def main() -> None:
        listener = await asyncpg.connect(**asyncpg_params(proxy))
        sender = await asyncpg.connect(**asyncpg_params(proxy))
        received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        try:
            await listener.add_listener(
                channel, lambda _conn, _pid, chan, payload: received.put_nowait((chan, payload))
            )
            await sender.execute(f"NOTIFY {channel}, 'hello'")
            await sender.execute("SELECT pg_notify($1, $2)", channel, "again")
            first = await asyncio.wait_for(received.get(), 10)
            second = await asyncio.wait_for(received.get(), 10)
            assert [first, second] == [(channel, "hello"), (channel, "again")]
        finally:
            await listener.close()
            await sender.close()

    run(main())
