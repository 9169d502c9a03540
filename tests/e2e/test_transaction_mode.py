"""Transaction and statement pooling with real clients, more of them than server
connections: psycopg 3 (pipeline mode, auto-prepare, COPY, cancel), asyncpg with its
default statement cache, ``pgbench -M prepared``, SQLAlchemy, psql on the admin console.

Most tests run against two proxies in transaction mode with ``pool.size`` 2: ``routed``
(the shared cluster's replicas take the reads, so a client's statements land on several
servers) and ``primary-only`` (no replicas: the point is pooling alone, and which server
connection a client gets next is predictable). Both proxies also serve database
``bench`` (the app database with ``pool.size`` 3, a per-database override) and put user
``app_md5`` in statement mode (a per-user override).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psycopg
import pytest
from harness import ADMIN_PASSWORD, ADMIN_USER, ProxyProcess, base_config
from pooled import admin, released, show, start_module_proxy
from psycopg import errors
from sqlalchemy import String, create_engine, func, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from e2e.util import (
    asyncpg_params,
    client_binary,
    connect,
    libpq_env,
    primary_conn,
    run_client,
    running,
    scalar,
    superuser_conn,
    unique_name,
    wait_for,
)
from router.localcluster import LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

T = TypeVar("T")

POOL_SIZE = 2
CLIENTS = 6  # three times the pool
BENCH_DB = "bench"
BENCH_POOL_SIZE = 3
STATEMENT_USER = LocalCluster.MD5_USER
STATEMENT_PASSWORD = LocalCluster.MD5_PASSWORD
APP = LocalCluster.APP_USER
APP_DB = LocalCluster.APP_DB


# --------------------------------------------------------------------------- proxies


def txn_config(cluster: LocalCluster, *, routed: bool) -> dict[str, Any]:
    primary = {"host": cluster.primary.host, "port": cluster.primary.port, "dbname": APP_DB}
    replicas = (
        [{"host": r.host, "port": r.port, "dbname": APP_DB} for r in cluster.replicas]
        if routed
        else []
    )
    return base_config(
        cluster,
        pool={"mode": "transaction", "size": POOL_SIZE, "query_wait_timeout": "30s"},
        auth={
            "users": {STATEMENT_USER: {"password": STATEMENT_PASSWORD, "pool_mode": "statement"}}
        },
        # The monitor logs in as app_md5, so app's server connections are the pools' alone.
        monitor={"user": STATEMENT_USER},
        databases={
            APP_DB: {"replicas": replicas},
            BENCH_DB: {"primary": primary, "replicas": replicas, "pool": {"size": BENCH_POOL_SIZE}},
        },
    )


@pytest.fixture(scope="module", params=["routed", "primary-only"])
def module_txn(
    request: pytest.FixtureRequest,
    pg_cluster: LocalCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyProcess]:
    config = txn_config(pg_cluster, routed=request.param == "routed")
    workdir = tmp_path_factory.mktemp(f"pgrouter-txn-{request.param}")
    proxy = start_module_proxy(config, workdir, request.param)
    yield proxy
    proxy.stop()


@pytest.fixture
def txn(request: pytest.FixtureRequest, module_txn: ProxyProcess) -> Iterator[ProxyProcess]:
    """The module's proxy (see pooled.released)."""
    yield from released(request, module_txn)


PRIMARY_ONLY = pytest.mark.parametrize("module_txn", ["primary-only"], indirect=True)
ROUTED = pytest.mark.parametrize("module_txn", ["routed"], indirect=True)


@pytest.fixture
def table(txn: ProxyProcess, pg_cluster: LocalCluster) -> Iterator[str]:
    """A fresh ``(id serial PRIMARY KEY, name text, value int)`` table, on the replicas too."""
    name = unique_name("txm")
    with primary_conn(pg_cluster) as conn:
        conn.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, name text, value int)")
        conn.execute(f"ALTER TABLE {name} OWNER TO {APP}")
    pg_cluster.wait_replicated()
    yield name
    with primary_conn(pg_cluster) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


# --------------------------------------------------------------------------- helpers


def in_threads(fn: Callable[[int], T], count: int, timeout: float = 60) -> list[T]:
    """``fn(0) ... fn(count - 1)`` at once, one thread each; their results in order."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(fn, n) for n in range(count)]
        return [future.result(timeout=timeout) for future in futures]


def server_of(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(port, backend pid) of the server connection running ``conn``'s statement."""
    row = conn.execute("SELECT inet_server_port(), pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])




def psql_admin(proxy: ProxyProcess, command: str) -> list[dict[str, str]]:
    """``command`` run by psql on the admin console, rows keyed by psql's own header."""
    env = libpq_env(proxy, PGUSER=ADMIN_USER, PGPASSWORD=ADMIN_PASSWORD, PGDATABASE="pgrouter")
    out = run_client([client_binary("psql"), "-X", "-A", "-F", "\t", "-c", command], env)
    lines = out.stdout.splitlines()
    assert lines and re.fullmatch(r"\(\d+ rows?\)", lines[-1]), out.stdout
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:-1]]


# --------------------------------------------------------------------------- psycopg


def test_pipeline_mode_with_writes_from_more_clients_than_servers(
    txn: ProxyProcess, pg_cluster: LocalCluster, table: str
) -> None:
    def client(n: int) -> None:
        with connect(txn) as conn:
            with conn.pipeline() as pipeline:
                inserted = [
                    conn.execute(
                        f"INSERT INTO {table} (name, value) VALUES (%s, %s) RETURNING id",
                        (f"c{n}-p{i}", i),
                    )
                    for i in range(10)
                ]
                with conn.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO {table} (name, value) VALUES (%s, %s)",
                        [(f"c{n}-m{i}", 100 + i) for i in range(5)],
                    )
                mine = conn.execute(
                    f"SELECT count(*), sum(value) FROM {table} WHERE name LIKE %s", (f"c{n}-%",)
                )
                echo = conn.execute("SELECT %s::int * 1000 + %s::int", (n, 7))
                pipeline.sync()
                ids = [cur.fetchone()[0] for cur in inserted]  # type: ignore[index]
                assert ids == sorted(ids) and len(set(ids)) == 10
                assert mine.fetchone() == (15, sum(range(10)) + sum(range(100, 105)))
                assert echo.fetchone() == (n * 1000 + 7,)
            # An error aborts the pipeline's implicit transaction; the session goes on.
            with pytest.raises(errors.UndefinedTable), conn.pipeline():
                conn.execute(f"INSERT INTO {table} (name) VALUES (%s)", (f"c{n}-lost",))
                conn.execute("SELECT * FROM no_such_table_here")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            # An explicit transaction in pipeline mode.
            with conn.pipeline(), conn.transaction():
                for i in range(3):
                    conn.execute(
                        f"INSERT INTO {table} (name, value) VALUES (%s, %s)", (f"c{n}-t{i}", -1)
                    )
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    in_threads(client, CLIENTS)
    with primary_conn(pg_cluster) as direct:
        rows = direct.execute(
            f"SELECT split_part(name, '-', 1), count(*), sum(value) FROM {table} GROUP BY 1"
        ).fetchall()
        assert sorted(rows) == [
            (f"c{n}", 18, sum(range(10)) + sum(range(100, 105)) - 3) for n in range(CLIENTS)
        ]
        assert scalar(direct, f"SELECT count(*) FROM {table} WHERE name LIKE '%%lost'") == 0


@pytest.mark.parametrize("threshold", [0, 1])
def test_auto_prepare_across_many_transactions(
    txn: ProxyProcess, pg_cluster: LocalCluster, table: str, threshold: int
) -> None:
    """psycopg names its statements _pg3_0, _pg3_1, ... per connection; each client here
    prepares them in a different order, so one client-side name means different
    statements on the same server connection. The servers hold them as pgr_<hash>."""
    with primary_conn(pg_cluster) as direct:
        direct.execute(
            f"INSERT INTO {table} (id, name, value) SELECT g, 'counter', 0 "
            f"FROM generate_series(1, {CLIENTS}) g"
        )
    pg_cluster.wait_replicated()
    add = "SELECT %s::int + %s::int"
    name_of = f"SELECT name FROM {table} WHERE id = %s"
    bump = f"UPDATE {table} SET value = value + %s WHERE id = %s RETURNING value"
    parsed = {
        add: "SELECT $1::int + $2::int",
        name_of: f"SELECT name FROM {table} WHERE id = $1",
        bump: f"UPDATE {table} SET value = value + $1 WHERE id = $2 RETURNING value",
    }
    rounds = 12

    def client(n: int) -> set[tuple[int, int]]:
        order = [add, name_of, bump]
        order = order[n % 3 :] + order[: n % 3]
        servers: set[tuple[int, int]] = set()
        total = 0
        with connect(txn, prepare_threshold=threshold) as conn:
            for i in range(rounds):
                with conn.transaction():
                    for query in order:
                        if query is add:
                            assert scalar(conn, add, (n, i)) == n + i
                        elif query is name_of:
                            assert scalar(conn, name_of, (n + 1,)) == "counter"
                        else:
                            total += i
                            assert scalar(conn, bump, (i, n + 1)) == total
                    servers.add(server_of(conn))
                    names = scalar(conn, "SELECT array_agg(name) FROM pg_prepared_statements")
                    assert all(name.startswith("pgr_") for name in names or []), names
                # Outside a transaction (a replica's, when routed).
                assert scalar(conn, add, (i, n)) == n + i
                assert scalar(conn, name_of, (n + 1,)) == "counter"
            with conn.transaction():
                for query, args in ((add, (1, 2)), (name_of, (1,)), (bump, (0, n + 1))):
                    conn.execute(query, args)
                held = conn.execute("SELECT name, statement FROM pg_prepared_statements").fetchall()
            for query in order:
                texts = [statement for _, statement in held]
                assert texts.count(parsed[query]) == 1, held
            assert all(name.startswith("pgr_") for name, _ in held), held
        return servers

    servers = set().union(*in_threads(client, CLIENTS))
    assert len(servers) >= POOL_SIZE  # the statements ran on several server connections
    with primary_conn(pg_cluster) as direct:
        values = direct.execute(f"SELECT value FROM {table} ORDER BY id").fetchall()
    assert values == [(sum(range(rounds)),)] * CLIENTS


@PRIMARY_ONLY
def test_prepared_statement_is_prepared_again_on_the_next_server_connection(
    txn: ProxyProcess,
) -> None:
    """A holder keeps one of the two server connections in a transaction, so the client's
    transaction runs on the other one. The holder ends first, so (idle connections are
    reused last in, first out) it takes the client's server next time, and the client
    moves to a server where its statement is not prepared yet. psycopg only Binds (it
    prepared the statement once); the proxy prepares it there."""
    query = "SELECT %s::int * 7, 'prepared again'"
    as_parsed = "SELECT $1::int * 7, 'prepared again'"
    pids: list[int] = []
    with connect(txn, prepare_threshold=0) as conn, connect(txn, autocommit=False) as holder:
        for i in range(6):
            holder_pid = scalar(holder, "SELECT pg_backend_pid()")  # holds a server
            with conn.transaction():
                assert conn.execute(query, (i,)).fetchone() == (7 * i, "prepared again")
                pid = scalar(conn, "SELECT pg_backend_pid()")
                held = conn.execute(
                    "SELECT name FROM pg_prepared_statements WHERE statement = %s", (as_parsed,)
                ).fetchall()
                holder.commit()
            assert pid != holder_pid
            assert len(held) == 1 and held[0][0].startswith("pgr_"), held
            pids.append(pid)
            if len(set(pids)) == POOL_SIZE:
                break
    assert len(set(pids)) == POOL_SIZE, f"the client never changed server connection: {pids}"


def test_copy_in_and_out_while_other_clients_run(
    txn: ProxyProcess, pg_cluster: LocalCluster, table: str
) -> None:
    rows_per_client = 5_000

    def client(n: int) -> None:
        with connect(txn) as conn:
            if n % 2:  # a plain client between the COPYs
                for i in range(30):
                    assert scalar(conn, "SELECT %s::int", (i,)) == i
                return
            lines = [f"c{n}-{i}\t{i}\n" for i in range(rows_per_client)]
            with conn.cursor() as cur, cur.copy(f"COPY {table} (name, value) FROM STDIN") as copy:
                for line in lines:
                    copy.write(line)
            # COPY out inside a transaction, with a write before it; rolled back.
            with conn.transaction() as tx:
                conn.execute(f"INSERT INTO {table} (name, value) VALUES (%s, -1)", (f"c{n}-x",))
                out: list[bytes] = []
                with (
                    conn.cursor() as cur,
                    cur.copy(
                        f"COPY (SELECT name, value FROM {table} WHERE name LIKE %s ORDER BY id) "
                        "TO STDOUT",
                        (f"c{n}-%",),
                    ) as copy,
                ):
                    out.extend(bytes(chunk) for chunk in copy)
                raise psycopg.Rollback(tx)
            assert b"".join(out).decode() == "".join(lines) + f"c{n}-x\t-1\n"
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    in_threads(client, CLIENTS)
    with primary_conn(pg_cluster) as direct:
        assert scalar(direct, f"SELECT count(*) FROM {table}") == rows_per_client * CLIENTS // 2
        assert scalar(direct, f"SELECT count(*) FROM {table} WHERE value < 0") == 0


def cancel_when_running(conn: psycopg.Connection[Any], cluster: LocalCluster, marker: str) -> None:
    wait_for(lambda: running(cluster, marker), 10, f"query {marker} to run on a server")
    conn.cancel()


def test_cancel_reaches_the_right_client_only(txn: ProxyProcess, pg_cluster: LocalCluster) -> None:
    victim_marker, other_marker = unique_name("cancel_victim"), unique_name("cancel_other")
    with connect(txn) as victim, connect(txn) as other, connect(txn) as idle:
        assert scalar(idle, "SELECT 1") == 1

        def sleep_other() -> float:
            began = time.monotonic()
            other.execute(f"SELECT pg_sleep(1.5) /* {other_marker} */")
            return time.monotonic() - began

        with ThreadPoolExecutor(max_workers=2) as pool:
            slept = pool.submit(sleep_other)
            failed = pool.submit(
                lambda: victim.execute(f"SELECT pg_sleep(30) /* {victim_marker} */")
            )
            wait_for(lambda: running(pg_cluster, victim_marker), 10, "the victim's query to run")
            wait_for(lambda: running(pg_cluster, other_marker), 10, "the other query to run")
            idle.cancel()  # a client without a server: its cancel reaches nobody
            began = time.monotonic()
            victim.cancel()
            with pytest.raises(errors.QueryCanceled) as canceled:
                failed.result(timeout=15)
            assert time.monotonic() - began < 10
            assert canceled.value.sqlstate == "57014"
            assert slept.result(timeout=15) >= 1.4  # the other query ran to its end
        assert scalar(victim, "SELECT 'usable after cancel'") == "usable after cancel"
        assert scalar(idle, "SELECT 'idle unaffected'") == "idle unaffected"
        # A cancel inside a transaction fails the transaction; ROLLBACK recovers.
        canceller = threading.Thread(
            target=cancel_when_running, args=(victim, pg_cluster, victim_marker), daemon=True
        )
        with pytest.raises(errors.QueryCanceled), victim.transaction():
            victim.execute("SELECT 1")
            canceller.start()
            victim.execute(f"SELECT pg_sleep(30) /* {victim_marker} */")
        canceller.join(10)
        assert victim.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert scalar(victim, "SELECT 2") == 2
    assert running(pg_cluster, victim_marker) == []


# --------------------------------------------------------------------------- asyncpg


def test_asyncpg_default_settings_twenty_tasks_on_a_small_pool(
    txn: ProxyProcess, pg_cluster: LocalCluster, table: str
) -> None:
    tasks, statements = 20, 50

    async def task(n: int) -> int:
        conn = await asyncpg.connect(**asyncpg_params(txn))  # statement cache on
        done = 0
        try:
            for i in range(statements // 5):
                assert await conn.fetchval("SELECT $1::int * $2::int", n, i) == n * i
                row = await conn.fetchrow("SELECT $1::text || '-' || $2::int, $2::int + 1", "t", i)
                assert tuple(row) == (f"t-{i}", i + 1)
                series = await conn.fetch("SELECT g FROM generate_series(1, $1::int) g", i % 7 + 1)
                assert [r["g"] for r in series] == list(range(1, i % 7 + 2))
                async with conn.transaction():
                    await conn.execute(
                        f"INSERT INTO {table} (name, value) VALUES ($1, $2)", f"task{n}", i
                    )
                    got = await conn.fetchval(
                        f"SELECT count(*) FROM {table} WHERE name = $1", f"task{n}"
                    )
                    assert got == i + 1
                done += 5
        finally:
            await conn.close()
        return done

    async def main() -> list[int]:
        return await asyncio.gather(*(task(n) for n in range(tasks)))

    assert asyncio.run(asyncio.wait_for(main(), 60)) == [statements] * tasks
    with primary_conn(pg_cluster) as direct:
        rows = direct.execute(f"SELECT name, count(*), sum(value) FROM {table} GROUP BY name")
        assert sorted(rows.fetchall()) == sorted(
            (f"task{n}", statements // 5, sum(range(statements // 5))) for n in range(tasks)
        )


# --------------------------------------------------------------------------- pgbench


class ServerSampler:
    """Samples, on every instance, the server connections of one application_name."""

    def __init__(self, cluster: LocalCluster, application_name: str) -> None:
        self.conns = {inst.name: superuser_conn(inst, "postgres") for inst in cluster.instances}
        self.application_name = application_name
        self.peak: dict[str, int] = dict.fromkeys(self.conns, 0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, conn in self.conns.items():
                count = scalar(
                    conn,
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s "
                    "AND application_name = %s AND backend_type = 'client backend'",
                    (APP, self.application_name),
                )
                self.peak[name] = max(self.peak[name], count)
            self.samples += 1
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.conns.values():
            conn.close()


@ROUTED
def test_pgbench_prepared_with_more_clients_than_server_connections(
    txn: ProxyProcess, pg_cluster: LocalCluster, tmp_path: Path
) -> None:
    accounts, history = unique_name("bench_acc"), unique_name("bench_hist")
    with primary_conn(pg_cluster) as direct:
        direct.execute(f"CREATE TABLE {accounts} (aid int PRIMARY KEY, balance int NOT NULL)")
        direct.execute(f"INSERT INTO {accounts} SELECT g, 0 FROM generate_series(1, 100) g")
        direct.execute(f"CREATE TABLE {history} (aid int, delta int)")
        direct.execute(f"GRANT ALL ON {accounts}, {history} TO {APP}")
    pg_cluster.wait_replicated()
    script = tmp_path / "bench.sql"
    script.write_text(
        "\\set aid random(1, 100)\n"
        "\\set delta random(-5000, 5000)\n"
        "BEGIN;\n"
        f"UPDATE {accounts} SET balance = balance + :delta WHERE aid = :aid;\n"
        f"SELECT balance FROM {accounts} WHERE aid = :aid;\n"
        f"INSERT INTO {history} (aid, delta) VALUES (:aid, :delta);\n"
        "END;\n"
        f"SELECT count(*) FROM {accounts} WHERE aid <= :aid;\n"
    )
    clients, per_client = 10, 40
    app_name = unique_name("pgbench")
    argv = [
        client_binary("pgbench"), "-n", "-M", "prepared", "-c", str(clients), "-j", str(clients),
        "-t", str(per_client), "-f", str(script),
    ]  # fmt: skip
    env = libpq_env(txn, PGDATABASE=BENCH_DB, PGAPPNAME=app_name)
    sampler = ServerSampler(pg_cluster, app_name)
    bench = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    pools: list[dict[str, Any]] = []
    try:
        with admin(txn) as console:
            while bench.poll() is None and len(pools) < 500:
                pools += [
                    row
                    for row in show(console, "POOLS")
                    if row["database"] == BENCH_DB and row["backend"] == "primary"
                ]
                time.sleep(0.02)
        stdout, stderr = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        sampler.stop()
    assert bench.returncode == 0, f"{stdout}\n{stderr}"
    assert "query mode: prepared" in stdout
    processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", stdout)
    assert processed is not None, stdout
    assert processed.groups() == (str(clients * per_client),) * 2, stdout
    failed = re.search(r"number of failed transactions: (\d+)", stdout)
    assert failed is None or failed.group(1) == "0", stdout
    # Never more server connections than the pool allows, on any server.
    assert sampler.samples >= 5
    assert sampler.peak["primary"] >= 1, sampler.peak
    assert all(peak <= BENCH_POOL_SIZE for peak in sampler.peak.values()), sampler.peak
    # The proxy saw ten clients on (at most) three server connections.
    assert pools, "SHOW POOLS never listed the bench pool during the run"
    for row in pools:
        servers = int(row["sv_active"]) + int(row["sv_idle"]) + int(row["sv_used"])
        assert servers <= BENCH_POOL_SIZE, row
    assert any(int(row["cl_active"]) > int(row["sv_active"]) for row in pools), pools[-5:]
    with primary_conn(pg_cluster) as direct:
        assert scalar(direct, f"SELECT count(*) FROM {history}") == clients * per_client
        moved = scalar(direct, f"SELECT coalesce(sum(delta), 0) FROM {history}")
        assert scalar(direct, f"SELECT sum(balance) FROM {accounts}") == moved
        direct.execute(f"DROP TABLE {accounts}, {history}")


# --------------------------------------------------------------------------- SQLAlchemy


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "item"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(40))
    n: Mapped[int]


def sa_url(proxy: ProxyProcess, driver: str) -> str:
    user, password = APP, LocalCluster.APP_PASSWORD
    return f"postgresql+{driver}://{user}:{password}@{proxy.host}:{proxy.port}/{APP_DB}"


@pytest.fixture
def schema(txn: ProxyProcess, pg_cluster: LocalCluster) -> Iterator[str]:
    name = unique_name("txsa")
    with primary_conn(pg_cluster) as direct:
        direct.execute(f"CREATE SCHEMA {name} AUTHORIZATION {APP}")
        direct.execute(f"CREATE TABLE {name}.item (id serial PRIMARY KEY, owner text, n int)")
        direct.execute(f"ALTER TABLE {name}.item OWNER TO {APP}")
    pg_cluster.wait_replicated()
    yield name
    with primary_conn(pg_cluster) as direct:
        direct.execute(f"DROP SCHEMA {name} CASCADE")


def test_sqlalchemy_sessions_in_threads_and_tasks(
    txn: ProxyProcess, pg_cluster: LocalCluster, schema: str
) -> None:
    """Eight threads (psycopg) and eight tasks (asyncpg, prepared statements), each with a
    client connection of its own, over two server connections."""
    engine = create_engine(
        sa_url(txn, "psycopg"), pool_size=8, max_overflow=0, connect_args={"connect_timeout": 10}
    ).execution_options(schema_translate_map={None: schema})

    def worker(n: int) -> int:
        owner = f"thread{n}"
        for i in range(5):
            with Session(engine) as session:
                session.add_all([Item(owner=owner, n=i), Item(owner=owner, n=100 + i)])
                session.commit()
            with Session(engine) as session:
                session.add(Item(owner=owner, n=-1))
                session.flush()
                session.rollback()
        with Session(engine) as session:
            found = session.scalars(select(Item.n).where(Item.owner == owner)).all()
            assert sorted(found) == sorted([*range(5), *range(100, 105)])
            return int(session.scalar(select(func.count()).select_from(Item)) or 0)

    try:
        assert all(seen >= 10 for seen in in_threads(worker, 8))
    finally:
        engine.dispose()

    async def task(async_engine: Any, n: int) -> None:
        owner = f"task{n}"
        for i in range(5):
            async with AsyncSession(async_engine) as session:
                session.add(Item(owner=owner, n=i))
                await session.commit()
            async with AsyncSession(async_engine) as session:
                rows = await session.scalars(select(Item.n).where(Item.owner == owner))
                assert sorted(rows.all()) == list(range(i + 1))

    async def main() -> None:
        async_engine = create_async_engine(
            sa_url(txn, "asyncpg"), pool_size=8, max_overflow=0, connect_args={"timeout": 10}
        ).execution_options(schema_translate_map={None: schema})
        try:
            await asyncio.gather(*(task(async_engine, n) for n in range(8)))
        finally:
            await async_engine.dispose()

    asyncio.run(asyncio.wait_for(main(), 60))
    with primary_conn(pg_cluster) as direct:
        assert scalar(direct, f"SELECT count(*) FROM {schema}.item") == 8 * 10 + 8 * 5
        assert scalar(direct, f"SELECT count(*) FROM {schema}.item WHERE n < 0") == 0


# --------------------------------------------------------------------------- admin console


@PRIMARY_ONLY
def test_psql_show_pools_counts_clients_beyond_the_servers(txn: ProxyProcess) -> None:
    """Two clients in transactions hold both server connections, three are idle between
    transactions and two wait for a server: PgBouncer's counters say exactly that."""
    holders = [connect(txn, autocommit=False, application_name="holder") for _ in range(2)]
    idlers = [connect(txn, application_name="idler") for _ in range(3)]
    waiters = [connect(txn, application_name="waiter") for _ in range(2)]
    everyone = [*holders, *idlers, *waiters]
    try:
        for conn in [*idlers, *holders]:
            assert scalar(conn, "SELECT 1") == 1  # holders: inside a transaction now
        with ThreadPoolExecutor(max_workers=2) as pool:
            waited = [pool.submit(scalar, conn, "SELECT 'served'") for conn in waiters]

            def app_pool() -> dict[str, str] | None:
                rows = psql_admin(txn, "SHOW POOLS")
                row = next(
                    r for r in rows if (r["database"], r["user"]) == (APP_DB, APP)
                    and r["backend"] == "primary"
                )  # fmt: skip
                return row if row["cl_waiting"] == "2" else None

            row = wait_for(app_pool, 15, "SHOW POOLS to count two waiting clients")
            assert (row["cl_active"], row["sv_active"], row["sv_idle"]) == ("5", "2", "0"), row
            assert row["pool_mode"] == "transaction"
            assert int(row["maxwait"]) * 1_000_000 + int(row["maxwait_us"]) > 0
            clients = psql_admin(txn, "SHOW CLIENTS")
            states = sorted(
                (r["application_name"], r["state"])
                for r in clients
                if r["application_name"] in ("holder", "idler", "waiter")
            )
            assert states == [
                *[("holder", "active")] * 2,
                *[("idler", "idle")] * 3,
                *[("waiter", "waiting")] * 2,
            ]
            assert not any(f.done() for f in waited)
            holders[0].commit()
            holders[1].commit()
            assert [f.result(timeout=15) for f in waited] == ["served", "served"]
        row = next(
            r for r in psql_admin(txn, "SHOW POOLS")
            if (r["database"], r["user"], r["backend"]) == (APP_DB, APP, "primary")
        )  # fmt: skip
        assert (row["cl_waiting"], row["sv_active"], row["cl_active"]) == ("0", "0", "7"), row
    finally:
        for conn in everyone:
            conn.close()


# --------------------------------------------------------------------------- statement mode


def statement_client(proxy: ProxyProcess, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(
        proxy.dsn(STATEMENT_USER, STATEMENT_PASSWORD),
        autocommit=kwargs.pop("autocommit", True),
        connect_timeout=10,
        **kwargs,
    )


def test_statement_mode_runs_autocommit_statements(
    txn: ProxyProcess, pg_cluster: LocalCluster, table: str
) -> None:
    with primary_conn(pg_cluster) as direct:
        direct.execute(f"GRANT ALL ON {table}, {table}_id_seq TO {STATEMENT_USER}")

    def client(n: int) -> None:
        with statement_client(txn, prepare_threshold=0) as conn:
            for i in range(10):
                assert scalar(conn, "SELECT %s::int * %s::int", (n, i)) == n * i
                conn.execute(f"INSERT INTO {table} (name, value) VALUES (%s, %s)", (f"s{n}", i))
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            with conn.pipeline():  # pipelined statements, each its own implicit transaction
                for _ in range(5):
                    conn.execute(f"INSERT INTO {table} (name, value) VALUES (%s, 0)", (f"s{n}",))

    in_threads(client, CLIENTS)
    with primary_conn(pg_cluster) as direct:
        rows = direct.execute(f"SELECT name, count(*) FROM {table} GROUP BY name ORDER BY name")
        assert rows.fetchall() == [(f"s{n}", 15) for n in range(CLIENTS)]


def test_statement_mode_refuses_a_transaction_block_with_0A000(
    txn: ProxyProcess, pg_cluster: LocalCluster, table: str
) -> None:
    with primary_conn(pg_cluster) as direct:
        direct.execute(f"GRANT ALL ON {table}, {table}_id_seq TO {STATEMENT_USER}")
    notices: list[tuple[str | None, str | None]] = []
    with statement_client(txn, autocommit=False) as conn:  # psycopg sends BEGIN first
        conn.add_notice_handler(lambda diag: notices.append((diag.sqlstate, diag.message_primary)))
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(f"INSERT INTO {table} (name) VALUES ('in a block')")
            conn.execute("SELECT 1")
        # The refusal follows BEGIN's own answer: libpq reports it as the error of the
        # next statement, or (when it read it between statements) as a notice.
        seen = [(refused.value.sqlstate, str(refused.value)), *notices]
        assert any(
            code == "0A000" and "statement pooling" in (text or "") for code, text in seen
        ), seen
        assert conn.closed or conn.broken
    # The refused transaction never committed, and no server connection was left in it.
    for _ in range(POOL_SIZE + 1):
        with statement_client(txn) as conn:
            # In a transaction left open, now() would be older than the statement.
            assert scalar(conn, "SELECT now() = statement_timestamp()") is True
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with primary_conn(pg_cluster) as direct:
        assert scalar(direct, f"SELECT count(*) FROM {table}") == 0

        def none_idle_in_transaction() -> bool:
            return not scalar(
                direct,
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s "
                "AND state LIKE 'idle in transaction%%'",
                (STATEMENT_USER,),
            )

        wait_for(none_idle_in_transaction, 10, "no app_md5 server idle in a transaction")
