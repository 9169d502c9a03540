"""A bare BEGIN deferred to the next statement, against a real primary and two streaming
replicas (issue 4, routing: ``SET TRANSACTION READ ONLY`` as the first statement).

``BEGIN`` then ``SET TRANSACTION READ ONLY`` as separate messages (psql, psycopg with
autocommit off, asyncpg) must run the whole transaction on one replica; any other first
statement keeps it on the primary. Where a statement ran is asked of the server itself
(``inet_server_port()``, ``pg_is_in_recovery()``, ``transaction_read_only``) inside the
transaction; that a BEGIN;COMMIT never reached a server is read from pg_stat_statements
on every server.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from e2e.util import client_binary, libpq_env, run_client, superuser_conn
from routing_util import (
    Routed,
    calls_by_server,
    drop_table,
    ensure_stat_statements,
    log_mentions,
    make_table,
    module_routed,
    shown_in_report,
    sqlstate_of,
    unique_name,
    wait_for,
)

from router.localcluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROWS = 16
WHERE = "SELECT pg_is_in_recovery(), inet_server_port(), pg_backend_pid(), "
WHERE += "current_setting('transaction_read_only')"


@pytest.fixture(scope="module")
def table(pg_cluster: LocalCluster) -> Iterator[str]:
    ensure_stat_statements(pg_cluster)
    name = make_table(pg_cluster, unique_name("rt_defer"), rows=ROWS)
    yield name
    drop_table(pg_cluster, name)


@pytest.fixture(scope="module")
def shared_proxy(
    pg_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory, table: str
) -> Iterator[Routed]:
    yield from module_routed(pg_cluster, tmp_path_factory.mktemp("deferred"), None)


@pytest.fixture
def routed(request: pytest.FixtureRequest, shared_proxy: Routed) -> Iterator[Routed]:
    yield from shown_in_report(request, shared_proxy)


def where(conn: psycopg.Connection[Any], table: str) -> tuple[bool, int, int, str]:
    """(in recovery, server port, backend pid, transaction_read_only), asked of the server
    that runs the statement."""
    row = conn.execute(f"{WHERE} FROM {table} WHERE id = 1").fetchone()
    assert row is not None
    return row[0], row[1], row[2], row[3]


def psql(routed: Routed, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with psql: each statement its own simple Query."""
    argv = [client_binary("psql"), "-X", "-A", "-t", "-F", " "]
    if check:
        argv += ["-v", "ON_ERROR_STOP=1"]
    return run_client(argv, libpq_env(routed.proxy), input_text=script, check=check)


def primary_value(cluster: LocalCluster, table: str, row_id: int) -> int:
    with superuser_conn(cluster.primary) as conn:
        row = conn.execute(f"SELECT v FROM {table} WHERE id = %s", (row_id,)).fetchone()
    assert row is not None
    return int(row[0])


# --------------------------------------------------------------------------- read-only


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_psycopg_set_transaction_read_only_after_begin_runs_on_one_replica(
    routed: Routed, table: str, protocol: str
) -> None:
    used: set[int] = set()
    with routed.connect(autocommit=False) as conn:
        for _ in range(6):
            # psycopg sends BEGIN by itself first, then this statement: as a simple Query,
            # or (prepared) as Parse/Bind/Describe/Execute/Sync.
            conn.execute("SET TRANSACTION READ ONLY", prepare=protocol == "extended")
            seen = {where(conn, table) for _ in range(4)}
            conn.commit()
            assert len(seen) == 1, f"one read-only transaction ran on {seen}"
            ((in_recovery, port, _, read_only),) = seen
            assert in_recovery and port in routed.replica_ports, routed.name_of(port)
            assert read_only == "on"
            used.add(port)
    assert used <= routed.replica_ports


def test_psql_begin_then_set_transaction_read_only_runs_on_a_replica(
    routed: Routed, table: str
) -> None:
    out = psql(
        routed,
        f"BEGIN;\nSET TRANSACTION READ ONLY;\n{WHERE} FROM {table} WHERE id = 2;\n"
        f"{WHERE} FROM {table} WHERE id = 3;\nCOMMIT;\n",
    )
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith(("t ", "f "))]
    assert len(rows) == 2 and rows[0] == rows[1], out.stdout
    in_recovery, port, _, read_only = rows[0]
    assert in_recovery == "t" and int(port) in routed.replica_ports, out.stdout
    assert read_only == "on"


def test_asyncpg_transaction_with_set_transaction_read_only_runs_on_a_replica(
    routed: Routed, table: str
) -> None:
    async def main() -> tuple[int, bool]:
        conn = await asyncpg.connect(
            host=routed.proxy.host,
            port=routed.proxy.port,
            user=LocalCluster.APP_USER,
            password=LocalCluster.APP_PASSWORD,
            database=LocalCluster.APP_DB,
            timeout=10,
        )
        try:
            async with conn.transaction():  # sends "BEGIN;" by itself
                await conn.execute("SET TRANSACTION READ ONLY")
                port = await conn.fetchval("SELECT inet_server_port()")
                in_recovery = await conn.fetchval("SELECT pg_is_in_recovery()")
            return int(port), bool(in_recovery)
        finally:
            await conn.close()

    port, in_recovery = asyncio.run(main())
    assert in_recovery and port in routed.replica_ports, routed.name_of(port)


def test_write_in_a_declared_read_only_transaction_gets_the_replicas_25006(
    routed: Routed, pg_cluster: LocalCluster, table: str
) -> None:
    marker = unique_name("ro_write")
    before = primary_value(pg_cluster, table, 4)
    with routed.connect(autocommit=False) as conn:
        conn.execute("SET TRANSACTION READ ONLY")
        in_recovery, port, _, _ = where(conn, table)
        assert in_recovery, routed.name_of(port)
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"UPDATE {table} /* {marker} */ SET v = v + 1 WHERE id = 4")
        assert sqlstate_of(info.value) == "25006"
        conn.rollback()
    # It was refused where the transaction ran, the replica: the standby logged it, and
    # nothing changed on the primary.
    replica = next(r for r in pg_cluster.replicas if r.port == port)
    wait_for(lambda: log_mentions(replica, marker), 5, f"{replica.name} to log the refusal")
    assert primary_value(pg_cluster, table, 4) == before


# --------------------------------------------------------------------------- the primary


def test_bare_begin_then_update_commits_on_the_primary(
    routed: Routed, pg_cluster: LocalCluster, table: str
) -> None:
    before = primary_value(pg_cluster, table, 5)
    with routed.connect(autocommit=False) as conn:
        row = conn.execute(
            f"UPDATE {table} SET v = v + 1 WHERE id = 5 RETURNING inet_server_port()"
        ).fetchone()
        assert row is not None and row[0] == routed.primary_port
        in_recovery, port, _, read_only = where(conn, table)
        assert (in_recovery, port, read_only) == (False, routed.primary_port, "off")
        conn.commit()
    assert primary_value(pg_cluster, table, 5) == before + 1
    # psql: each statement its own Query.
    out = psql(
        routed,
        f"BEGIN;\nUPDATE {table} SET v = v + 1 WHERE id = 5 RETURNING inet_server_port();\n"
        "COMMIT;\n",
    )
    assert str(routed.primary_port) in out.stdout.split(), out.stdout
    assert primary_value(pg_cluster, table, 5) == before + 2


def test_begin_then_a_plain_read_stays_on_the_primary(routed: Routed, table: str) -> None:
    with routed.connect(autocommit=False) as conn:
        in_recovery, port, _, _ = where(conn, table)
        assert not in_recovery and port == routed.primary_port, routed.name_of(port)
        conn.rollback()


def test_begin_then_set_transaction_isolation_level_goes_to_the_primary(
    routed: Routed, table: str
) -> None:
    with routed.connect(autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        in_recovery, port, _, _ = where(conn, table)
        isolation = conn.execute("SHOW transaction_isolation").fetchone()
        conn.commit()
    assert not in_recovery and port == routed.primary_port, routed.name_of(port)
    assert isolation == ("serializable",)


def test_serializable_read_only_transactions_run_on_the_primary(
    routed: Routed, table: str
) -> None:
    # A hot standby refuses SERIALIZABLE with 0A000: these must not be sent to a replica.
    with routed.connect(autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY")
        in_recovery, port, _, read_only = where(conn, table)
        conn.commit()
    assert not in_recovery and port == routed.primary_port, routed.name_of(port)
    assert read_only == "on"
    with routed.connect() as conn:
        conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE")
        in_recovery, port, _, read_only = where(conn, table)
        conn.execute("COMMIT")
    assert not in_recovery and port == routed.primary_port, routed.name_of(port)
    assert read_only == "on"


# --------------------------------------------------------------------------- no server


def test_begin_commit_with_nothing_between_touches_no_server(
    routed: Routed, pg_cluster: LocalCluster
) -> None:
    marker = unique_name("empty_tx")
    out = psql(
        routed,
        f"/* {marker} */ BEGIN;\n/* {marker} */ COMMIT;\n"
        f"/* {marker} */ START TRANSACTION;\n/* {marker} */ ROLLBACK;\n",
    )
    assert out.stdout.split() == ["BEGIN", "COMMIT", "START", "TRANSACTION", "ROLLBACK"]
    with routed.connect() as conn:
        conn.execute(f"/* {marker} */ BEGIN")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.execute(f"/* {marker} */ COMMIT")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert sum(calls_by_server(pg_cluster, marker).values()) == 0
    # The same BEGIN with a statement behind it does reach a server, where the
    # statistics see it: the check above would have seen it too.
    psql(routed, f"/* {marker} */ BEGIN;\nSELECT 1;\n/* {marker} */ COMMIT;\n")
    assert sum(calls_by_server(pg_cluster, marker).values()) == 2
