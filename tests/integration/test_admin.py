"""The admin console (``psql -d pgrouter``) against a real cluster and proxy process:
psql output and headers, what SHOW reports about real sessions, and the control commands."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from harness import ADMIN_PASSWORD, ADMIN_USER, ProxyProcess, base_config
from util import Background, connect, login_error, scalar, self_signed_cert, wait_for

import pgrouter_native
from router.localcluster import LocalCluster

pytestmark = pytest.mark.integration

ProxyFactory = Callable[..., ProxyProcess]
Row = dict[str, Any]

APP = LocalCluster.APP_USER
APP_DB = LocalCluster.APP_DB

HEADERS = {
    "POOLS": "database,user,backend,cl_active,cl_waiting,sv_active,sv_idle,sv_used,sv_tested,"
    "sv_login,maxwait,maxwait_us,pool_mode",
    "CLIENTS": "type,user,database,state,addr,port,connect_time,request_time,wait,wait_us,ptr,"
    "link,tls,application_name,pinned,tx_status,last_write_lsn,min_lsn,route,backend",
    "SERVERS": "type,user,database,backend,state,addr,port,connect_time,request_time,ptr,link,"
    "remote_pid,tls,application_name,age_s",
    "STATS": "database,total_xact_count,total_query_count,total_received,total_sent,"
    "total_xact_time,total_query_time,total_wait_time,avg_xact_count,avg_query_count,"
    "avg_recv,avg_sent,avg_xact_time,avg_query_time,avg_wait_time",
    "DATABASES": "name,host,port,database,role,backend,force_user,pool_size,min_pool_size,"
    "reserve_pool,pool_mode,max_connections,current_connections,paused,disabled",
    "CONFIG": "key,value,default,changeable",
    "VERSION": "version",
    "USERS": "name,pool_mode,admin",
    "HELP": "command,description",
    "REPLICAS": "database,backend,host,port,role,state,in_recovery,writer,replay_lsn,receive_lsn,"
    "insert_lsn,lag_bytes,lag_seconds,last_probe_ms_ago,eligible,sv_active,sv_idle,load,error",
    "ROUTES": "database,kind,name,count",
    "ROUTE FOR SELECT 1": "field,value",
}


@pytest.fixture
def proxy(pg_cluster: LocalCluster, start_proxy: ProxyFactory) -> ProxyProcess:
    return start_proxy(base_config(pg_cluster))


def psql(
    proxy: ProxyProcess, *args: str, user: str = ADMIN_USER
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": ADMIN_PASSWORD, "PGCONNECT_TIMEOUT": "5"}
    argv = ["psql", "-X", "-h", proxy.host, "-p", str(proxy.port), "-U", user, "-d", "pgrouter"]
    return subprocess.run([*argv, *args], env=env, capture_output=True, text=True, timeout=30)


def admin(proxy: ProxyProcess) -> psycopg.Connection[Any]:
    # No params and no auto-prepare: every statement goes out as a simple Query.
    return connect(proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgrouter"), prepare_threshold=None)


def show(conn: psycopg.Connection[Any], what: str) -> list[Row]:
    cur = conn.execute(f"SHOW {what}")
    assert cur.description is not None
    names = [column.name for column in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def app_conn(proxy: ProxyProcess, name: str) -> psycopg.Connection[Any]:
    return connect(proxy.dsn(application_name=name))


def local_port(conn: psycopg.Connection[Any]) -> int:
    with socket.fromfd(conn.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM) as sock:
        return int(sock.getsockname()[1])


@pytest.fixture
def console(proxy: ProxyProcess) -> Iterator[psycopg.Connection[Any]]:
    with admin(proxy) as conn:
        yield conn


# --------------------------------------------------------------------------- psql


@pytest.mark.parametrize("what", sorted(HEADERS))
def test_psql_show_has_pgbouncer_column_names(proxy: ProxyProcess, what: str) -> None:
    result = psql(proxy, "-A", "-F,", "-c", f"SHOW {what}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == HEADERS[what]


def test_psql_client_side_formats(proxy: ProxyProcess) -> None:
    tuples_only = psql(proxy, "-A", "-t", "-c", "show version;")
    assert tuples_only.returncode == 0, tuples_only.stderr
    assert tuples_only.stdout.strip().startswith("pgrouter ")
    expanded = psql(proxy, "-x", "-c", "SHOW VERSION")
    assert expanded.returncode == 0, expanded.stderr
    assert "version | pgrouter " in expanded.stdout


def test_psql_reports_an_unknown_command_and_runs_the_next(proxy: ProxyProcess) -> None:
    result = psql(proxy, "-A", "-t", "-c", "SHOW NONSENSE", "-c", "SHOW VERSION")
    assert 'ERROR:  unknown admin command "SHOW NONSENSE"' in result.stderr
    assert "SHOW POOLS" in result.stderr  # the hint lists the commands
    assert result.stdout.strip().startswith("pgrouter ")


def test_non_admin_user_is_refused(proxy: ProxyProcess) -> None:
    error = login_error(proxy.port, APP, LocalCluster.APP_PASSWORD, "pgrouter")
    assert error.sqlstate == "28000"
    assert "not an admin user" in error.message
    result = psql(proxy, "-c", "SHOW POOLS", user=APP)
    assert result.returncode != 0
    assert "not an admin user" in result.stderr


def test_wrong_admin_password_is_refused(proxy: ProxyProcess) -> None:
    assert login_error(proxy.port, ADMIN_USER, "wrong", "pgrouter").sqlstate == "28P01"


# --------------------------------------------------------------------------- SHOW


def test_unknown_command_is_an_error_and_the_session_goes_on(
    console: psycopg.Connection[Any],
) -> None:
    with pytest.raises(psycopg.errors.SyntaxError, match="unknown admin command"):
        console.execute("FROBNICATE")
    with pytest.raises(psycopg.errors.SyntaxError, match="too many arguments"):
        console.execute("SHOW POOLS please")
    assert show(console, "VERSION")[0]["version"].startswith("pgrouter ")


def test_show_version_and_help(console: psycopg.Connection[Any]) -> None:
    # The proxy runs the same build as this process: compiled when the build is current.
    expected = f"pgrouter 0.1.0, {pgrouter_native.build_mode()}"
    assert [row["version"] for row in show(console, "VERSION")] == [expected]
    assert expected.endswith(("compiled", "interpreted"))
    commands = [row["command"] for row in show(console, "help")]
    for command in ("SHOW POOLS", "SHOW CLIENTS", "RELOAD", "PAUSE [db]", "SHUTDOWN"):
        assert command in commands


def test_two_session_clients_in_clients_servers_and_pools(
    proxy: ProxyProcess, console: psycopg.Connection[Any]
) -> None:
    with app_conn(proxy, "admin-test-a") as first, app_conn(proxy, "admin-test-b") as second:
        pids = {scalar(first, "SELECT pg_backend_pid()"), scalar(second, "SELECT pg_backend_pid()")}
        ports = {local_port(first): "admin-test-a", local_port(second): "admin-test-b"}

        clients = [row for row in show(console, "CLIENTS") if row["database"] == APP_DB]
        assert {int(row["port"]): row["application_name"] for row in clients} == ports
        assert {row["addr"] for row in clients} == {"127.0.0.1"}
        assert {(row["type"], row["user"], row["state"]) for row in clients} == {
            ("C", APP, "active")
        }
        assert all(row["link"] for row in clients)
        assert all(row["connect_time"].endswith(" UTC") for row in clients)
        (me,) = [row for row in show(console, "CLIENTS") if row["database"] == "pgrouter"]
        assert (me["user"], me["state"], me["link"]) == (ADMIN_USER, "active", "")

        servers = [row for row in show(console, "SERVERS") if row["database"] == APP_DB]
        active = [row for row in servers if row["state"] == "active"]
        assert {int(row["remote_pid"]) for row in active} == pids
        assert {row["link"] for row in active} == {row["ptr"] for row in clients}
        assert {row["ptr"] for row in active} == {row["link"] for row in clients}
        assert {(row["type"], row["user"], row["backend"]) for row in active} == {
            ("S", APP, "primary")
        }

        pools = {(r["database"], r["user"], r["backend"]): r for r in show(console, "POOLS")}
        pool = pools[(APP_DB, APP, "primary")]
        assert (pool["cl_active"], pool["sv_active"], pool["cl_waiting"]) == ("2", "2", "0")
        assert pool["pool_mode"] == "session"


def test_show_clients_shows_tls(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    cert = self_signed_cert(tmp_path / "certs")
    tls = {"client_mode": "allow", "cert_file": str(cert.cert), "key_file": str(cert.key)}
    proxy = start_proxy(base_config(pg_cluster, tls=tls))
    dsn = proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgrouter", sslmode="require")
    with connect(dsn, prepare_threshold=None) as conn:
        (me,) = [row for row in show(conn, "CLIENTS") if row["database"] == "pgrouter"]
        assert me["tls"].startswith("TLSv1.")


def test_show_stats_counts_queries(proxy: ProxyProcess, console: psycopg.Connection[Any]) -> None:
    def query_count() -> int:
        rows = {row["database"]: row for row in show(console, "STATS")}
        return int(rows[APP_DB]["total_query_count"])

    before = query_count()
    with app_conn(proxy, "admin-test-stats") as conn:
        for _ in range(3):
            assert scalar(conn, "SELECT 1") == 1
        wait_for(lambda: query_count() >= before + 3, 5, "total_query_count to grow by 3")


def test_show_databases_lists_primary_and_replicas(
    pg_cluster: LocalCluster, console: psycopg.Connection[Any]
) -> None:
    rows = [row for row in show(console, "DATABASES") if row["name"] == APP_DB]
    expected = [("primary", "primary", pg_cluster.primary.port)]
    expected += [(f"replica{i}", "replica", r.port) for i, r in enumerate(pg_cluster.replicas, 1)]
    assert [(r["backend"], r["role"], int(r["port"])) for r in rows] == expected
    assert {(r["pool_size"], r["pool_mode"], r["paused"]) for r in rows} == {("10", "session", "0")}


def test_show_config_masks_passwords(console: psycopg.Connection[Any]) -> None:
    config = {row["key"]: row for row in show(console, "CONFIG")}
    assert config["pool.size"]["value"] == "10"
    assert config["pool.size"]["default"] == "20"
    assert config["auth.users.admin.password"]["value"] == "********"
    secrets = {ADMIN_PASSWORD, LocalCluster.APP_PASSWORD, LocalCluster.MD5_PASSWORD}
    assert not secrets & {row["value"] for row in config.values()}


def test_show_users(console: psycopg.Connection[Any]) -> None:
    users = {row["name"]: row["admin"] for row in show(console, "USERS")}
    assert users == {APP: "no", LocalCluster.MD5_USER: "no", ADMIN_USER: "yes"}


# --------------------------------------------------------------------------- control


def edit_config(proxy: ProxyProcess, change: Callable[[dict[str, Any]], None]) -> None:
    config = yaml.safe_load(proxy.config_path.read_text())
    change(config)
    proxy.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def test_reload_applies_the_edited_file(
    proxy: ProxyProcess, console: psycopg.Connection[Any]
) -> None:
    edit_config(proxy, lambda c: c["pool"].update(size=7))
    console.execute("RELOAD")
    config = {row["key"]: row["value"] for row in show(console, "CONFIG")}
    assert config["pool.size"] == "7"


def test_reload_of_an_invalid_file_keeps_the_running_config(
    proxy: ProxyProcess, console: psycopg.Connection[Any]
) -> None:
    edit_config(proxy, lambda c: c["pool"].update(size=0))
    with pytest.raises(psycopg.Error, match=r"pool\.size") as info:
        console.execute("RELOAD")
    assert info.value.sqlstate == "F0000"
    config = {row["key"]: row["value"] for row in show(console, "CONFIG")}
    assert config["pool.size"] == "10"


def test_pause_unknown_database_is_3d000(console: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.InvalidCatalogName):
        console.execute("PAUSE nosuchdb")
    assert show(console, "VERSION")


def test_pause_holds_queries_until_resume(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(base_config(pg_cluster, pool={"mode": "transaction"}))
    with admin(proxy) as console, app_conn(proxy, "admin-test-pause") as app:
        assert scalar(app, "SELECT 1") == 1  # logged in, and no server held between queries
        console.execute("PAUSE app")
        assert {row["paused"] for row in show(console, "DATABASES") if row["name"] == APP_DB} == {
            "1"
        }
        held = Background(lambda: scalar(app, "SELECT 2"))
        time.sleep(1.0)
        assert not held.done(), "a query ran while its database was paused"
        console.execute("RESUME app")
        assert held.join(10) == 2


def test_shutdown_stops_the_proxy(proxy: ProxyProcess, console: psycopg.Connection[Any]) -> None:
    console.execute("SHUTDOWN")
    assert proxy.wait(timeout=15) == 0
