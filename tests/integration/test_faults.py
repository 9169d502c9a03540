"""Network faults between the proxy and the primary (Toxiproxy in between), and a primary
that stops and comes back. The client that loses its server gets a clear error naming the
backend; everyone else, and the proxy process, carry on."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from e2e.util import (
    asyncpg_params,
    connect,
    primary_conn,
    running,
    scalar,
    unique_name,
    wait_for,
)
from harness import ProxyProcess, base_config

from router.localcluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

POOL_MODES = ["session"]

LATENCY_S = 0.2
CONNECT_TIMEOUT_S = 1.0
DIRECT_DB = "direct"  # a second database entry: the same primary, without Toxiproxy

ProxyFactory = Callable[..., ProxyProcess]
ToxiFactory = Callable[[str, str, int], tuple[Any, int]]


@pytest.fixture(params=POOL_MODES)
def pool_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Faulty:
    """The proxy under test with database ``app`` reached through a Toxiproxy proxy."""

    def __init__(self, proxy: ProxyProcess, toxi: Any, toxi_port: int) -> None:
        self.proxy = proxy
        self.toxi = toxi
        self.backend = f"primary 127.0.0.1:{toxi_port}"  # how the proxy names the backend


@pytest.fixture
def faulty(
    pg_cluster: LocalCluster, make_proxy: ToxiFactory, start_proxy: ProxyFactory, pool_mode: str
) -> Faulty:
    primary = pg_cluster.primary
    toxi, toxi_port = make_proxy(unique_name("primary"), primary.host, primary.port)
    config = base_config(
        pg_cluster,
        pool={"mode": pool_mode, "server_connect_timeout": f"{CONNECT_TIMEOUT_S}s"},
        databases={
            # No replicas: every statement must cross the faulty link to the primary.
            LocalCluster.APP_DB: {
                "primary": {"host": "127.0.0.1", "port": toxi_port},
                "replicas": [],
            },
            DIRECT_DB: {
                "primary": {"host": primary.host, "port": primary.port, "dbname": "app"},
            },
        },
    )
    return Faulty(start_proxy(config), toxi, toxi_port)


@pytest.fixture
def scratch_table(pg_cluster: LocalCluster) -> Iterator[str]:
    name = unique_name("faults")
    with primary_conn(pg_cluster) as conn:
        conn.execute(f"CREATE TABLE {name} (id int)")
        conn.execute(f"GRANT ALL ON {name} TO app")
    yield name
    with primary_conn(pg_cluster) as conn:
        conn.execute(f"DROP TABLE {name}")


class Background:
    """Run ``fn`` in a thread; ``join`` returns its result or its exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished_at = 0.0
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float) -> BaseException | None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            pytest.fail(f"background call still running after {timeout:g}s", pytrace=False)
        return self.error


def wait_until_running(cluster: LocalCluster, marker: str) -> None:
    def on_primary() -> bool:
        return any(inst == "primary" for inst, *_ in running(cluster, marker))

    wait_for(on_primary, 10, f"query {marker} to run on the primary")


def stop_leftovers(cluster: LocalCluster, marker: str) -> None:
    """End server sessions whose client link was cut while they slept."""
    with primary_conn(cluster, dbname="postgres") as direct:
        direct.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE %s "
            "AND pid <> pg_backend_pid()",
            (f"%{marker}%",),
        )


def login_error(proxy: ProxyProcess, database: str = LocalCluster.APP_DB) -> asyncpg.PostgresError:
    """The ErrorResponse that ends a login attempt (asyncpg reports its SQLSTATE)."""

    async def attempt() -> None:
        conn = await asyncpg.connect(**asyncpg_params(proxy, database=database, timeout=30))
        await conn.close()

    try:
        asyncio.run(attempt())
    except asyncpg.PostgresError as exc:
        return exc
    pytest.fail(f"login to {database} through the proxy succeeded; expected an error")


def assert_healthy(proxy: ProxyProcess, database: str = LocalCluster.APP_DB) -> None:
    """A new client logs in and runs a query; the proxy process is still the same one."""
    assert proxy.is_running(), f"pgrouter exited with code {proxy.returncode}"
    with psycopg.connect(proxy.dsn(dbname=database), autocommit=True, connect_timeout=10) as conn:
        assert scalar(conn, "SELECT 'healthy'") == "healthy"


# --------------------------------------------------------------------------- latency


def test_latency_slows_queries_but_they_succeed(faulty: Faulty) -> None:
    with connect(faulty.proxy) as conn:
        assert scalar(conn, "SELECT 1") == 1
        faulty.toxi.add_toxic(
            name="latency",
            type="latency",
            stream="downstream",
            attributes={"latency": int(LATENCY_S * 1000), "jitter": 0},
        )
        began = time.monotonic()
        rows = conn.execute("SELECT g FROM generate_series(1, 5000) g").fetchall()
        assert time.monotonic() - began >= LATENCY_S * 0.95
        assert [r[0] for r in rows] == list(range(1, 5001))
        began = time.monotonic()
        for i in range(3):
            assert scalar(conn, "SELECT %s::int", (i,)) == i
        assert time.monotonic() - began >= 3 * LATENCY_S * 0.95
    # A new client through the slow link logs in and works too.
    began = time.monotonic()
    with connect(faulty.proxy) as conn:
        assert scalar(conn, "SELECT 'slow but fine'") == "slow but fine"
    assert time.monotonic() - began >= LATENCY_S * 0.95
    faulty.toxi.destroy_toxic("latency")
    assert_healthy(faulty.proxy)


# --------------------------------------------------------------------------- link cut


def test_link_cut_during_query_fails_only_that_client(
    faulty: Faulty, pg_cluster: LocalCluster
) -> None:
    marker = unique_name("cut_mid_query")
    with connect(faulty.proxy) as victim, connect(faulty.proxy, dbname=DIRECT_DB) as bystander:
        sleeper = Background(lambda: victim.execute(f"SELECT pg_sleep(30) /* {marker} */"))
        wait_until_running(pg_cluster, marker)
        cut_at = time.monotonic()
        faulty.toxi.disable()  # drops every connection through the link
        try:
            error = sleeper.join(10)
            assert isinstance(error, psycopg.OperationalError), repr(error)
            assert sleeper.finished_at - cut_at < 5
            assert error.sqlstate == "08006", str(error)
            assert faulty.backend in str(error)
            assert victim.broken
            # A client of another database (another pool) never noticed.
            assert scalar(bystander, "SELECT 'unaffected'") == "unaffected"
            assert faulty.proxy.is_running()
        finally:
            faulty.toxi.enable()
            stop_leftovers(pg_cluster, marker)
        assert scalar(bystander, "SELECT 'still unaffected'") == "still unaffected"
    assert_healthy(faulty.proxy)
    assert_healthy(faulty.proxy, DIRECT_DB)


def test_reset_peer_inside_transaction_fails_that_client(
    faulty: Faulty, pg_cluster: LocalCluster, scratch_table: str
) -> None:
    with connect(faulty.proxy, autocommit=False) as victim, connect(faulty.proxy) as idle:
        assert scalar(idle, "SELECT 1") == 1  # logged in, then silent while the toxic is on
        victim.execute(f"INSERT INTO {scratch_table} VALUES (1)")
        assert victim.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        faulty.toxi.add_toxic(
            name="reset", type="reset_peer", stream="upstream", attributes={"timeout": 0}
        )
        try:
            with pytest.raises(psycopg.OperationalError) as lost:
                victim.execute(f"INSERT INTO {scratch_table} VALUES (2)")
            assert lost.value.sqlstate == "08006", str(lost.value)
            assert faulty.backend in str(lost.value)
            assert faulty.proxy.is_running()
        finally:
            faulty.toxi.destroy_toxic("reset")
        # reset_peer fires on traffic: the client that sent nothing kept a working session.
        assert scalar(idle, "SELECT 'idle unaffected'") == "idle unaffected"
    assert_healthy(faulty.proxy)
    with primary_conn(pg_cluster) as direct:  # the cut transaction never committed
        assert scalar(direct, f"SELECT count(*) FROM {scratch_table}") == 0


# --------------------------------------------------------------------------- login timeout


def test_unanswered_login_times_out_while_other_pools_work(faulty: Faulty) -> None:
    faulty.toxi.add_toxic(
        name="blackhole", type="timeout", stream="downstream", attributes={"timeout": 0}
    )
    try:
        began = time.monotonic()
        blocked = Background(lambda: login_error(faulty.proxy))
        # While that login hangs on the dead link, clients of another pool log in and work.
        for i in range(3):
            with connect(faulty.proxy, dbname=DIRECT_DB) as other:
                assert scalar(other, "SELECT %s::int * 2", (i,)) == 2 * i
        assert not blocked.done(), "the blocked login ended before server_connect_timeout"
        blocked.join(CONNECT_TIMEOUT_S + 10)
        elapsed = blocked.finished_at - began
        error = blocked.result
        assert isinstance(error, asyncpg.PostgresError), repr(blocked.error or error)
        assert error.sqlstate == "08001", str(error)
        assert faulty.backend in str(error)
        assert "server_connect_timeout" in str(error)
        assert CONNECT_TIMEOUT_S * 0.9 <= elapsed <= CONNECT_TIMEOUT_S + 3
    finally:
        faulty.toxi.destroy_toxic("blackhole")
    assert_healthy(faulty.proxy)


# --------------------------------------------------------------------------- primary restart


def test_primary_stop_and_restart(
    make_cluster: Callable[..., LocalCluster], start_proxy: ProxyFactory, pool_mode: str
) -> None:
    cluster = make_cluster(replicas=0)
    proxy = start_proxy(base_config(cluster, pool={"mode": pool_mode}))
    backend = f"primary 127.0.0.1:{cluster.primary.port}"
    marker = unique_name("stopped_mid_query")
    with connect(proxy) as idle, connect(proxy) as busy:
        assert scalar(idle, "SELECT 'before'") == "before"
        sleeper = Background(lambda: busy.execute(f"SELECT pg_sleep(30) /* {marker} */"))
        wait_until_running(cluster, marker)
        stopped_at = time.monotonic()
        cluster.primary.stop("fast")
        error = sleeper.join(15)
        assert isinstance(error, psycopg.OperationalError), repr(error)
        assert sleeper.finished_at - stopped_at < 10
        # Either the server's own goodbye (57P01) relayed, or the proxy's 08006.
        assert error.sqlstate in ("57P01", "08006"), str(error)
        with pytest.raises(psycopg.OperationalError):
            idle.execute("SELECT 'after'")
        # New logins while the primary is down: 08001 naming the backend.
        refused = login_error(proxy)
        assert refused.sqlstate == "08001", str(refused)
        assert backend in str(refused)
        assert proxy.is_running()
    cluster.primary.start()
    assert_healthy(proxy)
    with connect(proxy) as conn:
        assert scalar(conn, "SELECT pg_is_in_recovery()") is False
