"""A running proxy's lifecycle: SIGHUP and the admin console's RELOAD re-read the config
file (pool settings take effect, a bad file is reported and ignored, connected clients
stay, a backend's new address retires its old connections as they are released);
SIGTERM shuts down gracefully (no new connections, running transactions may finish
within shutdown_timeout, idle clients get 57P01); a second SIGINT is immediate."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import yaml
from e2e.util import connect, primary_conn, scalar, unique_name, wait_for
from harness import ADMIN_PASSWORD, ADMIN_USER, ProxyProcess, base_config
from util import RawClient, errors_in

from router.localcluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ProxyFactory = Callable[..., ProxyProcess]
ToxiFactory = Callable[[str, str, int], tuple[Any, int]]

APP = LocalCluster.APP_USER
APP_PW = LocalCluster.APP_PASSWORD
APP_DB = LocalCluster.APP_DB
SESSION_USER = LocalCluster.MD5_USER  # pool_mode: session (a per-user override)
SESSION_PW = LocalCluster.MD5_PASSWORD
RELOADED = "configuration reloaded from"
RELOAD_FAILED = "reload failed, keeping the running configuration"


def lifecycle_config(cluster: LocalCluster, **overrides: Any) -> dict[str, Any]:
    """Transaction pooling on the primary alone (one server connection unless changed)."""
    config = base_config(
        cluster,
        pool={"mode": "transaction", "size": 1, "query_wait_timeout": "20s"},
        auth={"users": {SESSION_USER: {"password": SESSION_PW, "pool_mode": "session"}}},
        databases={APP_DB: {"replicas": []}},
    )
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture
def scratch(pg_cluster: LocalCluster) -> Iterator[str]:
    name = unique_name("life")
    with primary_conn(pg_cluster) as direct:
        direct.execute(f"CREATE TABLE {name} (id int)")
        direct.execute(f"ALTER TABLE {name} OWNER TO {APP}")
    yield name
    with primary_conn(pg_cluster) as direct:
        direct.execute(f"DROP TABLE IF EXISTS {name}")


def admin(proxy: ProxyProcess) -> psycopg.Connection[Any]:
    return psycopg.connect(
        proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgrouter"),
        autocommit=True,
        prepare_threshold=None,
        connect_timeout=10,
    )


def show(console: psycopg.Connection[Any], what: str) -> list[dict[str, Any]]:
    cur = console.execute(f"SHOW {what}")
    assert cur.description is not None
    names = [column.name for column in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def setting(console: psycopg.Connection[Any], key: str) -> str:
    return next(str(row["value"]) for row in show(console, "CONFIG") if row["key"] == key)


def edit_config(proxy: ProxyProcess, change: Callable[[dict[str, Any]], None]) -> None:
    config = yaml.safe_load(proxy.config_path.read_text())
    change(config)
    proxy.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def sighup(proxy: ProxyProcess, expect: str) -> str:
    """Send SIGHUP and wait for the log line it causes; returns the log from there."""
    seen = proxy.log_text().count(expect)
    proxy.send_signal(signal.SIGHUP)
    wait_for(lambda: proxy.log_text().count(expect) > seen, 10, f"{expect!r} in the log")
    log = proxy.log_text()
    return log[log.rindex(expect) :]


def refuses_connections(proxy: ProxyProcess) -> bool:
    """Whether the listener is gone. A connect that races its close can be taken into the
    backlog and then reset (ECONNRESET) rather than refused: gone too."""
    try:
        with socket.create_connection((proxy.host, proxy.port), timeout=1):
            return False
    except (ConnectionRefusedError, ConnectionResetError):
        return True


def exit_code(proxy: ProxyProcess, timeout: float) -> int:
    try:
        return proxy.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pgrouter still running {timeout:g}s later", pytrace=False)


def server_pids(cluster: LocalCluster) -> set[int]:
    with primary_conn(cluster, "postgres") as direct:
        rows = direct.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND datname = %s",
            (APP, APP_DB),
        ).fetchall()
    return {row[0] for row in rows}


# --------------------------------------------------------------------------- reload


@pytest.mark.parametrize("how", ["SIGHUP", "RELOAD"])
def test_reload_applies_pool_size_keeps_clients_and_rejects_a_bad_file(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, scratch: str, how: str
) -> None:
    proxy = start_proxy(lifecycle_config(pg_cluster))
    with (
        connect(proxy, autocommit=False) as holder,
        connect(proxy) as waiter,
        psycopg.connect(proxy.dsn(SESSION_USER, SESSION_PW), autocommit=True) as session,
        admin(proxy) as console,
        ThreadPoolExecutor(max_workers=1) as background,
    ):

        def reload() -> None:
            if how == "SIGHUP":
                sighup(proxy, RELOADED)
            else:
                console.execute("RELOAD")

        assert scalar(waiter, "SELECT 1") == 1
        session_pid = scalar(session, "SELECT pg_backend_pid()")
        holder.execute(f"INSERT INTO {scratch} VALUES (1)")  # holds the only server
        served = background.submit(scalar, waiter, "SELECT 'served'")

        def app_pool_waiting() -> bool:
            rows = show(console, "POOLS")
            return any(r["user"] == APP and str(r["cl_waiting"]) == "1" for r in rows)

        wait_for(app_pool_waiting, 10, "the second client to wait for a server")
        edit_config(proxy, lambda c: c["pool"].update(size=2))
        reload()
        # The new size serves the waiting client while the holder still has its server.
        assert served.result(timeout=10) == "served"
        assert holder.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert setting(console, "pool.size") == "2"
        holder.execute(f"INSERT INTO {scratch} VALUES (2)")
        holder.commit()
        assert scalar(session, "SELECT pg_backend_pid()") == session_pid

        # A bad file is reported; the running configuration stays.
        edit_config(proxy, lambda c: c["pool"].update(size=0))
        if how == "SIGHUP":
            reported = sighup(proxy, RELOAD_FAILED)
            assert "pool.size" in reported.splitlines()[1], reported
        else:
            with pytest.raises(psycopg.Error, match=r"pool\.size") as failed:
                console.execute("RELOAD")
            assert failed.value.sqlstate == "F0000"
        assert setting(console, "pool.size") == "2"
        assert proxy.is_running()
        holder.execute(f"INSERT INTO {scratch} VALUES (3)")
        holder.commit()
        assert scalar(waiter, "SELECT 'still here'") == "still here"
        assert scalar(session, "SELECT pg_backend_pid()") == session_pid
        with connect(proxy) as newcomer:
            assert scalar(newcomer, "SELECT 'new client'") == "new client"
    with primary_conn(pg_cluster) as direct:
        assert direct.execute(f"SELECT id FROM {scratch} ORDER BY id").fetchall() == [
            (1,),
            (2,),
            (3,),
        ]


def test_changed_backend_address_retires_its_connections_on_release(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, make_proxy: ToxiFactory, scratch: str
) -> None:
    """The primary is first reached through Toxiproxy, then (after the reload) directly.
    The idle server connection closes at once, the busy one when its transaction ends;
    with the old address cut, clients go on over the new one."""
    primary = pg_cluster.primary
    toxi, toxi_port = make_proxy(unique_name("old_address"), primary.host, primary.port)
    config = lifecycle_config(pg_cluster)
    config["pool"]["size"] = 2
    config["databases"][APP_DB]["primary"] = {"host": "127.0.0.1", "port": toxi_port}
    proxy = start_proxy(config)
    with connect(proxy, autocommit=False) as busy, connect(proxy) as idle:
        busy.execute(f"INSERT INTO {scratch} VALUES (1)")
        busy_pid = scalar(busy, "SELECT pg_backend_pid()")
        idle_pid = scalar(idle, "SELECT pg_backend_pid()")  # then parked idle in the pool
        assert busy_pid != idle_pid
        assert {busy_pid, idle_pid} <= server_pids(pg_cluster)
        edit_config(
            proxy,
            lambda c: c["databases"][APP_DB].update(
                primary={"host": primary.host, "port": primary.port}
            ),
        )
        reported = sighup(proxy, RELOADED)
        assert "backend changed" in reported.splitlines()[0], reported
        wait_for(
            lambda: idle_pid not in server_pids(pg_cluster), 10, "the idle connection to close"
        )
        # The busy one finishes its transaction on the old connection ...
        busy.execute(f"INSERT INTO {scratch} VALUES (2)")
        assert scalar(busy, "SELECT pg_backend_pid()") == busy_pid
        busy.commit()
        # ... and is closed when released.
        wait_for(
            lambda: busy_pid not in server_pids(pg_cluster), 10, "the released connection to close"
        )
        toxi.disable()  # nothing may use the old address any more
        fresh = scalar(idle, "SELECT pg_backend_pid()")
        assert fresh not in (busy_pid, idle_pid)
        busy.execute(f"INSERT INTO {scratch} VALUES (3)")
        busy.commit()
    with primary_conn(pg_cluster) as direct:
        assert direct.execute(f"SELECT id FROM {scratch} ORDER BY id").fetchall() == [
            (1,),
            (2,),
            (3,),
        ]


# --------------------------------------------------------------------------- shutdown


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_sigterm_lets_a_running_transaction_commit_then_exits(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, scratch: str, mode: str
) -> None:
    """In either pool mode a client between transactions has nothing to finish: it is
    disconnected at once, and the proxy exits as soon as the last transaction ends."""
    timeout = 10.0
    config = lifecycle_config(pg_cluster, shutdown_timeout=f"{timeout:g}s")
    config["pool"].update(size=2, mode=mode)
    proxy = start_proxy(config)
    with connect(proxy, autocommit=False) as running, RawClient(proxy.port, timeout=10) as idle:
        running.execute(f"INSERT INTO {scratch} VALUES (1)")
        assert idle.login(APP, APP_PW).ok
        assert idle.query("SELECT 1")[-1] == ("Z", b"I")
        began = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        # The idle client is told why and disconnected.
        frames = idle.read_until_closed(timeout=5)
        assert [tag for tag, _ in frames] == ["E"], frames
        error = errors_in(frames)[0]
        assert (error.severity_nonlocalized, error.sqlstate) == ("FATAL", "57P01")
        # No new connections; the transaction goes on and commits.
        wait_for(lambda: refuses_connections(proxy), 5, "the listener to close")
        assert proxy.is_running()
        running.execute(f"INSERT INTO {scratch} VALUES (2)")
        running.commit()
        assert exit_code(proxy, timeout) == 0
        assert time.monotonic() - began < timeout * 0.8  # it did not wait for the timeout
        with pytest.raises(psycopg.OperationalError):
            running.execute("SELECT 1")
    with primary_conn(pg_cluster) as direct:
        assert direct.execute(f"SELECT id FROM {scratch} ORDER BY id").fetchall() == [(1,), (2,)]


def test_sigterm_closes_an_unfinished_transaction_after_shutdown_timeout(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, scratch: str
) -> None:
    timeout = 1.0
    proxy = start_proxy(lifecycle_config(pg_cluster, shutdown_timeout=f"{timeout:g}s"))
    with connect(proxy, autocommit=False) as running:
        running.execute(f"INSERT INTO {scratch} VALUES (1)")
        began = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        assert exit_code(proxy, timeout + 10) == 0
        assert time.monotonic() - began >= timeout * 0.9
        with pytest.raises(psycopg.OperationalError) as ended:
            running.execute(f"INSERT INTO {scratch} VALUES (2)")
        assert ended.value.sqlstate in ("57P01", None), str(ended.value)
    with primary_conn(pg_cluster) as direct:
        assert scalar(direct, f"SELECT count(*) FROM {scratch}") == 0


def test_second_sigint_is_immediate(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, scratch: str
) -> None:
    proxy = start_proxy(lifecycle_config(pg_cluster, shutdown_timeout="30s"))
    with connect(proxy, autocommit=False) as running:
        running.execute(f"INSERT INTO {scratch} VALUES (1)")
        proxy.send_signal(signal.SIGINT)  # graceful: waits for the transaction
        wait_for(lambda: refuses_connections(proxy), 5, "the listener to close")
        time.sleep(0.5)
        assert proxy.is_running()
        began = time.monotonic()
        proxy.send_signal(signal.SIGINT)
        assert exit_code(proxy, 10) == 0
        assert time.monotonic() - began < 3
        with pytest.raises(psycopg.OperationalError):
            running.execute(f"INSERT INTO {scratch} VALUES (2)")
    with primary_conn(pg_cluster) as direct:
        assert scalar(direct, f"SELECT count(*) FROM {scratch}") == 0
