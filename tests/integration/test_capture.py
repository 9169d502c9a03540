"""The write-LSN capture on a real primary (issue 5).

The capture is a FunctionCall of ``pg_current_wal_insert_lsn()`` (by OID) pipelined
behind the write: nothing is prepared on the server connection, so nothing a client or
the proxy empties (DISCARD ALL, DEALLOCATE ALL, the reset query after a pinned client,
the statement LRU) can break it, in any pool mode. One proxy with a single server
connection per backend, so every client shares the primary connection whose prepared
statements are checked (``pg_prepared_statements``, read in a transaction: that runs on
the primary, and reads only, so no capture follows it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from routing_util import (
    ProxyFactory,
    Routed,
    drop_table,
    lsn_int,
    make_table,
    start_routed,
    unique_name,
)

from router.localcluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]



@pytest.fixture
def table(pg_cluster: LocalCluster) -> Iterator[str]:
    name = make_table(pg_cluster, unique_name("rt_capture"), rows=4)
    yield name
    drop_table(pg_cluster, name)


@pytest.fixture
def routed(start_proxy: ProxyFactory, pg_cluster: LocalCluster, tmp_path: Path) -> Routed:
    return start_routed(
        start_proxy, pg_cluster, tmp_path, pool={"size": 1, "max_prepared_statements": 3}
    )


class Writer:
    """A client that writes and checks the token that comes with each write."""

    def __init__(self, conn: psycopg.Connection[Any], table: str) -> None:
        self.conn = conn
        self.table = table
        self.value = 0
        self.tokens: list[int] = []

    def write(self) -> int:
        self.value += 1
        self.conn.execute(f"UPDATE {self.table} SET v = %s WHERE id = 1", (self.value,))
        token = self.conn.info.parameter_status("pgrouter.write_lsn")
        assert token is not None, "no pgrouter.write_lsn after a write"
        lsn = lsn_int(token)
        assert not self.tokens or lsn > self.tokens[-1], (token, self.tokens)
        self.tokens.append(lsn)
        return lsn

    def prepared_on_primary(self) -> set[str]:
        with self.conn.transaction():
            rows = self.conn.execute("SELECT name FROM pg_prepared_statements").fetchall()
        return {row[0] for row in rows}


def capture_statements(writer: Writer) -> set[str]:
    """Statements prepared on the primary connection that are not the client's own."""
    return {name for name in writer.prepared_on_primary() if "wal" in name or "lsn" in name}


def test_every_write_has_its_token_whatever_empties_the_connection(
    routed: Routed, table: str
) -> None:
    with routed.connect(prepare_threshold=None) as conn:
        writer = Writer(conn, table)
        writer.write()
        writer.write()
        for statement, extended in [
            ("DEALLOCATE ALL", False),
            ("DISCARD ALL", False),
            ("DEALLOCATE ALL", True),
            ("DISCARD ALL", True),
        ]:
            # psycopg sends a statement without parameters as a simple Query, unless
            # binary results are asked for: then Parse/Bind/Describe/Execute/Sync.
            conn.execute(statement, prepare=False, binary=extended)
            writer.write()  # its token, on time (Writer checks it increases)
        assert capture_statements(writer) == set()  # the capture prepares nothing
        assert len(writer.tokens) == 6


def test_tokens_come_through_the_statement_lru(routed: Routed, table: str) -> None:
    with routed.connect(prepare_threshold=None) as conn:
        writer = Writer(conn, table)
        writer.write()
        conn.prepare_threshold = 5  # None (as connected) would ignore prepare=True
        with conn.transaction():  # on the primary, without a capture
            for i in range(4):  # more named statements than max_prepared_statements (3)
                row = conn.execute(f"SELECT {i} + %s", (1,), prepare=True).fetchone()
                assert row == (i + 1,)
        conn.prepare_threshold = None
        writer.write()
        writer.write()


def test_tokens_after_the_reset_query_of_a_pinned_client(routed: Routed, table: str) -> None:
    with routed.connect(prepare_threshold=None) as pinned:
        writer = Writer(pinned, table)
        writer.write()
        pinned.execute("/* pgrouter:primary */ PREPARE sql_level AS SELECT 1")  # pins it
        writer.write()
    # Released with DISCARD ALL (server_reset_query): the next client has the same
    # server connection, empty.
    with routed.connect(prepare_threshold=None) as conn:
        writer = Writer(conn, table)
        writer.write()
        writer.write()
        assert capture_statements(writer) == set()


def test_a_write_inside_a_do_block_has_its_token(routed: Routed, table: str) -> None:
    with routed.connect(prepare_threshold=None) as conn:
        writer = Writer(conn, table)
        first = writer.write()
        conn.execute(f"DO $$ BEGIN UPDATE {table} SET v = -1 WHERE id = 2; END $$")
        shown = conn.execute("SHOW pgrouter.write_lsn").fetchone()
        assert shown is not None and lsn_int(shown[0]) > first
        assert conn.info.parameter_status("pgrouter.write_lsn") == shown[0]
        writer.write()


def test_session_mode_captures_the_same_way_whatever_the_client_discards(
    start_proxy: ProxyFactory, pg_cluster: LocalCluster, tmp_path: Path, table: str
) -> None:
    """In session mode the client's DISCARD ALL goes through unseen; every write still
    has its token on time."""
    routed = start_routed(
        start_proxy, pg_cluster, tmp_path, wait_replicas=False, pool={"mode": "session"}
    )
    with routed.connect(prepare_threshold=None) as conn:
        writer = Writer(conn, table)
        writer.write()
        conn.execute("DISCARD ALL")
        writer.write()
        assert capture_statements(writer) == set()
        writer.write()
        assert len(writer.tokens) == 3
