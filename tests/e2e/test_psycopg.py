"""psycopg 3 through the proxy: the driver features applications rely on, from CRUD to
pipeline mode, COPY in both formats, cancellation, notices and notifications."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import ProxyProcess
from psycopg import errors, sql

from e2e.util import (
    activity,
    connect,
    primary_conn,
    proxy_fixtures,
    running,
    scalar,
    unique_name,
    wait_for,
)
from router.localcluster import LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

POOL_MODES = ["session", "transaction"]
module_proxy, proxy = proxy_fixtures(POOL_MODES)


@pytest.fixture
def table(proxy: ProxyProcess) -> Iterator[str]:
    """A fresh ``(id serial PRIMARY KEY, name text, value int)`` table, dropped afterwards."""
    name = unique_name("pg3")
    with connect(proxy) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, name text, value int)").format(
                sql.Identifier(name)
            )
        )
    yield name
    with connect(proxy) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


def count(conn: psycopg.Connection[Any], table: str) -> int:
    return int(scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))))


def count_on_primary(conn: psycopg.Connection[Any], table: str) -> int:
    """``count`` inside a transaction: on the primary in every pool mode. (In transaction
    mode a read outside one may go to a replica, which sees another client's commit only
    once it has replayed it.)"""
    with conn.transaction():
        return count(conn, table)


def test_crud(proxy: ProxyProcess, table: str) -> None:
    with connect(proxy) as conn:
        ids = [
            scalar(conn, f"INSERT INTO {table} (name, value) VALUES (%s, %s) RETURNING id", (n, v))
            for n, v in [("alpha", 1), ("beta", 2), ("gamma", 3)]
        ]
        assert len(set(ids)) == 3
        cur = conn.execute(f"UPDATE {table} SET value = value * 10 WHERE value >= %s", (2,))
        assert cur.rowcount == 2
        cur = conn.execute(f"DELETE FROM {table} WHERE name = %s", ("alpha",))
        assert cur.rowcount == 1
        rows = conn.execute(f"SELECT name, value FROM {table} ORDER BY id").fetchall()
        assert rows == [("beta", 20), ("gamma", 30)]
        assert conn.execute(f"SELECT * FROM {table} WHERE name = %s", ("nobody",)).fetchall() == []


def test_transactions_commit_and_rollback(
    proxy: ProxyProcess, pg_cluster: LocalCluster, table: str
) -> None:
    with connect(proxy) as conn, connect(proxy) as other:
        with conn.transaction():
            conn.execute(f"INSERT INTO {table} (name) VALUES ('committed')")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            assert count_on_primary(other, table) == 0  # not visible before commit
        assert count_on_primary(other, table) == 1
        with pytest.raises(RuntimeError), conn.transaction():
            conn.execute(f"INSERT INTO {table} (name) VALUES ('rolled back')")
            raise RuntimeError("abort the transaction")
        with conn.transaction() as tx:
            conn.execute(f"INSERT INTO {table} (name) VALUES ('rolled back too')")
            raise psycopg.Rollback(tx)
    with connect(proxy, autocommit=False) as conn:
        conn.execute(f"INSERT INTO {table} (name) VALUES ('explicit rollback')")
        conn.rollback()
        conn.execute(f"INSERT INTO {table} (name) VALUES ('explicit commit')")
        conn.commit()
    with primary_conn(pg_cluster) as direct:
        names = direct.execute(f"SELECT name FROM {table} ORDER BY id").fetchall()
    assert names == [("committed",), ("explicit commit",)]


def test_error_inside_transaction_fails_it_until_rollback(proxy: ProxyProcess, table: str) -> None:
    with connect(proxy, autocommit=False) as conn:
        conn.execute(f"INSERT INTO {table} (name) VALUES ('before error')")
        with pytest.raises(errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction) as failed:
            conn.execute("SELECT 1")
        assert failed.value.sqlstate == "25P02"
        conn.rollback()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert scalar(conn, "SELECT 41 + 1") == 42
        assert count(conn, table) == 0  # the insert before the error was rolled back
        conn.commit()


def test_copy_text_several_megabytes_both_ways(proxy: ProxyProcess, table: str) -> None:
    rows = [(f"name-{i:06d}-" + "x" * (i % 200), i) for i in range(60_000)]  # ~7 MB as text
    sent = hashlib.sha256()
    with connect(proxy) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY {table} (name, value) FROM STDIN") as copy:
            for name, value in rows:
                line = f"{name}\t{value}\n".encode()
                sent.update(line)
                copy.write(line)
        assert count(conn, table) == len(rows)
        received = hashlib.sha256()
        size = 0
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY (SELECT name, value FROM {table} ORDER BY id) TO STDOUT") as copy,
        ):
            for chunk in copy:
                received.update(chunk)
                size += len(chunk)
        assert size > 5 * 1024 * 1024
        assert received.hexdigest() == sent.hexdigest()
        assert scalar(conn, "SELECT 'still in sync'") == "still in sync"


def test_queries_after_copy_in_and_out_on_fresh_connections(proxy: ProxyProcess) -> None:
    """Flow control across releases: while psycopg reads a COPY TO slower than the server
    sends it, the proxy stops reading that server. When the answer ends in that state the
    server goes back to the pool, and it must read again there, or the next query run on
    it never gets an answer. The copy test above, in a loop (it hung once in 30 to 100
    runs of it, sooner in the compiled build)."""
    rows = [(f"name-{i:06d}-" + "x" * (i % 200), i) for i in range(60_000)]  # ~7 MB as text
    rounds: list[int] = []
    failure: list[BaseException] = []

    def rounds_of_copies() -> None:
        try:
            for i in range(25):
                name = unique_name("pg3_flow")
                with connect(proxy) as conn:
                    conn.execute(f"CREATE TABLE {name} (id serial, name text, value int)")
                with connect(proxy) as conn:
                    with (
                        conn.cursor() as cur,
                        cur.copy(f"COPY {name} (name, value) FROM STDIN") as copy,
                    ):
                        for text, value in rows:
                            copy.write(f"{text}\t{value}\n".encode())
                    assert count(conn, name) == len(rows)
                    size = 0
                    # Sorted: the server sends the whole answer in a burst, faster than
                    # psycopg takes it.
                    query = f"COPY (SELECT name, value FROM {name} ORDER BY id) TO STDOUT"
                    with conn.cursor() as cur, cur.copy(query) as copy:
                        for chunk in copy:
                            size += len(chunk)
                    assert size > 5 * 1024 * 1024
                    assert scalar(conn, f"SELECT {i}") == i
                with connect(proxy) as conn:
                    conn.execute(f"DROP TABLE {name}")
                rounds.append(i)
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=rounds_of_copies, daemon=True)
    worker.start()
    worker.join(50)
    assert not worker.is_alive(), (
        f"stuck after {len(rounds)} rounds of COPY FROM, COPY TO, SELECT: a query ran on "
        "a server connection the proxy no longer reads"
    )
    assert not failure, failure
    assert rounds == list(range(25))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def test_slow_reader_holds_back_the_server(proxy: ProxyProcess, pg_cluster: LocalCluster) -> None:
    """Flow control: while the client does not read, the proxy stops reading the server
    (which then blocks in ClientWrite) instead of buffering the whole result."""
    marker = unique_name("backpressure")
    rows, width = 100_000, 1000  # about 100 MB of COPY data
    before = rss_bytes(proxy.pid)
    with connect(proxy) as conn, conn.cursor() as cur:
        query = (
            f"COPY (SELECT repeat('x', {width}) /* {marker} */ "
            f"FROM generate_series(1, {rows})) TO STDOUT"
        )
        with cur.copy(query) as copy:
            chunks = iter(copy)
            received = len(next(chunks))

            def server_state() -> list[tuple[str, str | None]]:
                return [(state, event) for _, _, state, event in activity(pg_cluster, marker)]

            def blocked_on_client() -> bool:
                if server_state() != [("active", "ClientWrite")]:
                    return False
                time.sleep(0.2)  # still blocked a moment later: held back, not just busy
                return server_state() == [("active", "ClientWrite")]

            wait_for(blocked_on_client, 15, "the server to block writing to the proxy")
            grown = rss_bytes(proxy.pid) - before
            assert grown < 40 * 1024 * 1024, f"pgrouter's memory grew by {grown} bytes"
            for chunk in chunks:
                received += len(chunk)
    assert received == rows * (width + 1)


def test_single_large_values_are_relayed_whole(proxy: ProxyProcess, table: str) -> None:
    big = "".join(chr(0x41 + i % 26) for i in range(8 * 1024 * 1024))  # one 8 MB Bind value
    with connect(proxy) as conn:
        conn.execute(f"INSERT INTO {table} (name) VALUES (%s)", (big,))
        # One 8 MB DataRow back, then a 24 MB one built on the server.
        assert scalar(conn, f"SELECT name FROM {table}") == big
        assert (
            scalar(conn, f"SELECT md5(name) FROM {table}") == hashlib.md5(big.encode()).hexdigest()
        )
        tripled = scalar(conn, f"SELECT repeat(name, 3) FROM {table}")
        assert len(tripled) == 3 * len(big) and tripled[: len(big)] == big


def test_copy_binary_round_trip(proxy: ProxyProcess) -> None:
    name = unique_name("pg3_bin")
    start = datetime(2024, 1, 1, tzinfo=UTC)
    rows = [(i, f"row {i} ✓", start + timedelta(seconds=i), i % 3 == 0) for i in range(5_000)]
    with connect(proxy) as conn:
        conn.execute(f"CREATE TABLE {name} (id int, label text, at timestamptz, flag bool)")
        try:
            with conn.cursor() as cur:
                with cur.copy(f"COPY {name} FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int4", "text", "timestamptz", "bool"])
                    for row in rows:
                        copy.write_row(row)
                with cur.copy(
                    f"COPY (SELECT * FROM {name} ORDER BY id) TO STDOUT (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["int4", "text", "timestamptz", "bool"])
                    back = list(copy.rows())
            assert back == rows
            assert scalar(conn, f"SELECT count(*) FROM {name} WHERE flag") == len(
                range(0, 5_000, 3)
            )
        finally:
            conn.execute(f"DROP TABLE {name}")


def test_named_cursor_fetches_in_batches(proxy: ProxyProcess) -> None:
    with connect(proxy, autocommit=False) as conn:
        with conn.cursor(name=unique_name("cur")) as cur:
            cur.itersize = 500
            cur.execute("SELECT g, g * 2 FROM generate_series(1, 10000) g ORDER BY g")
            first = cur.fetchmany(1000)
            assert [r[0] for r in first] == list(range(1, 1001))
            cur.scroll(-10)
            assert cur.fetchone() == (991, 1982)
            cur.scroll(9)  # back where fetchmany left off
            rest = list(cur)  # iterates in batches of itersize
            assert len(rest) == 9000
            assert rest[0] == (1001, 2002) and rest[-1] == (10000, 20000)
        conn.commit()
        # A WITH HOLD cursor outlives its transaction.
        with conn.cursor(name=unique_name("held"), withhold=True) as held:
            held.execute("SELECT g FROM generate_series(1, 300) g")
            conn.commit()
            assert sum(r[0] for r in held.fetchmany(300)) == 300 * 301 // 2
        conn.commit()


def test_cancel_stops_a_running_query_and_connection_stays_usable(
    proxy: ProxyProcess, pg_cluster: LocalCluster
) -> None:
    marker = unique_name("cancel_me")
    with connect(proxy) as conn:

        def cancel_when_running() -> None:
            wait_for(lambda: running(pg_cluster, marker), 10, "the pg_sleep to start on a server")
            conn.cancel()

        canceller = threading.Thread(target=cancel_when_running, daemon=True)
        canceller.start()
        began = time.monotonic()
        with pytest.raises(errors.QueryCanceled) as canceled:
            conn.execute(f"SELECT pg_sleep(30) /* {marker} */")
        assert canceled.value.sqlstate == "57014"
        assert time.monotonic() - began < 15
        canceller.join(5)
        assert scalar(conn, "SELECT 'usable after cancel'") == "usable after cancel"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert running(pg_cluster, marker) == []


def test_notice_reaches_notice_handler(proxy: ProxyProcess) -> None:
    notices: list[tuple[str | None, str | None, str | None]] = []
    with connect(proxy) as conn:
        conn.add_notice_handler(
            lambda diag: notices.append((diag.severity, diag.sqlstate, diag.message_primary))
        )
        conn.execute(
            "DO $$ BEGIN RAISE NOTICE 'first notice %', 42; RAISE WARNING 'then a warning'; END $$"
        )
        assert scalar(conn, "SELECT 1") == 1
    assert notices == [
        ("NOTICE", "00000", "first notice 42"),
        ("WARNING", "01000", "then a warning"),
    ]


def test_listen_notify_between_two_connections(proxy: ProxyProcess) -> None:
    channel = unique_name("chan")
    with connect(proxy) as listener, connect(proxy) as sender:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        sender.execute("SELECT pg_notify(%s, %s)", (channel, "first"))
        with sender.transaction():  # delivered only on commit
            sender.execute(sql.SQL("NOTIFY {}, 'second'").format(sql.Identifier(channel)))
        received = [(n.channel, n.payload) for n in listener.notifies(timeout=10, stop_after=2)]
        assert received == [(channel, "first"), (channel, "second")]


def test_pipeline_mode_returns_every_result(proxy: ProxyProcess, table: str) -> None:
    with connect(proxy) as conn:
        with conn.pipeline() as pipeline:
            inserted = [
                conn.execute(
                    f"INSERT INTO {table} (name, value) VALUES (%s, %s) RETURNING id", (f"p{i}", i)
                )
                for i in range(20)
            ]
            with conn.cursor() as many:
                many.executemany(
                    f"INSERT INTO {table} (name, value) VALUES (%s, %s)",
                    [(f"m{i}", 100 + i) for i in range(50)],
                )
            total = conn.execute(f"SELECT count(*), sum(value) FROM {table}")
            words = conn.execute("SELECT %s::text || %s::text", ("pipe", "line"))
            pipeline.sync()
            ids = [cur.fetchone()[0] for cur in inserted]  # type: ignore[index]
            assert ids == sorted(ids) and len(set(ids)) == 20
            assert total.fetchone() == (70, sum(range(20)) + sum(range(100, 150)))
            assert words.fetchone() == ("pipeline",)
        # An error aborts its pipeline's implicit transaction (everything up to the Sync);
        # the connection recovers afterwards.
        with pytest.raises(errors.UndefinedTable), conn.pipeline():
            conn.execute(f"INSERT INTO {table} (name) VALUES ('lost')")
            conn.execute("SELECT * FROM no_such_table_here")
            conn.execute(f"INSERT INTO {table} (name) VALUES ('lost too')")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert count(conn, table) == 70


def test_prepared_statements(proxy: ProxyProcess, pg_cluster: LocalCluster, table: str) -> None:
    with connect(proxy) as conn:
        query = f"INSERT INTO {table} (name, value) VALUES (%s, %s) RETURNING value * 2"
        as_parsed = f"INSERT INTO {table} (name, value) VALUES ($1, $2) RETURNING value * 2"
        doubled = [scalar_prepared(conn, query, (f"n{i}", i)) for i in range(9)]
        # The check shares a transaction with a use of the statement, so it sees the server
        # connection that ran it in any pool mode.
        with conn.transaction():
            doubled.append(scalar_prepared(conn, query, ("n9", 9)))
            prepared = conn.execute(
                "SELECT statement FROM pg_prepared_statements WHERE NOT from_sql"
            ).fetchall()
        assert doubled == [2 * i for i in range(10)]
        assert [row[0] for row in prepared].count(as_parsed) == 1
    pg_cluster.wait_replicated()  # the reader below is another client: maybe a replica's
    with connect(proxy, prepare_threshold=0) as conn:
        lookup = f"SELECT name FROM {table} WHERE value = %s"
        for i in (3, 5, 7):
            assert scalar(conn, lookup, (i,)) == f"n{i}"
        with conn.transaction():
            assert scalar(conn, lookup, (3,)) == "n3"
            statements = [
                row[0]
                for row in conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
            ]
        assert statements.count(f"SELECT name FROM {table} WHERE value = $1") == 1


def scalar_prepared(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...]) -> Any:
    row = conn.execute(query, params, prepare=True).fetchone()
    assert row is not None
    return row[0]


def test_large_result_arrives_complete(proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        rows = conn.execute(
            "SELECT g, md5(g::text) FROM generate_series(1, 100000) g ORDER BY g"
        ).fetchall()
        assert len(rows) == 100_000
        assert rows[0] == (1, hashlib.md5(b"1").hexdigest())
        assert rows[-1] == (100_000, hashlib.md5(b"100000").hexdigest())
        assert sum(r[0] for r in rows) == 100_000 * 100_001 // 2
        with conn.cursor(binary=True) as cur:
            cur.execute("SELECT g FROM generate_series(1, 100000) g")
            assert sum(r[0] for r in cur) == 100_000 * 100_001 // 2
