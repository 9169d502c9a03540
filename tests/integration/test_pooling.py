"""Session pooling: pool size, waiting, client limits, reset, idle/lifetime, outages."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import psycopg
import pytest
from harness import ProxyProcess, base_config
from util import Backends, Background, Sampler, connect, login_error, scalar, wait_for

from router.localcluster import LocalCluster

pytestmark = pytest.mark.integration

ProxyFactory = Callable[..., ProxyProcess]
ClusterFactory = Callable[..., LocalCluster]

APP = LocalCluster.APP_USER
APP_PW = LocalCluster.APP_PASSWORD
MD5_USER = LocalCluster.MD5_USER
MD5_PW = LocalCluster.MD5_PASSWORD


def backend_pid(conn: psycopg.Connection[object]) -> int:
    pid = scalar(conn, "SELECT pg_backend_pid()")
    assert isinstance(pid, int)
    return pid


# --------------------------------------------------------------------------- size and waiting


def test_third_client_waits_for_one_of_two_server_connections(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(base_config(pg_cluster, pool={"size": 2}))
    sampler = Sampler(pg_cluster.primary, [APP])
    try:
        first, second = connect(proxy.dsn()), connect(proxy.dsn())
        pids = {backend_pid(first), backend_pid(second)}
        assert len(pids) == 2
        third = Background(lambda: connect(proxy.dsn(), connect_timeout=10))
        # The third client is queued behind the two sessions, not given a third server.
        time.sleep(0.5)
        assert not third.done(), "the third client got in while both sessions were busy"
        first_pid = backend_pid(first)
        closed_at = time.monotonic()
        first.close()
        conn = third.join(timeout=5)
        try:
            assert third.finished_at is not None and third.finished_at >= closed_at
            assert backend_pid(conn) == first_pid  # it got the first client's server
            assert scalar(conn, "SELECT 1") == 1
        finally:
            conn.close()
            second.close()
    finally:
        sampler.stop()
    assert sampler.samples > 5
    assert sampler.peak == 2


def test_query_wait_timeout_fails_a_waiting_client_with_57014(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    config = base_config(pg_cluster, pool={"size": 1, "query_wait_timeout": "1s"})
    proxy = start_proxy(config)
    with connect(proxy.dsn()) as holder:
        assert scalar(holder, "SELECT 1") == 1
        began = time.monotonic()
        error = login_error(proxy.port, APP, APP_PW)
        waited = time.monotonic() - began
        assert error.sqlstate == "57014"
        assert "query_wait_timeout" in error.message
        assert 0.9 <= waited <= 4, waited
        assert scalar(holder, "SELECT 2") == 2  # the holder is unaffected
    with connect(proxy.dsn()) as later:  # and the pool still serves once it is free
        assert scalar(later, "SELECT 3") == 3


def test_max_client_conn_refuses_the_fourth_client_with_53300(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(base_config(pg_cluster, listen={"max_client_conn": 3}))
    clients = [connect(proxy.dsn()) for _ in range(3)]
    try:
        error = login_error(proxy.port, APP, APP_PW)
        assert error.sqlstate == "53300"
        assert "max_client_conn" in error.message
        with pytest.raises(psycopg.OperationalError, match="max_client_conn"):
            connect(proxy.dsn())
        for conn in clients:
            assert scalar(conn, "SELECT 1") == 1
        clients.pop().close()

        def newcomer_gets_in() -> bool:
            try:
                clients.append(connect(proxy.dsn()))
            except psycopg.OperationalError:
                return False
            return True

        wait_for(newcomer_gets_in, 5, "a new client after one disconnected")
        assert scalar(clients[-1], "SELECT 4") == 4
    finally:
        for conn in clients:
            conn.close()


# --------------------------------------------------------------------------- reuse and reset


def test_server_reset_query_clears_session_state_before_reuse(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(base_config(pg_cluster, pool={"size": 1}))
    table = "reset_probe_" + uuid.uuid4().hex[:8]
    with connect(proxy.dsn()) as first:
        default_timeout = scalar(first, "SHOW statement_timeout")
        first.execute("SET statement_timeout = 777")
        first.execute(f"CREATE TEMP TABLE {table} (x int)")
        assert scalar(first, "SHOW statement_timeout") == "777ms"
        pid = backend_pid(first)
    with connect(proxy.dsn()) as second:
        assert backend_pid(second) == pid  # the same server backend was reused...
        assert scalar(second, "SHOW statement_timeout") == default_timeout  # ...reset
        assert scalar(second, "SELECT count(*) FROM pg_class WHERE relname = %s", (table,)) == 0


def test_server_idle_timeout_closes_idle_server_connections(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(base_config(pg_cluster, pool={"server_idle_timeout": "1s"}))
    backends = Backends(pg_cluster.primary)
    try:
        with connect(proxy.dsn()) as conn:
            pid = backend_pid(conn)
        assert pid in backends.pids()  # parked idle in the pool after the client left
        wait_for(lambda: pid not in backends.pids(), 5, "the idle server connection to close")
        assert backends.count() == 0
    finally:
        backends.close()


def test_min_size_keeps_connections_open_past_the_idle_timeout(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    config = base_config(pg_cluster, pool={"server_idle_timeout": "1s", "min_size": 2})
    proxy = start_proxy(config)
    backends = Backends(pg_cluster.primary)
    try:
        clients = [connect(proxy.dsn()) for _ in range(3)]
        assert len({backend_pid(c) for c in clients}) == 3
        for conn in clients:
            conn.close()

        def shrunk_to_min_size() -> set[int] | None:
            pids = backends.pids()
            return pids if len(pids) == 2 else None

        kept = wait_for(shrunk_to_min_size, 6, "the pool to shrink to min_size")
        # Watch for three janitor rounds past the idle timeout: the two stay, unchanged.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert backends.pids() == kept
            time.sleep(0.1)
    finally:
        backends.close()


def test_server_lifetime_retires_old_connections_on_release(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(base_config(pg_cluster, pool={"size": 1, "server_lifetime": "1s"}))
    backends = Backends(pg_cluster.primary)
    try:
        with connect(proxy.dsn()) as first:
            old = backend_pid(first)
            # Hold the session until its server connection is older than server_lifetime.
            wait_for(
                lambda: scalar(
                    first,
                    "SELECT clock_timestamp() - backend_start > '1.2s' "
                    "FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                ),
                5,
                "the server connection to age past server_lifetime",
                interval=0.1,
            )
        with connect(proxy.dsn()) as second:
            assert backend_pid(second) != old
        wait_for(lambda: old not in backends.pids(), 5, "the retired connection to close")
    finally:
        backends.close()


def test_max_db_connections_caps_all_users_of_a_database(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    config = base_config(pg_cluster, pool={"max_db_connections": 1, "query_wait_timeout": "10s"})
    proxy = start_proxy(config)
    sampler = Sampler(pg_cluster.primary, [APP, MD5_USER])
    try:
        first = connect(proxy.dsn())
        assert scalar(first, "SELECT current_user") == APP
        other = Background(lambda: connect(proxy.dsn(MD5_USER, MD5_PW), connect_timeout=15))
        time.sleep(0.5)
        assert not other.done(), "a second server connection was opened for app_md5"
        closed_at = time.monotonic()
        first.close()
        conn = other.join(timeout=6)
        try:
            assert other.finished_at is not None and other.finished_at >= closed_at
            assert scalar(conn, "SELECT current_user") == MD5_USER
        finally:
            conn.close()
    finally:
        sampler.stop()
    assert sampler.samples > 5
    assert sampler.peak == 1


# --------------------------------------------------------------------------- outages


def test_primary_down_gives_08001_naming_the_backend_and_pool_recovers(
    make_cluster: ClusterFactory, start_proxy: ProxyFactory
) -> None:
    cluster = make_cluster(replicas=0)
    proxy = start_proxy(base_config(cluster))
    with connect(proxy.dsn()) as conn:
        assert scalar(conn, "SELECT 1") == 1
    cluster.primary.stop()
    error = login_error(proxy.port, APP, APP_PW)
    assert error.sqlstate in ("08001", "08006"), error
    assert f"primary 127.0.0.1:{cluster.primary.port}" in error.message
    with pytest.raises(psycopg.OperationalError, match=f"primary 127.0.0.1:{cluster.primary.port}"):
        connect(proxy.dsn())
    cluster.primary.start()

    def client_works() -> bool:
        try:
            with connect(proxy.dsn()) as conn:
                return bool(scalar(conn, "SELECT 1") == 1)
        except psycopg.OperationalError:
            return False

    wait_for(client_works, 10, "a client to get in after the primary came back", interval=0.2)
    assert proxy.is_running()
