"""Visibility against a real primary, two streaming replicas and a proxy process: the
Prometheus endpoint scraped over HTTP, the dashboard's JSON, and the admin console's
SHOW REPLICAS / SHOW ROUTES / SHOW ROUTE FOR / SHOW CLIENTS, checked against what
PostgreSQL itself reports (pg_stat_replication, pg_current_wal_insert_lsn())."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from harness import ADMIN_PASSWORD, ADMIN_USER, ProxyProcess, base_config
from prometheus_client.parser import text_string_to_metric_families
from util import connect, scalar, wait_for

from router.localcluster import LocalCluster, free_port

pytestmark = pytest.mark.integration

ProxyFactory = Callable[..., ProxyProcess]
Row = dict[str, Any]
APP_DB = LocalCluster.APP_DB
REPLICAS = ("replica1", "replica2")
SETTLE = 20.0  # seconds for replication and the monitor to settle


class Visible:
    """A proxy with its HTTP endpoint on ``metrics_port``."""

    def __init__(self, proxy: ProxyProcess, metrics_port: int) -> None:
        self.proxy = proxy
        self.metrics_port = metrics_port

    def get(self, path: str) -> tuple[int, str, bytes]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.headers["Content-Type"], response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read()

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, _, body = self.get("/metrics")
        assert status == 200
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float | None:
        return self.scrape().get((name, frozenset(labels.items())))

    def replica_reads(self) -> float:
        samples = self.scrape()
        return sum(
            samples.get(
                ("pgrouter_routed_total", frozenset({"database": APP_DB, "backend": b}.items())),
                0.0,
            )
            for b in REPLICAS
        )


@pytest.fixture
def visible(pg_cluster: LocalCluster, start_proxy: ProxyFactory) -> Visible:
    port = free_port()
    config = base_config(pg_cluster, metrics={"port": port}, pool={"mode": "transaction"})
    visible = Visible(start_proxy(config), port)
    up = lambda: visible.metric("pgrouter_backend_writer", database=APP_DB, backend="primary") == 1  # noqa: E731
    wait_for(up, SETTLE, "the replica monitor's first probe")
    return visible


@pytest.fixture
def console(visible: Visible) -> Iterator[psycopg.Connection[Any]]:
    dsn = visible.proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgrouter")
    with connect(dsn, prepare_threshold=None) as conn:
        yield conn


def show(conn: psycopg.Connection[Any], what: str) -> list[Row]:
    cur = conn.execute(f"SHOW {what}")
    assert cur.description is not None
    names = [column.name for column in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def route_for(conn: psycopg.Connection[Any], sql: str) -> dict[str, str]:
    return {row["field"]: row["value"] for row in show(conn, f"ROUTE FOR {sql}")}


def replicas_by_name(conn: psycopg.Connection[Any]) -> dict[str, Row]:
    return {row["backend"]: row for row in show(conn, "REPLICAS") if row["database"] == APP_DB}


def psql(proxy: ProxyProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": ADMIN_PASSWORD, "PGCONNECT_TIMEOUT": "5"}
    argv = [
        "psql",
        "-X",
        "-h",
        proxy.host,
        "-p",
        str(proxy.port),
        "-U",
        ADMIN_USER,
        "-d",
        "pgrouter",
    ]
    return subprocess.run([*argv, *args], env=env, capture_output=True, text=True, timeout=30)


def psql_rows(proxy: ProxyProcess, command: str) -> list[Row]:
    result = psql(proxy, "-A", "-F", "\t", "-c", command)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:-1]]


def both_replicas_eligible(visible: Visible) -> bool:
    return all(
        visible.metric("pgrouter_backend_eligible", database=APP_DB, backend=b) == 1
        for b in REPLICAS
    )


# --------------------------------------------------------------------------- /metrics


def test_replica_lag_metrics_exist_for_both_replicas_and_settle_at_zero(visible: Visible) -> None:
    def settled() -> bool:
        samples = visible.scrape()

        def get(name: str, backend: str) -> float | None:
            return samples.get((name, frozenset({"database": APP_DB, "backend": backend}.items())))

        return all(
            get("pgrouter_backend_up", b) == 1
            and get("pgrouter_backend_in_recovery", b) == 1
            and get("pgrouter_replica_lag_bytes", b) == 0
            and get("pgrouter_replica_lag_seconds", b) == 0
            and (get("pgrouter_replica_replay_lsn_bytes", b) or 0) > 0
            for b in REPLICAS
        )

    wait_for(settled, SETTLE, "both replicas up with zero lag in /metrics")
    assert visible.metric("pgrouter_backend_writer", database=APP_DB, backend="primary") == 1
    assert visible.metric("pgrouter_backend_writer", database=APP_DB, backend="replica1") == 0


def test_autocommit_reads_increase_routed_total_for_the_replicas(visible: Visible) -> None:
    wait_for(lambda: both_replicas_eligible(visible), SETTLE, "both replicas eligible")
    before = visible.replica_reads()
    reasons_before = visible.metric(
        "pgrouter_route_reason_total", database=APP_DB, reason="default"
    )
    with connect(visible.proxy.dsn(application_name="visibility-reads")) as conn:
        for n in range(20):
            assert scalar(conn, "SELECT %s::int", (n,)) == n
    after = visible.replica_reads()
    assert after - before >= 10, f"only {after - before} of 20 reads counted on replicas"
    reasons_after = visible.metric("pgrouter_route_reason_total", database=APP_DB, reason="default")
    assert (reasons_after or 0) - (reasons_before or 0) >= 20


def test_unknown_path_is_404_and_the_connection_closes(visible: Visible) -> None:
    status, content_type, body = visible.get("/no/such/page")
    assert status == 404
    assert content_type.startswith("text/plain")
    assert b"/metrics" in body


def test_dashboard_page_and_api_state(visible: Visible) -> None:
    status, content_type, page = visible.get("/dashboard")
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    assert b"/api/state" in page and b"<svg" not in page.split(b"<script>")[0]

    def state() -> dict[str, Any] | None:
        status, _, body = visible.get("/api/state")
        assert status == 200
        data: dict[str, Any] = json.loads(body)
        (db,) = data["databases"]
        backends = {b["name"]: b for b in db["backends"]}
        ready = all(backends[r]["up"] and backends[r]["eligible"] == "yes" for r in REPLICAS)
        return db if ready and db["writer"] == "primary" else None

    db = wait_for(state, SETTLE, "/api/state to show both replicas eligible")
    backends = {b["name"]: b for b in db["backends"]}
    assert [b["name"] for b in db["backends"]] == ["primary", *REPLICAS]
    assert backends["primary"]["insert_lsn"] == db["writer_lsn"] != ""
    assert all(backends[r]["replay_lsn"] for r in REPLICAS)
    status, _, history = visible.get("/api/history")
    assert status == 200
    samples = json.loads(history)["samples"]
    assert samples and set(samples[-1]["databases"][APP_DB]["lag"]) == set(REPLICAS)


# --------------------------------------------------------------------------- admin console


def test_psql_show_replicas_shows_both_replicas_eligible(visible: Visible) -> None:
    def rows() -> dict[str, Row] | None:
        found = {r["backend"]: r for r in psql_rows(visible.proxy, "SHOW REPLICAS")}
        ready = all(found[b]["eligible"] == "yes" for b in REPLICAS)
        return found if ready else None

    found = wait_for(rows, SETTLE, "SHOW REPLICAS to list both replicas as eligible")
    for name in REPLICAS:
        row = found[name]
        assert (row["role"], row["state"], row["in_recovery"], row["writer"]) == (
            "replica", "up", "yes", "no",
        )  # fmt: skip
        assert row["replay_lsn"] and row["lag_bytes"] == "0"
        assert int(row["last_probe_ms_ago"]) < 5000
    primary = found["primary"]
    assert (primary["writer"], primary["in_recovery"], primary["eligible"]) == (
        "yes", "no", "not-standby",
    )  # fmt: skip


def test_show_route_for_a_read_says_replica(
    visible: Visible, console: psycopg.Connection[Any]
) -> None:
    wait_for(lambda: both_replicas_eligible(visible), SETTLE, "both replicas eligible")
    lines = route_for(console, "SELECT 1")
    assert (lines["kind"], lines["target"]) == ("read", "replica")
    assert lines["candidates"] == "replica1 eligible, replica2 eligible"
    assert lines["chosen"] in ("replica1 (default)", "replica2 (default)")


def test_show_route_for_a_write_says_primary(console: psycopg.Connection[Any]) -> None:
    lines = route_for(console, "UPDATE t SET x = 1")
    assert (lines["kind"], lines["target"], lines["chosen"]) == (
        "write",
        "primary",
        "primary (write)",
    )


def test_show_route_for_a_token_no_replica_has_reached(
    visible: Visible, console: psycopg.Connection[Any]
) -> None:
    wait_for(lambda: both_replicas_eligible(visible), SETTLE, "both replicas eligible")

    def explained() -> dict[str, str] | None:
        lines = route_for(console, "/* pgrouter:min_lsn=FFFFFFFF/0 */ SELECT 'a;b'")
        replayed = [r["replay_lsn"] for r in replicas_by_name(console).values() if r["replay_lsn"]]
        best = max(replayed, key=lsn_bytes)
        # Until both replicas have a recent probe the reason may be another one: poll.
        return lines if lines.get("stale", "").endswith(f"best {best}") else None

    lines = wait_for(explained, SETTLE, "SHOW ROUTE FOR to name the freshest replica's LSN")
    assert lines["stale"].startswith("replica-stale: needs FFFFFFFF/0, best ")
    assert lines["chosen"].startswith("primary (replica-stale:min_lsn) needs FFFFFFFF/0, best ")
    assert lines["candidates"] == "replica1 stale:min_lsn, replica2 stale:min_lsn"


def test_show_routes_counts_reads_and_writes_but_not_explanations(
    visible: Visible, console: psycopg.Connection[Any], pg_cluster: LocalCluster
) -> None:
    def counts() -> dict[tuple[str, str], int]:
        rows = show(console, "ROUTES")
        return {
            (r["kind"], r["name"]): int(float(r["count"])) for r in rows if r["database"] == APP_DB
        }

    wait_for(lambda: both_replicas_eligible(visible), SETTLE, "both replicas eligible")
    before = counts()
    for _ in range(3):
        route_for(console, "SELECT 1")
        route_for(console, "UPDATE t SET x = 1")
    assert counts() == before, "SHOW ROUTE FOR changed the routing statistics"
    with connect(visible.proxy.dsn(application_name="visibility-routes")) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS visibility_routes (x int)")
        conn.execute("INSERT INTO visibility_routes VALUES (1)")
        for _ in range(5):
            conn.execute("SELECT 1").fetchone()
    after = counts()
    assert after[("rule", "(default)")] >= before.get(("rule", "(default)"), 0) + 7
    assert after[("reason", "write")] >= before.get(("reason", "write"), 0) + 1
    reads = sum(after.get(("backend", b), 0) - before.get(("backend", b), 0) for b in REPLICAS)
    reads += after[("total", "fallbacks")] - before[("total", "fallbacks")]
    assert reads >= 5


def test_show_clients_shows_write_lsn_route_and_backend(
    visible: Visible, console: psycopg.Connection[Any]
) -> None:
    def mine() -> Row:
        (row,) = [r for r in show(console, "CLIENTS") if r["application_name"] == "visibility-lsn"]
        return row

    with connect(visible.proxy.dsn(application_name="visibility-lsn")) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS visibility_lsn (x int)")
        conn.execute("INSERT INTO visibility_lsn VALUES (1)")
        token = conn.info.parameter_status("pgrouter.write_lsn")
        assert token
        row = mine()
        assert (row["last_write_lsn"], row["min_lsn"], row["route"]) == (token, "", "auto")
        assert row["backend"] == ""  # transaction mode: no server between transactions
        conn.execute("SET pgrouter.min_lsn = '0/3000060'")
        conn.execute("SET pgrouter.route = primary")
        with conn.transaction():
            conn.execute("SELECT 1")
            row = mine()
            assert (row["min_lsn"], row["route"], row["backend"]) == (
                "0/3000060",
                "primary",
                "primary",
            )


# --------------------------------------------------------------------------- against PostgreSQL


def primary_view(pg_cluster: LocalCluster) -> tuple[int, list[str]]:
    """(pg_current_wal_insert_lsn() as bytes, the standbys' replay_lsn, lowest first) from
    the primary; the list is empty until every standby has reported one."""
    with connect(pg_cluster.primary.dsn()) as conn:
        insert = scalar(conn, "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
        rows = conn.execute("SELECT replay_lsn::text FROM pg_stat_replication").fetchall()
    replayed = [row[0] for row in rows]
    if len(replayed) != len(pg_cluster.replicas) or None in replayed:
        return int(insert), []
    return int(insert), sorted(replayed, key=lsn_bytes)


def lsn_bytes(text: str) -> int:
    if not text:  # a server the monitor has no LSN for
        return -1
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def test_replay_lsn_and_lag_agree_with_pg_stat_replication(
    console: psycopg.Connection[Any], pg_cluster: LocalCluster, visible: Visible
) -> None:
    def idle_agreement() -> bool:
        insert, replayed = primary_view(pg_cluster)
        rows = replicas_by_name(console)
        ours = sorted((rows[b]["replay_lsn"] for b in REPLICAS), key=lsn_bytes)
        return (
            bool(replayed)
            and ours == replayed
            and all(lsn_bytes(lsn) == insert for lsn in replayed)
            and all(rows[b]["lag_bytes"] == "0" for b in REPLICAS)
        )

    wait_for(idle_agreement, SETTLE, "SHOW REPLICAS to agree with pg_stat_replication (idle)")

    # Now with real lag: replay paused on replica2 while the primary writes.
    paused = connect(pg_cluster.replicas[1].dsn())
    try:
        paused.execute("SELECT pg_wal_replay_pause()")
        with connect(pg_cluster.primary.dsn(dbname=APP_DB)) as primary:
            primary.execute("CREATE TABLE IF NOT EXISTS visibility_lag (x int)")
            primary.execute("INSERT INTO visibility_lag SELECT generate_series(1, 1000)")

        def lagging_agreement() -> tuple[int, str] | None:
            insert, replayed = primary_view(pg_cluster)
            rows = replicas_by_name(console)
            if not replayed:
                return None
            behind, ahead = replayed
            lag = insert - lsn_bytes(behind)
            agree = (
                rows["replica2"]["replay_lsn"] == behind
                and rows["replica1"]["replay_lsn"] == ahead
                and lsn_bytes(ahead) == insert
                and rows["replica2"]["lag_bytes"] == str(lag)
                and rows["replica1"]["lag_bytes"] == "0"
                and lag > 0
                # 0 at the very probe that first saw the write; it grows from the next one
                and float(rows["replica2"]["lag_seconds"]) > 0
            )
            return (lag, rows["replica2"]["lag_seconds"]) if agree else None

        lag, _ = wait_for(
            lagging_agreement, SETTLE, "SHOW REPLICAS to agree with pg_stat_replication (lagging)"
        )
        assert (
            visible.metric("pgrouter_replica_lag_bytes", database=APP_DB, backend="replica2") == lag
        )
    finally:
        paused.execute("SELECT pg_wal_replay_resume()")
        paused.close()
    wait_for(idle_agreement, SETTLE, "replica2 to catch up after resuming replay")
