"""Transaction pooling semantics: session state that keeps its meaning across transactions
(tracked SETs follow the client, LISTEN / temp tables / advisory locks / untracked SETs
pin it), DISCARD ALL and DEALLOCATE ALL, idle_transaction_timeout, the reserve pool,
server_check_query, and a server connection reset during one client's transaction.

The session-state tests run against two proxies with ``pool.size`` 2: ``routed`` (reads
outside transactions go to the shared cluster's replicas) and ``primary-only``. Other
databases of the same proxies, all on the primary, carry the per-database settings under
test: ``single`` (one server connection), ``idle`` (idle_transaction_timeout 1s) and
``reserve`` (reserve_size 1, reserve_timeout 0.5s).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import psycopg
import pytest
from e2e.util import asyncpg_params, connect, primary_conn, scalar, unique_name, wait_for
from harness import ProxyProcess, base_config
from pooled import admin, released, start_module_proxy
from psycopg import errors
from util import RawClient, data_values, errors_in

from router.localcluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ProxyFactory = Callable[..., ProxyProcess]
ToxiFactory = Callable[[str, str, int], tuple[Any, int]]

APP = LocalCluster.APP_USER
APP_PW = LocalCluster.APP_PASSWORD
APP_DB = LocalCluster.APP_DB
MONITOR_USER = LocalCluster.MD5_USER  # the monitor's login, so app's servers are the pools'
POOL_SIZE = 2
SINGLE_DB, IDLE_DB, RESERVE_DB = "single", "idle", "reserve"
IDLE_TIMEOUT_S = 1.0
RESERVE_TIMEOUT_S = 0.5
INTRANS = psycopg.pq.TransactionStatus.INTRANS
IDLE = psycopg.pq.TransactionStatus.IDLE


# --------------------------------------------------------------------------- proxies


def pooling_config(cluster: LocalCluster, *, routed: bool) -> dict[str, Any]:
    primary = {"host": cluster.primary.host, "port": cluster.primary.port, "dbname": APP_DB}
    replicas = (
        [{"host": r.host, "port": r.port, "dbname": APP_DB} for r in cluster.replicas]
        if routed
        else []
    )
    return base_config(
        cluster,
        pool={
            "mode": "transaction",
            "size": POOL_SIZE,
            "query_wait_timeout": "20s",
            "reserve_timeout": f"{RESERVE_TIMEOUT_S}s",
        },
        monitor={"user": MONITOR_USER},
        databases={
            APP_DB: {"replicas": replicas},
            SINGLE_DB: {"primary": primary, "pool": {"size": 1}},
            IDLE_DB: {
                "primary": primary,
                "pool": {"size": 1, "idle_transaction_timeout": f"{IDLE_TIMEOUT_S}s"},
            },
            RESERVE_DB: {"primary": primary, "pool": {"size": 1, "reserve_size": 1}},
        },
    )


@pytest.fixture(scope="module", params=["routed", "primary-only"])
def module_txn(
    request: pytest.FixtureRequest,
    pg_cluster: LocalCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyProcess]:
    config = pooling_config(pg_cluster, routed=request.param == "routed")
    workdir = tmp_path_factory.mktemp(f"pgrouter-pooling-{request.param}")
    proxy = start_module_proxy(config, workdir, request.param)
    yield proxy
    proxy.stop()


@pytest.fixture
def txn(request: pytest.FixtureRequest, module_txn: ProxyProcess) -> Iterator[ProxyProcess]:
    """The module's proxy (see pooled.released)."""
    yield from released(request, module_txn)


PRIMARY_ONLY = pytest.mark.parametrize("module_txn", ["primary-only"], indirect=True)


@pytest.fixture
def scratch(pg_cluster: LocalCluster) -> Iterator[str]:
    """An empty ``(id int, note text)`` table owned by app, on the replicas too."""
    name = unique_name("txp")
    with primary_conn(pg_cluster) as direct:
        direct.execute(f"CREATE TABLE {name} (id int, note text)")
        direct.execute(f"ALTER TABLE {name} OWNER TO {APP}")
    pg_cluster.wait_replicated()
    yield name
    with primary_conn(pg_cluster) as direct:
        direct.execute(f"DROP TABLE IF EXISTS {name}")


# --------------------------------------------------------------------------- helpers


def server_of(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(port, backend pid) of the server connection that runs ``conn``'s statement."""
    row = conn.execute("SELECT inet_server_port(), pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])



def pin_reason(proxy: ProxyProcess, application_name: str) -> str:
    """SHOW CLIENTS' ``pinned`` column for the one client with that application_name."""
    with admin(proxy) as console:
        cur = console.execute("SHOW CLIENTS")
        assert cur.description is not None
        names = [column.name for column in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    mine = [row for row in rows if row["application_name"] == application_name]
    assert len(mine) == 1, rows
    return str(mine[0]["pinned"] or "")


def terminate(cluster: LocalCluster, pid: int) -> None:
    with primary_conn(cluster, "postgres") as direct:
        assert scalar(direct, "SELECT pg_terminate_backend(%s, 5000)", (pid,)) is True


# --------------------------------------------------------------------------- tracked parameters


@pytest.mark.timeout(30)  # a few seconds normally; a lost reply would hang a driver call
def test_tracked_settings_follow_the_client_and_no_one_else(
    txn: ProxyProcess, pg_cluster: LocalCluster
) -> None:
    """SET search_path / statement_timeout is replayed on whichever server connection the
    client gets next (a holder keeps the other one busy, so it moves), and clients that
    get those connections afterwards see the defaults."""
    schema = unique_name("trk")
    with primary_conn(pg_cluster) as direct:
        direct.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {APP}")
        direct.execute(f"CREATE TABLE {schema}.t (v text)")
        direct.execute(f"INSERT INTO {schema}.t VALUES ('mine')")
        direct.execute(f"ALTER TABLE {schema}.t OWNER TO {APP}")
        default_path = scalar(direct, "SHOW search_path")
    pg_cluster.wait_replicated()
    mine = f"{schema}, public"
    try:
        with (
            connect(txn, application_name="setter") as setter,
            connect(txn, autocommit=False) as holder,
            connect(txn) as other,
        ):
            setter.execute(f"SET search_path = {schema}, public")
            setter.execute("SET statement_timeout = '250ms'")
            setter_servers: set[tuple[int, int]] = set()
            other_servers: set[tuple[int, int]] = set()
            for _ in range(4):
                assert scalar(holder, "SELECT 1") == 1  # holds a server in a transaction
                with setter.transaction():
                    assert scalar(setter, "SHOW search_path") == mine
                    assert scalar(setter, "SHOW statement_timeout") == "250ms"
                    assert scalar(setter, "SELECT v FROM t") == "mine"
                    setter_servers.add(server_of(setter))
                    holder.commit()  # first: the holder takes the setter's server next
                assert scalar(setter, "SELECT v FROM t") == "mine"  # a replica's, when routed
                assert scalar(setter, "SHOW statement_timeout") == "250ms"
                with other.transaction():  # on the server the setter just released
                    assert scalar(other, "SHOW search_path") == default_path
                    assert scalar(other, "SHOW statement_timeout") == "0"
                    other_servers.add(server_of(other))
                assert scalar(other, "SHOW statement_timeout") == "0"
                with pytest.raises(errors.UndefinedTable):
                    other.execute("SELECT v FROM t")
            assert len(setter_servers) >= 2, setter_servers
            assert setter_servers & other_servers, (setter_servers, other_servers)

            # The timeout bites the setter wherever it runs, and no one else.
            with pytest.raises(errors.QueryCanceled, match="statement timeout"):
                setter.execute("SELECT pg_sleep(2)")
            with (
                pytest.raises(errors.QueryCanceled, match="statement timeout"),
                setter.transaction(),
            ):
                setter.execute("SELECT pg_sleep(2)")
            slept = "SELECT 'slept' FROM pg_sleep(0.5)"
            assert scalar(other, slept) == "slept"
            with other.transaction():
                assert scalar(other, slept) == "slept"

            # A SET rolled back, or SET LOCAL, does not stick.
            with setter.transaction() as tx:
                setter.execute("SET search_path = public")
                raise psycopg.Rollback(tx)
            with setter.transaction():
                setter.execute("SET LOCAL statement_timeout = '5s'")
                assert scalar(setter, "SHOW statement_timeout") == "5s"
            assert scalar(setter, "SHOW search_path") == mine
            assert scalar(setter, "SHOW statement_timeout") == "250ms"
            with setter.transaction():
                assert scalar(setter, "SHOW search_path") == mine
            assert pin_reason(txn, "setter") == ""  # tracked, never pinned

            # RESET takes the client back to the defaults, everywhere.
            setter.execute("RESET search_path")
            setter.execute("SET statement_timeout TO DEFAULT")
            for _ in range(3):
                assert scalar(setter, "SHOW search_path") == default_path
                with setter.transaction():
                    assert scalar(setter, "SHOW search_path") == default_path
                    assert scalar(setter, "SHOW statement_timeout") == "0"
    finally:
        with primary_conn(pg_cluster) as direct:
            direct.execute(f"DROP SCHEMA {schema} CASCADE")


@PRIMARY_ONLY
def test_two_tracked_sets_leave_the_server_usable_for_the_next_client(
    txn: ProxyProcess, pg_cluster: LocalCluster
) -> None:
    """On ``single`` the next client gets the very server connection the setter used; it
    must be brought back to the defaults and answer (a raw client, so a lost reply fails
    within seconds instead of hanging a driver)."""
    with primary_conn(pg_cluster) as direct:
        default_path = scalar(direct, "SHOW search_path")
    with (
        connect(txn, dbname=SINGLE_DB, application_name="setter") as setter,
        RawClient(txn.port, timeout=5) as after,
    ):
        assert after.login(APP, APP_PW, SINGLE_DB).ok
        setter.execute("SET search_path = public")
        setter.execute("SET statement_timeout = '250ms'")
        assert scalar(setter, "SHOW statement_timeout") == "250ms"
        shown = after.query("SHOW search_path; SHOW statement_timeout")
        assert data_values(shown) == [(default_path.encode(),), (b"0",)], shown
        assert scalar(setter, "SHOW search_path") == "public"


# --------------------------------------------------------------------------- pinning


def test_listen_pins_and_notifications_keep_arriving(
    txn: ProxyProcess, pg_cluster: LocalCluster
) -> None:
    channel = unique_name("chan")
    with (
        connect(txn, application_name="listener") as listener,
        connect(txn) as sender,
        connect(txn) as other,
    ):
        listener.execute(f"LISTEN {channel}")
        servers: set[tuple[int, int]] = set()
        for i in range(10):
            with listener.transaction():
                servers.add(server_of(listener))
            servers.add(server_of(listener))  # a read: a replica's, were it not pinned
            assert scalar(other, "SELECT %s::int", (i,)) == i  # the others are served
        assert len(servers) == 1, servers
        assert next(iter(servers))[0] == pg_cluster.primary.port
        assert pin_reason(txn, "listener") == "LISTEN"
        sender.execute("SELECT pg_notify(%s, 'first')", (channel,))
        with sender.transaction():
            sender.execute(f"NOTIFY {channel}, 'second'")
        sender.execute(f"NOTIFY {channel}, 'third'")
        received = [(n.channel, n.payload) for n in listener.notifies(timeout=10, stop_after=3)]
        assert received == [(channel, "first"), (channel, "second"), (channel, "third")]
        assert server_of(listener) in servers


def test_temp_table_pins_and_stays_visible(txn: ProxyProcess, pg_cluster: LocalCluster) -> None:
    temp = unique_name("tmp")
    with connect(txn, application_name="temp-owner") as owner, connect(txn) as other:
        owner.execute(f"CREATE TEMP TABLE {temp} (x int)")
        servers: set[tuple[int, int]] = set()
        for i in range(8):
            with owner.transaction():
                owner.execute(f"INSERT INTO {temp} VALUES (%s)", (i,))
                servers.add(server_of(owner))
            assert scalar(owner, f"SELECT count(*) FROM {temp}") == i + 1
            servers.add(server_of(owner))
            with pytest.raises(errors.UndefinedTable):
                other.execute(f"SELECT * FROM {temp}")
        assert len(servers) == 1, servers
        assert next(iter(servers))[0] == pg_cluster.primary.port
        assert pin_reason(txn, "temp-owner") == "temporary object"
        with primary_conn(pg_cluster) as direct:
            query = "SELECT count(*) FROM pg_class WHERE relname = %s AND relpersistence = 't'"
            assert scalar(direct, query, (temp,)) == 1
    # The owner left: the server connection was reset before reuse, the table is gone.
    with primary_conn(pg_cluster) as direct:
        wait_for(
            lambda: (
                scalar(direct, "SELECT count(*) FROM pg_class WHERE relname = %s", (temp,)) == 0
            ),
            10,
            "the temporary table to be dropped",
        )


def test_session_advisory_lock_pins_and_stays_held(
    txn: ProxyProcess, pg_cluster: LocalCluster
) -> None:
    key = random.randrange(1, 2**31)
    holders_query = (
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 "
        "AND objid = %s AND objsubid = 1 AND granted"
    )
    with primary_conn(pg_cluster) as direct:
        with connect(txn, application_name="locker") as locker, connect(txn) as other:
            locker.execute("SELECT pg_advisory_lock(%s)", (key,))
            pids = set()
            for i in range(8):
                with locker.transaction():
                    pids.add(server_of(locker))
                pids.add(server_of(locker))
                assert scalar(other, "SELECT %s::int", (i,)) == i
            assert len(pids) == 1, pids
            port, pid = next(iter(pids))
            assert port == pg_cluster.primary.port
            assert direct.execute(holders_query, (key,)).fetchall() == [(pid,)]
            assert pin_reason(txn, "locker").startswith("session-level function")
            # Another client cannot take it: the lock is held, on the primary.
            assert scalar(other, "SELECT pg_try_advisory_lock(%s)", (key,)) is False
        wait_for(
            lambda: not direct.execute(holders_query, (key,)).fetchall(),
            10,
            "the advisory lock to be released with its session",
        )
    with connect(txn) as later:
        assert scalar(later, "SELECT pg_try_advisory_lock(%s)", (key,)) is True
        assert scalar(later, "SELECT pg_advisory_unlock(%s)", (key,)) is True


def test_set_of_an_untracked_parameter_pins(txn: ProxyProcess, pg_cluster: LocalCluster) -> None:
    with primary_conn(pg_cluster) as direct:
        default = scalar(direct, "SHOW work_mem")
    assert default != "7MB"
    with connect(txn, application_name="work-mem") as conn, connect(txn) as other:
        conn.execute("SET work_mem = '7MB'")
        servers = set()
        for _ in range(6):
            with conn.transaction():
                assert scalar(conn, "SHOW work_mem") == "7MB"
                servers.add(server_of(conn))
            assert scalar(conn, "SHOW work_mem") == "7MB"
            servers.add(server_of(conn))
            assert scalar(other, "SHOW work_mem") == default
            with other.transaction():
                assert scalar(other, "SHOW work_mem") == default
        assert len(servers) == 1, servers
        assert pin_reason(txn, "work-mem") == "SET work_mem"


# --------------------------------------------------------------------------- prepared statements


def test_discard_all_and_deallocate_all_keep_prepared_statements_working(
    txn: ProxyProcess,
) -> None:
    """Two clients with psycopg's auto-prepare; one of them empties the server's prepared
    statements (DISCARD ALL, DEALLOCATE ALL; prepared themselves, and as simple queries).
    On ``single`` both share one server connection, so the other client's statement is
    gone from under it too."""
    query = "SELECT %s::int * 3, 'tripled'"
    as_parsed = "SELECT $1::int * 3, 'tripled'"

    def use(conn: psycopg.Connection[Any], value: int) -> None:
        assert conn.execute(query, (value,)).fetchone() == (3 * value, "tripled")

    for database in (SINGLE_DB, APP_DB):
        with (
            connect(txn, dbname=database, prepare_threshold=0) as first,
            connect(txn, dbname=database, prepare_threshold=0) as second,
        ):
            steps: list[tuple[psycopg.Connection[Any], str, bool]] = [
                (first, "DISCARD ALL", True),
                (second, "DEALLOCATE ALL", False),
                (first, "DISCARD ALL", True),  # prepared again by psycopg: same statement
                (second, "DEALLOCATE ALL", True),
                (second, "DEALLOCATE ALL", True),
                (first, "DISCARD ALL", False),
            ]
            for n, (conn, command, prepare) in enumerate(steps):
                use(first, n)
                use(second, n)
                conn.execute(command, prepare=prepare)
                use(first, n + 100)
                use(second, n + 100)
            for conn in (first, second):
                with conn.transaction():
                    use(conn, 7)
                    names = conn.execute(
                        "SELECT name FROM pg_prepared_statements WHERE statement = %s",
                        (as_parsed,),
                    ).fetchall()
                assert len(names) == 1 and names[0][0].startswith("pgr_"), names
                assert conn.info.transaction_status == IDLE


@PRIMARY_ONLY
def test_deallocate_all_prepared_by_one_client_leaves_another_clients_statements(
    txn: ProxyProcess,
) -> None:
    """On ``single`` two clients share one server connection. asyncpg prepares DEALLOCATE
    ALL (Parse, Describe, Flush) and executes it later (Bind, Execute, Sync). Neither step
    may break the other client's prepared statement: preparing deallocates nothing, and
    after the execution the proxy must prepare the other client's statement again."""
    query = "SELECT %s::int + 1000"

    async def scenario(other: psycopg.Connection[Any]) -> None:
        def other_runs(n: int) -> Any:
            return scalar(other, query, (n,))

        conn = await asyncpg.connect(**asyncpg_params(txn, database=SINGLE_DB))
        try:
            assert await asyncio.to_thread(other_runs, 1) == 1001  # prepared on the server
            deallocate = await conn.prepare("DEALLOCATE ALL")
            assert await conn.fetchval("SELECT $1::int - 1", 3) == 2  # a Sync: server released
            assert await asyncio.to_thread(other_runs, 2) == 1002
            await deallocate.fetch()
            assert await asyncio.to_thread(other_runs, 3) == 1003
        finally:
            await conn.close()

    with connect(txn, dbname=SINGLE_DB, prepare_threshold=0) as other:
        asyncio.run(asyncio.wait_for(scenario(other), 30))
        assert scalar(other, query, (5,)) == 1005


# --------------------------------------------------------------------------- pool settings


@PRIMARY_ONLY
def test_idle_transaction_timeout_ends_an_idle_transaction_with_25P03(
    txn: ProxyProcess, pg_cluster: LocalCluster, scratch: str
) -> None:
    # A transaction that keeps working for longer than the timeout is left alone.
    with connect(txn, dbname=IDLE_DB, autocommit=False) as busy:
        for i in range(5):
            busy.execute(f"INSERT INTO {scratch} VALUES (%s, 'busy')", (i,))
            time.sleep(IDLE_TIMEOUT_S * 0.4)
        busy.commit()
        time.sleep(IDLE_TIMEOUT_S * 1.5)  # idle outside a transaction: no timeout either
        assert scalar(busy, "SELECT 1") == 1
        busy.commit()
    with RawClient(txn.port, timeout=10) as idle:
        assert idle.login(APP, APP_PW, IDLE_DB).ok
        assert idle.query("BEGIN")[-1] == ("Z", b"T")
        inserted = idle.query(f"INSERT INTO {scratch} VALUES (-1, 'idle')")
        assert inserted[-1] == ("Z", b"T"), inserted
        idle_since = time.monotonic()
        frames = idle.read_until_closed(timeout=10)
        waited = time.monotonic() - idle_since
    assert [tag for tag, _ in frames] == ["E"], frames
    error = errors_in(frames)[0]
    assert error.severity_nonlocalized == "FATAL"
    assert error.sqlstate == "25P03"
    assert "idle_transaction_timeout" in error.message
    assert IDLE_TIMEOUT_S * 0.9 <= waited <= IDLE_TIMEOUT_S + 4, waited
    # The one server connection is clean for the next client; nothing was committed.
    with connect(txn, dbname=IDLE_DB) as later:
        assert scalar(later, "SELECT now() = statement_timestamp()") is True
        assert later.info.transaction_status == IDLE
    with primary_conn(pg_cluster) as direct:
        assert scalar(direct, f"SELECT count(*) FROM {scratch} WHERE note = 'idle'") == 0
        assert scalar(direct, f"SELECT count(*) FROM {scratch} WHERE note = 'busy'") == 5
        wait_for(
            lambda: (
                not scalar(
                    direct,
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s "
                    "AND state LIKE 'idle in transaction%%'",
                    (APP,),
                )
            ),
            10,
            "no app server connection idle in a transaction",
        )


@PRIMARY_ONLY
def test_reserve_pool_serves_a_waiting_client_after_reserve_timeout(txn: ProxyProcess) -> None:
    with (
        connect(txn, dbname=RESERVE_DB, autocommit=False) as holder,
        connect(txn, dbname=RESERVE_DB) as waiter,
    ):
        assert scalar(waiter, "SELECT 1") == 1  # logged in and idle
        holder_pid = scalar(holder, "SELECT pg_backend_pid()")  # holds the pool's only one
        began = time.monotonic()
        waiter_pid = scalar(waiter, "SELECT pg_backend_pid()")
        waited = time.monotonic() - began
        assert RESERVE_TIMEOUT_S * 0.8 <= waited < RESERVE_TIMEOUT_S + 3, waited
        assert waiter_pid != holder_pid
        assert holder.info.transaction_status == INTRANS  # it never let go
        holder.commit()


def test_server_check_query_runs_after_server_check_delay(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    """The check query bumps a sequence, so the primary counts the checks: none while the
    connection is reused within the delay, one after; and a server connection killed
    while idle never shows as an error to the next client."""
    sequence = unique_name("checks")
    delay = 1.0
    with primary_conn(pg_cluster) as direct:
        direct.execute(f"CREATE SEQUENCE {sequence}")
        direct.execute(f"GRANT USAGE, SELECT, UPDATE ON SEQUENCE {sequence} TO {APP}")

        def checks() -> int:
            row = direct.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone()
            assert row is not None
            return int(row[0]) if row[1] else 0

        config = base_config(
            pg_cluster,
            pool={
                "mode": "transaction",
                "size": 1,
                "server_check_delay": f"{delay}s",
                "server_check_query": f"SELECT nextval('{sequence}')",
            },
            monitor={"user": MONITOR_USER},
            databases={APP_DB: {"replicas": []}},
        )
        proxy = start_proxy(config)
        try:
            with connect(proxy) as conn:
                pid = scalar(conn, "SELECT pg_backend_pid()")
                for i in range(5):
                    assert scalar(conn, "SELECT %s::int", (i,)) == i
                assert checks() == 0
                time.sleep(delay * 1.3)
                assert scalar(conn, "SELECT pg_backend_pid()") == pid  # tested, then reused
                assert checks() == 1
                time.sleep(delay * 1.3)
                terminate(pg_cluster, pid)
                replaced = scalar(conn, "SELECT pg_backend_pid()")  # no error
                assert replaced != pid
                assert conn.info.transaction_status == IDLE
                assert scalar(conn, "SELECT 'after the kill'") == "after the kill"
        finally:
            direct.execute(f"DROP SEQUENCE {sequence}")


def test_server_check_query_gives_up_on_a_silent_server_connection(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    """The backend behind an idle server connection stops (SIGSTOP): its socket stays
    open, so only the check query can tell. The check must not wait forever: within about
    server_connect_timeout the client gets another server connection."""
    connect_timeout = 2.0
    config = base_config(
        pg_cluster,
        pool={
            "mode": "transaction",
            "size": 2,
            "server_check_delay": "0.3s",
            "server_connect_timeout": f"{connect_timeout:g}s",
        },
        monitor={"user": MONITOR_USER},
        databases={APP_DB: {"replicas": []}},
    )
    proxy = start_proxy(config)
    with connect(proxy) as conn, ThreadPoolExecutor(max_workers=1) as background:
        pid = scalar(conn, "SELECT pg_backend_pid()")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(0.5)  # idle past the check delay
            began = time.monotonic()
            replaced = background.submit(scalar, conn, "SELECT pg_backend_pid()")
            try:
                new_pid = replaced.result(timeout=connect_timeout + 8)
            except TimeoutError:
                pytest.fail("the client still waits on the silent server connection")
            assert time.monotonic() - began < connect_timeout + 4
            assert new_pid != pid
        finally:
            os.kill(pid, signal.SIGCONT)
            with primary_conn(pg_cluster, "postgres") as direct:  # unless the proxy closed it
                direct.execute(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE pid = %s",
                    (pid,),
                )
        assert scalar(conn, "SELECT 'after the silent one'") == "after the silent one"


# --------------------------------------------------------------------------- network faults


def test_reset_during_a_transaction_fails_that_client_only(
    pg_cluster: LocalCluster,
    make_proxy: ToxiFactory,
    start_proxy: ProxyFactory,
    scratch: str,
) -> None:
    primary = pg_cluster.primary
    toxi, toxi_port = make_proxy(unique_name("txn_primary"), primary.host, primary.port)
    config = base_config(
        pg_cluster,
        pool={"mode": "transaction", "size": 3, "server_connect_timeout": "2s"},
        databases={APP_DB: {"primary": {"host": "127.0.0.1", "port": toxi_port}, "replicas": []}},
    )
    proxy = start_proxy(config)
    backend = f"primary 127.0.0.1:{toxi_port}"
    others = [connect(proxy) for _ in range(3)]
    try:
        with connect(proxy, autocommit=False) as victim:
            for n, other in enumerate(others):
                other.execute(f"INSERT INTO {scratch} VALUES (%s, 'before')", (n,))
            victim.execute(f"INSERT INTO {scratch} VALUES (-1, 'victim')")
            assert victim.info.transaction_status == INTRANS
            toxi.add_toxic(
                name="reset", type="reset_peer", stream="upstream", attributes={"timeout": 0}
            )
            try:
                with pytest.raises(psycopg.OperationalError) as lost:
                    victim.execute(f"INSERT INTO {scratch} VALUES (-2, 'victim')")
                assert lost.value.sqlstate == "08006", str(lost.value)
                assert backend in str(lost.value)
            finally:
                toxi.destroy_toxic("reset")
            assert victim.broken
        # The others were between transactions: their sessions go on.
        for n, other in enumerate(others):
            with other.transaction():
                other.execute(f"INSERT INTO {scratch} VALUES (%s, 'after')", (n,))
                assert scalar(other, f"SELECT count(*) FROM {scratch} WHERE id = %s", (n,)) == 2
            assert not other.broken
    finally:
        for other in others:
            other.close()
    assert proxy.is_running()
    with primary_conn(pg_cluster) as direct:
        rows = direct.execute(f"SELECT note, count(*) FROM {scratch} GROUP BY note ORDER BY note")
        assert rows.fetchall() == [("after", 3), ("before", 3)]
