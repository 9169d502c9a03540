"""The test harness itself, against real servers: clusters, Toxiproxy, ProxyProcess."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import ProxyProcess, ProxyStartError, ToxiproxyHandle, base_config

from router.localcluster import ClusterError, LocalCluster, PgInstance, libpq_dsn

pytestmark = pytest.mark.integration


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5)


def scalar(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def app_dsn(inst: PgInstance, user: str = LocalCluster.APP_USER) -> str:
    return inst.dsn(user, dbname=LocalCluster.APP_DB)


# --------------------------------------------------------------------------- cluster


def test_replicas_are_in_recovery_and_primary_is_not(pg_cluster: LocalCluster) -> None:
    assert len(pg_cluster.replicas) == 2
    assert pg_cluster.primary.psql("SELECT pg_is_in_recovery()") == "f"
    for replica in pg_cluster.replicas:
        assert replica.psql("SELECT pg_is_in_recovery()") == "t"


def test_instances_use_distinct_loopback_ports(pg_cluster: LocalCluster) -> None:
    ports = {inst.port for inst in pg_cluster.instances}
    assert len(ports) == 3
    assert all(inst.host == "127.0.0.1" and inst.is_running() for inst in pg_cluster.instances)


def test_primary_streams_to_two_replicas(pg_cluster: LocalCluster) -> None:
    rows = pg_cluster.primary.psql(
        "SELECT application_name, state FROM pg_stat_replication ORDER BY 1"
    )
    assert rows.splitlines() == ["replica1|streaming", "replica2|streaming"]


def test_row_written_on_primary_appears_on_both_replicas(pg_cluster: LocalCluster) -> None:
    marker = uuid.uuid4().hex
    with connect(app_dsn(pg_cluster.primary)) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS harness_rows (marker text PRIMARY KEY)")
        conn.execute("INSERT INTO harness_rows VALUES (%s)", (marker,))
    pg_cluster.wait_replicated()
    for replica in pg_cluster.replicas:
        with connect(app_dsn(replica)) as conn:
            row = conn.execute("SELECT marker FROM harness_rows WHERE marker = %s", (marker,))
            assert row.fetchone() == (marker,)


def test_app_user_has_scram_verifier_and_md5_user_has_md5(pg_cluster: LocalCluster) -> None:
    stored = pg_cluster.primary.psql(
        "SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN ('app', 'app_md5')"
    )
    verifiers = dict(line.split("|", 1) for line in stored.splitlines())
    assert verifiers["app"].startswith("SCRAM-SHA-256$")
    assert verifiers["app_md5"].startswith("md5")


@pytest.mark.parametrize("user", [LocalCluster.APP_USER, LocalCluster.MD5_USER])
def test_app_users_log_in_on_primary_and_replicas(pg_cluster: LocalCluster, user: str) -> None:
    for inst in pg_cluster.instances:
        with connect(app_dsn(inst, user)) as conn:
            assert scalar(conn, "SELECT current_user") == user
            assert scalar(conn, "SELECT current_database()") == LocalCluster.APP_DB


def test_wrong_password_is_rejected(pg_cluster: LocalCluster) -> None:
    dsn = pg_cluster.primary.dsn("app", password="wrong", dbname="app")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(dsn)


def test_psql_raises_cluster_error_with_server_message(pg_cluster: LocalCluster) -> None:
    with pytest.raises(ClusterError, match="does_not_exist"):
        pg_cluster.primary.psql("SELECT * FROM does_not_exist")


def test_libpq_dsn_quotes_awkward_values() -> None:
    dsn = libpq_dsn(host="h", password="a b'c\\", options="-c x=1", port=5, dbname=None)
    assert dsn == r"host=h password='a b\'c\\' options='-c x=1' port=5"


def test_stopped_replica_catches_up_after_restart(fresh_cluster: LocalCluster) -> None:
    replica = fresh_cluster.replicas[0]
    replica.stop()
    replica.stop()  # stopping twice is not an error
    assert not replica.is_running()
    fresh_cluster.primary.psql("CREATE TABLE while_down AS SELECT 42 AS answer")
    fresh_cluster.wait_replicated(timeout=1)  # skips replicas that are not running
    replica.start()
    fresh_cluster.wait_replicated()
    assert replica.psql("SELECT answer FROM while_down") == "42"
    fresh_cluster.primary.restart()
    assert fresh_cluster.primary.psql("SELECT pg_is_in_recovery()") == "f"


def test_wait_replicated_times_out_while_replay_is_paused(fresh_cluster: LocalCluster) -> None:
    replica = fresh_cluster.replicas[0]
    replica.psql("SELECT pg_wal_replay_pause()")
    fresh_cluster.primary.psql("CREATE TABLE paused_write (id int)")
    with pytest.raises(ClusterError, match="replayed only"):
        fresh_cluster.wait_replicated(timeout=0.5)
    replica.psql("SELECT pg_wal_replay_resume()")
    fresh_cluster.wait_replicated()


# --------------------------------------------------------------------------- toxiproxy


def test_toxiproxy_in_front_of_primary_passes_and_breaks_traffic(
    pg_cluster: LocalCluster, toxiproxy: ToxiproxyHandle
) -> None:
    proxy, port = toxiproxy.make_proxy("pg_primary", "127.0.0.1", pg_cluster.primary.port)
    dsn = libpq_dsn(host="127.0.0.1", port=port, dbname="app", user="app", password="app-pw")
    with connect(dsn) as conn:
        assert scalar(conn, "SELECT 1") == 1

    proxy.add_toxic(name="slow", type="latency", attributes={"latency": 300})
    with connect(dsn) as conn:
        began = time.monotonic()
        assert scalar(conn, "SELECT 2") == 2
        assert time.monotonic() - began >= 0.3
    proxy.destroy_toxic("slow")

    proxy.add_toxic(name="reset", type="reset_peer", attributes={"timeout": 0})
    with pytest.raises(psycopg.OperationalError):
        connect(dsn)
    proxy.destroy_toxic("reset")

    with proxy.down(), pytest.raises(psycopg.OperationalError):
        connect(dsn)
    with connect(dsn) as conn:
        assert scalar(conn, "SELECT 3") == 3


def test_make_proxy_fixture_can_reuse_a_name_after_cleanup(
    pg_cluster: LocalCluster, make_proxy: Callable[[str, str, int], tuple[Any, int]]
) -> None:
    # The previous test made "pg_primary" too; the autouse cleanup must have deleted it.
    _, port = make_proxy("pg_primary", "127.0.0.1", pg_cluster.primary.port)
    dsn = libpq_dsn(host="127.0.0.1", port=port, dbname="postgres", user="postgres")
    with connect(dsn + " password=postgres-pw") as conn:
        assert scalar(conn, "SELECT current_user") == "postgres"


# --------------------------------------------------------------------------- proxy process

# Stands in for pgrouter until it runs: listens on the configured port, logs, exits on TERM.
FAKE_PROXY = """
import signal, socket, sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
sock = socket.create_server((config["listen"]["host"], config["listen"]["port"]))
print("fake proxy listening", config["listen"]["port"], flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    sock.accept()[0].close()
"""


def test_base_config_points_at_the_cluster(pg_cluster: LocalCluster) -> None:
    config = base_config(pg_cluster, pool={"mode": "transaction"}, log_level="debug")
    app = config["databases"]["app"]
    assert app["primary"] == {"host": "127.0.0.1", "port": pg_cluster.primary.port, "dbname": "app"}
    assert [r["port"] for r in app["replicas"]] == [r.port for r in pg_cluster.replicas]
    assert config["auth"]["users"] == {
        "app": {"password": "app-pw"},
        "app_md5": {"password": "md5-pw"},
        "admin": {"password": "admin-pw"},
    }
    assert config["auth"]["admin_users"] == ["admin"]
    assert config["pool"]["mode"] == "transaction"
    assert config["pool"]["size"] == 10  # deep merge keeps the siblings
    assert config["log_level"] == "debug"
    assert "port" not in config["listen"]


def test_start_proxy_fills_port_waits_for_listen_and_stops(
    pg_cluster: LocalCluster, start_proxy: Callable[..., ProxyProcess]
) -> None:
    argv = [sys.executable, "-c", FAKE_PROXY, "{config}"]
    proxy = start_proxy(base_config(pg_cluster), argv=argv)
    assert proxy.port > 0 and proxy.host == "127.0.0.1"
    assert f"port: {proxy.port}" in proxy.config_path.read_text()
    assert proxy.dsn() == (f"host=127.0.0.1 port={proxy.port} dbname=app user=app password=app-pw")
    assert proxy.is_running() and proxy.pid > 0
    assert proxy.stop() == 0
    assert f"fake proxy listening {proxy.port}" in proxy.log_text()


def test_proxy_that_exits_early_reports_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('bad config: boom'); sys.exit(3)"]
    proxy = ProxyProcess({"listen": {}}, tmp_path, argv=argv)
    with pytest.raises(ProxyStartError, match=r"(?s)exited with code 3.*bad config: boom"):
        proxy.start(timeout=10)


def test_proxy_that_never_listens_is_killed(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; print('stuck', flush=True); time.sleep(60)"]
    proxy = ProxyProcess({"listen": {}}, tmp_path, argv=argv)
    with pytest.raises(ProxyStartError, match=r"(?s)did not listen.*stuck"):
        proxy.start(timeout=1)
    assert not proxy.is_running()
