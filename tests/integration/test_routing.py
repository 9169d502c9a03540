"""Read/write splitting against a real primary and two streaming replicas (issue 4).

Where a statement ran is checked on the servers themselves: ``inet_server_port()`` in
the select list, pg_stat_statements counts on each server, and the replicas' logs (a
write that reached a standby would log its 25006 error there even if the proxy retried
it on the primary). Also: hints, the policy file (hot reload, a rejected edit) and the
offline ``check`` / ``route`` commands.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
import yaml
from e2e.util import client_binary, libpq_env, run_client, superuser_conn
from harness import REPO_ROOT
from routing_util import (
    ProxyFactory,
    Routed,
    calls_by_server,
    drop_table,
    ensure_stat_statements,
    log_mentions,
    make_table,
    routed_config,
    server_port,
    start_routed,
    unique_name,
    value_and_port,
    wait_for,
)

from router.localcluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROWS = 64


@pytest.fixture(scope="module")
def table(pg_cluster: LocalCluster) -> Iterator[str]:
    ensure_stat_statements(pg_cluster)
    name = make_table(pg_cluster, unique_name("rt_route"), rows=ROWS)
    yield name
    drop_table(pg_cluster, name)


@pytest.fixture
def routed(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, tmp_path: Path, table: str
) -> Routed:
    return start_routed(start_proxy, pg_cluster, tmp_path)


def deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


def assert_replicas_served(delta: dict[str, int], total: int) -> None:
    """Every execution on some server, (nearly) none on the primary, each replica a share."""
    assert sum(delta.values()) == total, f"executions per server {delta}, expected {total}"
    # A read falls back to the primary only when the monitor has no recent probe of any
    # replica; on an idle test machine that is rare, never a habit.
    assert delta["primary"] <= total * 0.02, f"reads ran on the primary: {delta}"
    for name in ("replica1", "replica2"):
        assert delta[name] >= total * 0.2, f"{name} got too small a share: {delta}"


# --------------------------------------------------------------------------- reads


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_psycopg_autocommit_reads_land_on_both_replicas(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, tmp_path: Path, table: str, mode: str
) -> None:
    routed = start_routed(start_proxy, pg_cluster, tmp_path, pool={"mode": mode})
    total = 240
    conns = [routed.connect() for _ in range(4)]
    try:
        before = calls_by_server(pg_cluster, table)
        for i in range(total):
            row = (
                conns[i % 4]
                .execute(f"SELECT v FROM {table} WHERE id = %s", (i % ROWS + 1,))
                .fetchone()
            )
            assert row == (0,)
        delta = deltas(before, calls_by_server(pg_cluster, table))
    finally:
        for conn in conns:
            conn.close()
    assert_replicas_served(delta, total)


def test_session_mode_sends_everything_to_the_primary(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, tmp_path: Path, table: str
) -> None:
    routed = start_routed(
        start_proxy, pg_cluster, tmp_path, wait_replicas=False, pool={"mode": "session"}
    )
    with routed.connect() as conn:
        # Give the monitor time to find the replicas: they must not be used even then.
        wait_for(lambda: "replica2 127.0.0.1" in routed.proxy.log_text(), 5, "the monitor's probes")
        ports = {value_and_port(conn, table, i % ROWS + 1)[1] for i in range(20)}
    assert ports == {routed.primary_port}, [routed.name_of(p) for p in ports]


def test_asyncpg_prepared_reads_land_on_both_replicas(
    routed: Routed, pg_cluster: LocalCluster, table: str
) -> None:
    total = 200
    marker = f"{table} AS asyncpg_reads"

    async def main() -> None:
        conns = [
            await asyncpg.connect(
                host=routed.proxy.host,
                port=routed.proxy.port,
                user=LocalCluster.APP_USER,
                password=LocalCluster.APP_PASSWORD,
                database=LocalCluster.APP_DB,
                timeout=10,
            )
            for _ in range(4)
        ]
        try:

            async def worker(conn: asyncpg.Connection, start: int) -> None:
                for i in range(start, total, 4):
                    value = await conn.fetchval(
                        f"SELECT v FROM {marker} WHERE id = $1", i % ROWS + 1
                    )
                    assert value == 0

            await asyncio.gather(*(worker(conn, n) for n, conn in enumerate(conns)))
        finally:
            for conn in conns:
                await conn.close()

    before = calls_by_server(pg_cluster, marker)
    asyncio.run(asyncio.wait_for(main(), 60))
    assert_replicas_served(deltas(before, calls_by_server(pg_cluster, marker)), total)


@pytest.fixture(scope="module")
def bench_db(pg_cluster: LocalCluster) -> Iterator[str]:
    """A private database holding pgbench's tables (others may run pgbench in ``app``)."""
    ensure_stat_statements(pg_cluster)
    name = unique_name("rt_bench")
    primary = pg_cluster.primary
    with superuser_conn(primary, "postgres") as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {LocalCluster.APP_USER}")
    env = libpq_env_direct(primary.host, primary.port, name)
    run_client([client_binary("pgbench"), "-i", "-s", "1", "-q"], env, timeout=60)
    pg_cluster.wait_replicated()
    yield name
    with superuser_conn(primary, "postgres") as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def libpq_env_direct(host: str, port: int, dbname: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGHOST=host,
        PGPORT=str(port),
        PGUSER=LocalCluster.APP_USER,
        PGPASSWORD=LocalCluster.APP_PASSWORD,
        PGDATABASE=dbname,
        PGCONNECT_TIMEOUT="10",
    )
    return env


@pytest.mark.parametrize("query_mode", ["simple", "prepared"])
def test_pgbench_select_only_lands_on_both_replicas(
    pg_cluster: LocalCluster,
    start_proxy: ProxyFactory,
    tmp_path: Path,
    bench_db: str,
    query_mode: str,
) -> None:
    servers = {
        "primary": {"host": pg_cluster.primary.host, "port": pg_cluster.primary.port,
                    "dbname": bench_db},
        "replicas": [{"host": r.host, "port": r.port, "dbname": bench_db}
                     for r in pg_cluster.replicas],
    }  # fmt: skip
    routed = start_routed(start_proxy, pg_cluster, tmp_path, databases={bench_db: servers})
    before = calls_by_server(pg_cluster, "pgbench_accounts", bench_db)
    clients, per_client = 4, 150
    argv = [
        client_binary("pgbench"),
        "-n", "-S", "-M", query_mode,
        "-c", str(clients), "-j", "2", "-t", str(per_client),
    ]  # fmt: skip
    out = run_client(argv, libpq_env(routed.proxy, PGDATABASE=bench_db), timeout=60)
    total = clients * per_client
    processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", out.stdout)
    assert processed is not None, out.stdout
    assert processed.groups() == (str(total), str(total)), out.stdout
    assert_replicas_served(
        deltas(before, calls_by_server(pg_cluster, "pgbench_accounts", bench_db)), total
    )


# --------------------------------------------------------------------------- writes and locks


def test_writes_locks_and_sequences_run_on_the_primary(
    routed: Routed, pg_cluster: LocalCluster, table: str
) -> None:
    seq = unique_name("rt_seq")
    with superuser_conn(pg_cluster.primary) as admin:
        admin.execute(f"CREATE SEQUENCE {seq}")
        admin.execute(f"ALTER SEQUENCE {seq} OWNER TO {LocalCluster.APP_USER}")
    pg_cluster.wait_replicated()
    new_id = ROWS + 100
    statements = {
        "insert": f"INSERT INTO {table} VALUES ({new_id}, 1) RETURNING inet_server_port()",
        "update": f"UPDATE {table} SET v = v + 1 WHERE id = {new_id} RETURNING inet_server_port()",
        "for update": f"SELECT inet_server_port() FROM {table} WHERE id = 2 FOR UPDATE",
        "for share": f"SELECT inet_server_port() FROM {table} WHERE id = 2 FOR SHARE",
        "for update in cte": f"WITH l AS (SELECT id FROM {table} WHERE id = 3 FOR UPDATE) "
        "SELECT inet_server_port() FROM l",
        "nextval": f"SELECT nextval('{seq}'), inet_server_port()",
        "writable cte": f"WITH w AS (UPDATE {table} SET v = v WHERE id = 4 RETURNING id) "
        "SELECT inet_server_port() FROM w",
        "delete": f"DELETE FROM {table} WHERE id = {new_id} RETURNING inet_server_port()",
    }
    with routed.connect() as conn:
        for what, sql in statements.items():
            port = server_port(conn, sql)
            assert port == routed.primary_port, f"{what} ran on {routed.name_of(port)}"
        # A read-write transaction runs on the primary from BEGIN to COMMIT, reads too.
        with conn.transaction():
            ports = [server_port(conn, f"SELECT inet_server_port() FROM {table} LIMIT 1")]
            ports.append(
                server_port(conn, f"UPDATE {table} SET v = v WHERE id = 6 "
                            "RETURNING inet_server_port()")
            )  # fmt: skip
            ports.append(server_port(conn, f"SELECT inet_server_port() FROM {table} LIMIT 1"))
        assert set(ports) == {routed.primary_port}, [routed.name_of(p) for p in ports]
        # So does an explicit transaction that only reads (it is not declared read-only).
        with conn.transaction():
            ports = [server_port(conn, f"SELECT inet_server_port() FROM {table} LIMIT 1")
                     for _ in range(3)]  # fmt: skip
        assert set(ports) == {routed.primary_port}, [routed.name_of(p) for p in ports]
    with superuser_conn(pg_cluster.primary) as admin:
        admin.execute(f"DROP SEQUENCE {seq}")
    # No write reached a standby, not even one the proxy then retried on the primary: a
    # standby logs the statement of every 25006 error it raises.
    for replica in pg_cluster.replicas:
        for name in (table, seq):
            assert not log_mentions(replica, name), (replica.name, log_mentions(replica, name))


def test_write_hidden_in_an_unknown_function_is_retried_on_the_primary_and_learned(
    routed: Routed, pg_cluster: LocalCluster, table: str
) -> None:
    """A writing function created after the proxy last read pg_proc classifies as a read;
    the replica's 25006 must be invisible (the read is run again on the primary) and the
    statement remembered as a write (its next run goes straight to the primary)."""
    function = unique_name("rt_hidden_write")
    with superuser_conn(pg_cluster.primary) as admin:
        admin.execute(
            f"CREATE FUNCTION {function}(row_id int) RETURNS int LANGUAGE sql VOLATILE AS "
            f"$$ UPDATE {table} SET v = v + 1 WHERE id = row_id RETURNING inet_server_port() $$"
        )
        admin.execute(f"ALTER FUNCTION {function}(int) OWNER TO {LocalCluster.APP_USER}")
    pg_cluster.wait_replicated()
    try:
        with routed.connect() as conn:
            for _ in range(3):
                port = server_port(conn, f"SELECT {function}(15)")
                assert port == routed.primary_port
        with superuser_conn(pg_cluster.primary) as admin:
            assert admin.execute(f"SELECT v FROM {table} WHERE id = 15").fetchone() == (3,)
        # One replica refused it once (a standby logs the STATEMENT of each error it
        # raises); after that the proxy knew better.
        refusals = [
            line
            for replica in pg_cluster.replicas
            for line in log_mentions(replica, function)
            if "STATEMENT:" in line
        ]
        assert len(refusals) <= 1, refusals
    finally:
        with superuser_conn(pg_cluster.primary) as admin:
            admin.execute(f"DROP FUNCTION IF EXISTS {function}(int)")


@pytest.mark.parametrize(
    "how", ["BEGIN READ ONLY", "START TRANSACTION READ ONLY", "psycopg read_only",
            "default_transaction_read_only"]
)  # fmt: skip
def test_read_only_transaction_stays_on_one_replica(
    routed: Routed, pg_cluster: LocalCluster, table: str, how: str
) -> None:
    if how == "psycopg read_only":
        conn = routed.connect(autocommit=False)
        conn.read_only = True  # psycopg sends BEGIN READ ONLY
    elif how == "default_transaction_read_only":
        conn = routed.connect(autocommit=False, options="-c default_transaction_read_only=on")
    else:
        conn = routed.connect()
    used: set[int] = set()
    with conn:
        for round_ in range(6):
            if how in ("BEGIN READ ONLY", "START TRANSACTION READ ONLY"):
                conn.execute(how)
            seen = set()
            for i in range(5):
                row = conn.execute(
                    f"SELECT pg_backend_pid(), inet_server_port() FROM {table} WHERE id = %s",
                    (round_ * 5 + i + 1,),
                ).fetchone()
                assert row is not None
                seen.add((row[0], row[1]))
            conn.execute("COMMIT") if conn.autocommit else conn.commit()
            assert len(seen) == 1, f"one read-only transaction ran on {seen}"
            ((_, port),) = seen
            assert port in routed.replica_ports, f"read-only transaction on {routed.name_of(port)}"
            used.add(port)
    assert used <= routed.replica_ports


def test_pipeline_with_one_write_goes_to_the_primary_whole(
    routed: Routed, pg_cluster: LocalCluster, table: str
) -> None:
    with routed.connect() as conn:
        with conn.pipeline():
            first = conn.execute(f"SELECT inet_server_port() FROM {table} WHERE id = 7")
            write = conn.execute(
                f"UPDATE {table} SET v = v WHERE id = 7 RETURNING inet_server_port()"
            )
            last = conn.execute(f"SELECT inet_server_port() FROM {table} WHERE id = 8")
        ports = [c.fetchone()[0] for c in (first, write, last)]  # type: ignore[index]
        assert ports == [routed.primary_port] * 3, [routed.name_of(p) for p in ports]
    # The same pipeline without the write may use a replica: that one, whole. (A fresh
    # connection: the first one's reads must wait for a replica to replay its write.)
    with routed.connect() as conn:
        with conn.pipeline():
            cursors = [
                conn.execute(
                    f"SELECT pg_backend_pid(), inet_server_port() FROM {table} WHERE id = %s",
                    (i,),
                )
                for i in (9, 10, 11)
            ]
        rows = {tuple(c.fetchone() or ()) for c in cursors}
        assert len(rows) == 1, f"a read-only pipeline was split over {rows}"
        ((_, port),) = rows
        assert port in routed.replica_ports, f"a read-only pipeline ran on {routed.name_of(port)}"


# --------------------------------------------------------------------------- hints


def test_comment_hints(routed: Routed, pg_cluster: LocalCluster, table: str) -> None:
    with routed.connect() as conn:
        for _ in range(5):
            _, port = value_and_port(conn, table, 12, "/* pgrouter:primary */ ")
            assert port == routed.primary_port, f"primary hint ran on {routed.name_of(port)}"
        for _ in range(5):
            _, port = value_and_port(conn, table, 12, "/* pgrouter:replica */ ")
            assert port in routed.replica_ports, f"replica hint ran on {routed.name_of(port)}"
        # A replica hint never sends a write to a replica.
        port = server_port(
            conn,
            f"/* pgrouter:replica */ UPDATE {table} SET v = 12 WHERE id = 12 "
            "RETURNING inet_server_port()",
        )
        assert port == routed.primary_port, f"hinted write ran on {routed.name_of(port)}"
    with superuser_conn(pg_cluster.primary) as direct:
        row = direct.execute(f"SELECT v FROM {table} WHERE id = 12").fetchone()
        assert row == (12,)
    for replica in pg_cluster.replicas:
        assert not log_mentions(replica, table)


def test_set_pgrouter_route(routed: Routed, pg_cluster: LocalCluster, table: str) -> None:
    before = calls_by_server(pg_cluster, "pgrouter.route")
    with routed.connect() as conn:
        conn.execute("SET pgrouter.route = primary")
        assert conn.execute("SHOW pgrouter.route").fetchone() == ("primary",)
        ports = {value_and_port(conn, table, 13)[1] for _ in range(6)}
        assert ports == {routed.primary_port}, [routed.name_of(p) for p in ports]
        conn.execute("SET pgrouter.route = replica")
        ports = {value_and_port(conn, table, 13)[1] for _ in range(6)}
        assert ports <= routed.replica_ports, [routed.name_of(p) for p in ports]
        conn.execute("SET pgrouter.route = primary")
        conn.execute("SET pgrouter.route = auto")
        assert conn.execute("SHOW pgrouter.route").fetchone() == ("auto",)
        ports = {value_and_port(conn, table, 13)[1] for _ in range(6)}
        assert ports <= routed.replica_ports, [routed.name_of(p) for p in ports]
        with pytest.raises(psycopg.Error) as bad:
            conn.execute("SET pgrouter.route = sideways")
        assert bad.value.sqlstate == "22023"
        # The session goes on after the error, with the setting it had.
        assert value_and_port(conn, table, 13)[1] in routed.replica_ports
    with routed.connect() as conn:
        # route = replica never sends a write to a replica.
        conn.execute("SET pgrouter.route = replica")
        port = server_port(
            conn, f"UPDATE {table} SET v = v WHERE id = 13 RETURNING inet_server_port()"
        )
        assert port == routed.primary_port, f"a write under route=replica ran on {port}"
    # SET pgrouter.* is answered by the proxy: no server ever saw one.
    assert sum(deltas(before, calls_by_server(pg_cluster, "pgrouter.route")).values()) == 0


# --------------------------------------------------------------------------- policy file

PINNED_POLICY = """\
version: 1
rules:
  - name: pinned-table
    match:
      tables: ["{table}"]
    route: primary
"""

LOOSE_POLICY = """\
version: 1
rules:
  - name: pinned-table
    match:
      tables: ["no_such_table_anywhere"]
    route: primary
"""

BAD_POLICY = """\
version: 1
rules:
  - name: pinned-table
    match:
      tables: ["{table}"]
    route: sideways
"""


def ports_of_reads(conn: psycopg.Connection[Any], table: str, count: int = 6) -> Counter[int]:
    return Counter(value_and_port(conn, table, 14)[1] for _ in range(count))


def test_policy_rule_routes_a_table_to_the_primary_and_hot_reloads(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, tmp_path: Path, table: str
) -> None:
    other = make_table(pg_cluster, unique_name("rt_other"), rows=ROWS)
    try:
        routed = start_routed(start_proxy, pg_cluster, tmp_path, PINNED_POLICY.format(table=table))
        with routed.connect() as conn:
            assert set(ports_of_reads(conn, table)) == {routed.primary_port}
            assert set(ports_of_reads(conn, other)) <= routed.replica_ports

            # Hot reload: the rule no longer matches the table; its reads leave the primary.
            routed.set_policy(LOOSE_POLICY)
            wait_for(
                lambda: set(ports_of_reads(conn, table, 3)) <= routed.replica_ports,
                8,
                "reads of the table to move to the replicas after the policy edit",
                interval=0.2,
            )
            assert "policy reloaded" in routed.proxy.log_text()

            # An invalid edit is rejected, with the rule's path, and the running policy stays.
            routed.set_policy(BAD_POLICY.format(table=table))
            wait_for(
                lambda: "policy file rejected" in routed.proxy.log_text(),
                8,
                "the proxy to reject the invalid policy",
                interval=0.2,
            )
            log_text = routed.proxy.log_text()
            rejected = [line for line in log_text.splitlines() if "rejected" in line]
            assert "rules[0] (name 'pinned-table').route" in log_text, rejected
            assert set(ports_of_reads(conn, table, 12)) <= routed.replica_ports
            assert routed.proxy.is_running()

            # A good file again takes effect.
            routed.set_policy(PINNED_POLICY.format(table=table))
            wait_for(
                lambda: set(ports_of_reads(conn, table, 3)) == {routed.primary_port},
                8,
                "the pinned rule to apply again",
                interval=0.2,
            )
    finally:
        drop_table(pg_cluster, other)


def run_router(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_reports_a_bad_policy_file_and_route_explains(
    pg_cluster: LocalCluster, tmp_path: Path, table: str
) -> None:
    config, policy_path = routed_config(pg_cluster, tmp_path, BAD_POLICY.format(table=table))
    assert policy_path is not None
    config_path = tmp_path / "pgrouter.yaml"
    config_path.write_text(yaml.safe_dump(config))

    bad = run_router("check", "-c", str(config_path))
    assert bad.returncode == 2, bad
    assert "rules[0] (name 'pinned-table').route" in bad.stderr, bad.stderr
    assert str(policy_path) in bad.stderr, bad.stderr

    policy_path.write_text(PINNED_POLICY.format(table=table))
    good = run_router("check", "-c", str(config_path))
    assert good.returncode == 0, good.stderr

    def explain(sql: str) -> dict[str, str]:
        out = run_router("route", "-c", str(config_path), sql)
        assert out.returncode == 0, out.stderr
        fields = {}
        for line in out.stdout.splitlines():
            key, value = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            fields[key] = value
        return fields

    pinned = explain(f"SELECT v FROM {table} WHERE id = 1")
    assert pinned["kind"] == "read" and pinned["target"] == "primary", pinned
    assert pinned["rule"] == "pinned-table", pinned
    plain = explain("SELECT v FROM some_other_table WHERE id = 1")
    assert plain["kind"] == "read" and plain["target"] == "replica", plain
    assert plain["route reason"] == "default", plain
    write = explain(f"UPDATE {table} SET v = 1")
    assert write["kind"] == "write" and write["target"] == "primary", write
    assert write["route reason"] == "write", write
    locked = explain("SELECT v FROM some_other_table FOR UPDATE")
    assert locked["kind"] == "write" and locked["target"] == "primary", locked
