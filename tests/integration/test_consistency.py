"""No stale reads, with real replication lag on real replicas (issue 5).

Lag is produced on the standbys with ``pg_wal_replay_pause()`` (always resumed on the
way out) and ``recovery_min_apply_delay``. One proxy serves the module; its policy file
gives each consistency level a route, selected with a comment tag
(``/* pgrouter:tag=strong */``), and the untagged default is read_your_writes with
on_stale primary. Where a read ran is read from ``inet_server_port()`` in its select list.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from e2e.util import superuser_conn
from routing_util import (
    PROBE_INTERVAL,
    ProxyFactory,
    Routed,
    calls_by_server,
    drop_table,
    ensure_stat_statements,
    lsn_int,
    make_table,
    module_routed,
    pause_replay,
    replay_lsn,
    replay_paused,
    resume_replay,
    set_apply_delay,
    show_replicas,
    shown_in_report,
    sqlstate_of,
    start_routed,
    unique_name,
    value_and_port,
    wait_for,
)
from util import Background, login_error

from router.localcluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EVENTUAL_BOUND = 2.0  # seconds
WAIT_TIMEOUT = 1.0
LONG_WAIT_TIMEOUT = 3.0
APPLY_DELAY = 1.0
CLIENT_SLACK = 0.05  # seconds: psycopg and the test thread, on a loaded machine
TIGHT_BYTES = 512 * 1024
LOOSE_BYTES = 4 * 1024 * 1024

POLICY = f"""\
version: 1
defaults:
  consistency: read_your_writes
  on_stale: primary
rules:
  - name: eventual-2s
    match: {{tag: eventual}}
    consistency: eventual
    max_lag: {EVENTUAL_BOUND:g}s
  - name: lag-tight
    match: {{tag: lagtight}}
    consistency: eventual
    max_lag: {TIGHT_BYTES}
  - name: lag-loose
    match: {{tag: lagloose}}
    consistency: eventual
    max_lag: {LOOSE_BYTES}
  - name: strong
    match: {{tag: strong}}
    consistency: strong
  - name: wait
    match: {{tag: wait}}
    on_stale: wait
    wait_timeout: {WAIT_TIMEOUT:g}s
  - name: wait-long
    match: {{tag: waitlong}}
    on_stale: wait
    wait_timeout: {LONG_WAIT_TIMEOUT:g}s
  - name: error
    match: {{tag: error}}
    on_stale: error
"""

ROWS = 32


@pytest.fixture(scope="module")
def table(pg_cluster: LocalCluster) -> Iterator[str]:
    """The module's table, and ``<table>_bump(id)``: a VOLATILE function that writes,
    created before the proxy starts (so the proxy reads it from pg_proc)."""
    ensure_stat_statements(pg_cluster)
    name = make_table(pg_cluster, unique_name("rt_cons"), rows=ROWS)
    create_bump_function(pg_cluster, name, f"{name}_bump")
    yield name
    drop_table(pg_cluster, name)


def create_bump_function(cluster: LocalCluster, table: str, function: str) -> None:
    with superuser_conn(cluster.primary) as conn:
        conn.execute(
            f"CREATE FUNCTION {function}(row_id int) RETURNS int LANGUAGE sql VOLATILE AS "
            f"$$ UPDATE {table} SET v = v + 1 WHERE id = row_id RETURNING v $$"
        )
        conn.execute(f"ALTER FUNCTION {function}(int) OWNER TO {cluster.APP_USER}")
    cluster.wait_replicated()


@pytest.fixture(scope="module")
def shared_proxy(
    pg_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory, table: str
) -> Iterator[Routed]:
    yield from module_routed(pg_cluster, tmp_path_factory.mktemp("consistency"), POLICY)


@pytest.fixture
def routed(request: pytest.FixtureRequest, shared_proxy: Routed) -> Iterator[Routed]:
    yield from shown_in_report(request, shared_proxy)


def tagged(tag: str) -> str:
    return f"/* pgrouter:tag={tag} */ "


def write_token(conn: psycopg.Connection[Any]) -> str:
    token = conn.info.parameter_status("pgrouter.write_lsn")
    assert token is not None, "no pgrouter.write_lsn ParameterStatus after a write"
    assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", token), token
    return token


def direct_write(cluster: LocalCluster, table: str, row_id: int, value: int) -> None:
    """A write straight to the primary, behind the proxy's back."""
    with superuser_conn(cluster.primary) as conn:
        conn.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (value, row_id))


def settle(routed: Routed, table: str, row_id: int, value: int, prefix: str = "") -> None:
    """Wait until a fresh connection reads ``value`` from a replica (replicas caught up,
    and the monitor has seen it)."""
    routed.cluster.wait_replicated()
    with routed.connect() as conn:

        def fresh_on_replica() -> bool:
            got, port = value_and_port(conn, table, row_id, prefix)
            return got == value and port in routed.replica_ports

        wait_for(fresh_on_replica, 10, f"row {row_id} = {value} on a replica")


# --------------------------------------------------------------------------- eventual


def test_eventual_serves_a_lagging_replica_within_the_bound_and_never_beyond(
    routed: Routed, pg_cluster: LocalCluster, table: str
) -> None:
    row = 1
    settle(routed, table, row, 0, tagged("eventual"))
    timeline: list[tuple[float, float, int, int]] = []  # (start, end, value, port)
    with routed.connect() as conn, replay_paused(pg_cluster.replicas):
        direct_write(pg_cluster, table, row, 1)
        written = time.monotonic()
        while time.monotonic() - written < EVENTUAL_BOUND + 1.2:
            started = time.monotonic() - written
            value, port = value_and_port(conn, table, row, tagged("eventual"))
            timeline.append((started, time.monotonic() - written, value, port))
            time.sleep(0.03)
    shown = [(round(s, 2), v, routed.name_of(p)) for s, _, v, p in timeline]
    within = [t for t in timeline if t[1] < EVENTUAL_BOUND - 0.3]
    beyond = [t for t in timeline if t[0] > EVENTUAL_BOUND + 2 * PROBE_INTERVAL + 0.1]
    assert len(within) >= 10 and len(beyond) >= 5, shown
    # Within the bound the lagging replicas serve the read, stale as it is...
    assert all(port in routed.replica_ports and value == 0 for _, _, value, port in within), shown
    # ...beyond it, never: the primary answers, with the new value.
    assert all(port == routed.primary_port and value == 1 for _, _, value, port in beyond), shown
    # Once replay resumes the replicas are readmitted.
    settle(routed, table, row, 1, tagged("eventual"))


def test_monitor_lag_in_bytes_agrees_with_pg_stat_replication(
    routed: Routed, pg_cluster: LocalCluster, table: str
) -> None:
    row = 2
    settle(routed, table, row, 0)
    pad = unique_name("rt_pad")
    with routed.connect() as conn, replay_paused(pg_cluster.replicas):
        with superuser_conn(pg_cluster.primary) as primary:
            # About 1MB of WAL the standbys receive but do not replay.
            primary.execute(
                f"CREATE TABLE {pad} AS SELECT g, repeat('x', 900) AS pad "
                "FROM generate_series(1, 1000) g"
            )

            def lag_per_standby() -> dict[str, int] | None:
                rows = primary.execute(
                    "SELECT application_name, "
                    "pg_wal_lsn_diff(pg_current_wal_insert_lsn(), replay_lsn)::bigint "
                    "FROM pg_stat_replication"
                ).fetchall()
                lags = {name: int(lag) for name, lag in rows}
                ok = len(lags) == 2 and all(lag >= TIGHT_BYTES for lag in lags.values())
                return lags if ok else None

            lags = wait_for(lag_per_standby, 10, "pg_stat_replication to show the lag")
        # What the primary reports: between the two bounds.
        assert all(TIGHT_BYTES < lag < LOOSE_BYTES for lag in lags.values()), lags

        # The monitor must agree: over the tight bound (reads leave the replicas within
        # two probes), under the loose one (reads stay).
        def tight_on_primary() -> bool:
            return value_and_port(conn, table, row, tagged("lagtight"))[1] == routed.primary_port

        wait_for(tight_on_primary, 2 * PROBE_INTERVAL + 1.0, "the tight bound to exclude both")
        for _ in range(8):
            _, port = value_and_port(conn, table, row, tagged("lagtight"))
            assert port == routed.primary_port, f"lag {lags}, tight read on {routed.name_of(port)}"
            _, port = value_and_port(conn, table, row, tagged("lagloose"))
            assert port in routed.replica_ports, f"lag {lags}, loose read on {routed.name_of(port)}"

        # SHOW REPLICAS gives the same numbers: each standby's replay LSN as the primary
        # reports it, and its lag in bytes behind the primary's insert LSN.
        with superuser_conn(pg_cluster.primary) as primary:
            rows = primary.execute(
                "SELECT application_name, replay_lsn::text, "
                "pg_wal_lsn_diff(pg_current_wal_insert_lsn(), replay_lsn)::bigint "
                "FROM pg_stat_replication"
            ).fetchall()
        expected = {name: (lsn, int(lag)) for name, lsn, lag in rows}
        seen: list[dict[str, dict[str, Any]]] = []

        def console_agrees() -> bool:
            shown = show_replicas(routed)
            seen.append(shown)
            return all(
                shown[name]["replay_lsn"] == lsn
                and abs(int(shown[name]["lag_bytes"]) - lag) <= 8192
                for name, (lsn, lag) in expected.items()
            )

        wait_for(console_agrees, 2, f"SHOW REPLICAS to match {expected}: last {seen[-1:]}")
    drop_table(pg_cluster, pad)


# --------------------------------------------------------------------------- read your writes


def test_read_your_writes_on_the_same_connection_with_replay_paused(
    routed: Routed, pg_cluster: LocalCluster, table: str
) -> None:
    row = 3
    settle(routed, table, row, 0)
    tokens = []
    with routed.connect() as conn, routed.connect() as bystander:
        with replay_paused(pg_cluster.replicas):
            for i in range(1, 6):
                conn.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (i, row))
                tokens.append(write_token(conn))
                value, port = value_and_port(conn, table, row)
                assert value == i, (
                    f"stale read after write {i}: {value} from {routed.name_of(port)}"
                )
                assert port == routed.primary_port
                # The replicas really are stale: a client with no writes of its own is
                # served by one of them, with the old value.
                value, port = value_and_port(bystander, table, row)
                assert (value, port in routed.replica_ports) == (0, True)
            assert conn.execute("SHOW pgrouter.write_lsn").fetchone() == (tokens[-1],)
        assert [lsn_int(t) for t in tokens] == sorted(lsn_int(t) for t in tokens)
        assert len(set(tokens)) == len(tokens), tokens

        # Once a replica has replayed the write, this client's reads return to replicas.
        def back_on_replica() -> bool:
            value, port = value_and_port(conn, table, row)
            assert value == 5
            return port in routed.replica_ports

        wait_for(back_on_replica, 5, "the writer's reads to use a caught-up replica")


def test_read_your_writes_after_transactions_pipelines_and_functions(
    routed: Routed, pg_cluster: LocalCluster, table: str
) -> None:
    row = 10
    settle(routed, table, row, 0)
    with routed.connect() as conn, replay_paused(pg_cluster.replicas):
        with conn.transaction():
            conn.execute(f"UPDATE {table} SET v = 1 WHERE id = %s", (row,))
        token = write_token(conn)
        assert value_and_port(conn, table, row) == (1, routed.primary_port)

        with conn.pipeline():
            conn.execute(f"UPDATE {table} SET v = 2 WHERE id = %s", (row,))
        assert lsn_int(write_token(conn)) > lsn_int(token)
        assert value_and_port(conn, table, row) == (2, routed.primary_port)

        # A VOLATILE user function that writes (known from pg_proc): a write.
        assert conn.execute(f"SELECT {table}_bump(%s)", (row,)).fetchone() == (3,)
        assert value_and_port(conn, table, row) == (3, routed.primary_port)


@pytest.mark.parametrize("how", ["primary hint", "retried after 25006"])
def test_read_your_writes_after_a_write_the_classifier_took_for_a_read(
    routed: Routed, pg_cluster: LocalCluster, table: str, how: str
) -> None:
    """A writing function created after the proxy last read pg_proc looks like a read.
    Sent to the primary by a hint, or refused by a replica (25006) and run on the primary
    instead, it wrote all the same: this client must then read what it wrote."""
    row = 11 if how == "primary hint" else 12
    settle(routed, table, row, 0)
    function = unique_name("rt_late_bump")
    create_bump_function(pg_cluster, table, function)
    prefix = "/* pgrouter:primary */ " if how == "primary hint" else ""
    try:
        with routed.connect() as conn, replay_paused(pg_cluster.replicas):
            for expected in (1, 2):
                got = conn.execute(f"{prefix}SELECT {function}(%s)", (row,)).fetchone()
                assert got == (expected,)
                value, port = value_and_port(conn, table, row)
                assert value == expected, (
                    f"stale read after a write through {function}(): {value} from "
                    f"{routed.name_of(port)}"
                )
    finally:
        with superuser_conn(pg_cluster.primary) as admin:
            admin.execute(f"DROP FUNCTION IF EXISTS {function}(int)")


def test_tokens_on_another_connection(routed: Routed, pg_cluster: LocalCluster, table: str) -> None:
    row = 4
    settle(routed, table, row, 0)
    before = calls_by_server(pg_cluster, "min_lsn")
    with replay_paused(pg_cluster.replicas):
        with routed.connect() as writer:
            writer.execute(f"UPDATE {table} SET v = 44 WHERE id = %s", (row,))
            token = write_token(writer)

        with routed.connect() as reader:
            # No token, no own writes: a (stale) replica answers.
            value, port = value_and_port(reader, table, row)
            assert (value, port in routed.replica_ports) == (0, True)
            # SET pgrouter.min_lsn
            reader.execute(f"SET pgrouter.min_lsn = '{token}'")
            assert reader.execute("SHOW pgrouter.min_lsn").fetchone() == (token,)
            for _ in range(3):
                assert value_and_port(reader, table, row) == (44, routed.primary_port)

        # The startup option
        with routed.connect(options=f"-c pgrouter.min_lsn={token}") as reader:
            for _ in range(3):
                assert value_and_port(reader, table, row) == (44, routed.primary_port)

        # A statement comment: that statement only. (A statement shape of its own, so
        # pg_stat_statements would keep the comment's text if a server ever saw it.)
        with routed.connect() as reader:
            for _ in range(3):
                got = reader.execute(
                    f"/* pgrouter:min_lsn={token} */ SELECT v, inet_server_port() "
                    f"FROM {table} WHERE id = %s ORDER BY id",
                    (row,),
                ).fetchone()
                assert got == (44, routed.primary_port)
            value, port = value_and_port(reader, table, row)
            assert (value, port in routed.replica_ports) == (0, True)

            # Malformed tokens: 22P02, and the session goes on.
            with pytest.raises(psycopg.Error) as bad:
                reader.execute("SET pgrouter.min_lsn = 'not-an-lsn'")
            assert sqlstate_of(bad.value) == "22P02", bad.value
            with pytest.raises(psycopg.Error) as bad:
                value_and_port(reader, table, row, "/* pgrouter:min_lsn=12345 */ ")
            assert sqlstate_of(bad.value) == "22P02", bad.value
            assert value_and_port(reader, table, row)[0] == 0
    error = login_error(
        routed.proxy.port,
        LocalCluster.APP_USER,
        LocalCluster.APP_PASSWORD,
        options="-c pgrouter.min_lsn=0/XYZ",
    )
    assert error.sqlstate == "22P02", error
    # The tokens were consumed by the proxy: no server saw one.
    after = calls_by_server(pg_cluster, "min_lsn")
    assert after == before, f"statements naming min_lsn reached servers: {before} -> {after}"


# --------------------------------------------------------------------------- strong


def test_strong_never_serves_a_stale_read(
    routed: Routed, pg_cluster: LocalCluster, table: str
) -> None:
    row = 5
    settle(routed, table, row, 0)
    with routed.connect() as reader:
        # Caught up and idle, a strong read may use a replica.
        def strong_on_replica() -> bool:
            return value_and_port(reader, table, row, tagged("strong"))[1] in routed.replica_ports

        wait_for(strong_on_replica, 5, "a strong read on a caught-up replica")
        with replay_paused(pg_cluster.replicas):
            for i in range(1, 6):
                direct_write(pg_cluster, table, row, i)  # another client's write
                value, port = value_and_port(reader, table, row, tagged("strong"))
                assert value == i, f"strong read got {value} from {routed.name_of(port)}"
                assert port == routed.primary_port


# --------------------------------------------------------------------------- on_stale


def test_on_stale_wait_takes_the_replica_that_catches_up(
    routed: Routed, pg_cluster: LocalCluster, table: str
) -> None:
    row = 6
    settle(routed, table, row, 0)
    with routed.connect() as conn:
        try:
            for replica in pg_cluster.replicas:
                pause_replay(replica)
            conn.execute(f"UPDATE {table} SET v = 66 WHERE id = %s", (row,))
            started = time.monotonic()
            read = Background(lambda: value_and_port(conn, table, row, tagged("wait")))
            time.sleep(0.1)  # the read is waiting for a replica now
            assert not read.done(), "the read did not wait for a replica"
            for replica in pg_cluster.replicas:
                resume_replay(replica)
            value, port = read.join(WAIT_TIMEOUT + 5)
        finally:
            for replica in pg_cluster.replicas:
                resume_replay(replica)
        took = (read.finished_at or 0) - started
    assert value == 66
    assert port in routed.replica_ports, f"served by {routed.name_of(port)} after {took:.3f}s"
    assert took <= WAIT_TIMEOUT + PROBE_INTERVAL + CLIENT_SLACK, f"took {took:.3f}s"


def test_on_stale_wait_falls_back_to_the_primary_after_the_timeout(
    routed: Routed, pg_cluster: LocalCluster, table: str
) -> None:
    row = 7
    settle(routed, table, row, 0)
    with routed.connect() as conn, replay_paused(pg_cluster.replicas):
        conn.execute(f"UPDATE {table} SET v = 77 WHERE id = %s", (row,))
        started = time.monotonic()
        value, port = value_and_port(conn, table, row, tagged("wait"))
        took = time.monotonic() - started
    assert (value, port) == (77, routed.primary_port), routed.name_of(port)
    # Within wait_timeout plus one probe (and the client's own round trip).
    assert WAIT_TIMEOUT - 0.05 <= took <= WAIT_TIMEOUT + PROBE_INTERVAL + CLIENT_SLACK, took


def test_on_stale_error_names_the_required_and_the_freshest_lsn(
    routed: Routed, pg_cluster: LocalCluster, table: str
) -> None:
    row = 8
    settle(routed, table, row, 0)
    with routed.connect() as conn, replay_paused(pg_cluster.replicas):
        conn.execute(f"UPDATE {table} SET v = 88 WHERE id = %s", (row,))
        token = write_token(conn)
        replayed = {r.name: replay_lsn(r) for r in pg_cluster.replicas}
        freshest = max(replayed.values(), key=lsn_int)
        # The primary's view of the standbys agrees with theirs once they have reported.
        with superuser_conn(pg_cluster.primary) as primary:

            def reported() -> bool:
                rows = primary.execute(
                    "SELECT application_name, replay_lsn::text FROM pg_stat_replication"
                ).fetchall()
                return dict(rows) == replayed

            wait_for(reported, 12, f"pg_stat_replication to report replay at {replayed}")
        messages: list[str] = []

        def stale_error() -> re.Match[str] | None:
            with pytest.raises(psycopg.Error) as stale:
                value_and_port(conn, table, row, tagged("error"))
            assert sqlstate_of(stale.value) == "40001", stale.value
            message = str(stale.value)
            messages.append(message)
            found = re.search(
                r"needs ([0-9A-F]+/[0-9A-F]+), best ([0-9A-F]+/[0-9A-F]+)", messages[-1]
            )
            assert found is not None, messages[-1]
            assert lsn_int(found.group(1)) == lsn_int(token), (messages[-1], token)
            return found if lsn_int(found.group(2)) == lsn_int(freshest) else None

        # The monitor's freshest replay LSN is the one pg_stat_replication reports (once
        # a probe has run since the standbys reported it).
        wait_for(stale_error, 2 * PROBE_INTERVAL + 0.5, f"best = {freshest}: {messages}")
        # The session goes on; the default route falls back to the primary.
        assert value_and_port(conn, table, row) == (88, routed.primary_port)


def test_on_stale_wait_with_recovery_min_apply_delay(
    routed: Routed, pg_cluster: LocalCluster, table: str
) -> None:
    row = 9
    settle(routed, table, row, 0)
    try:
        for replica in pg_cluster.replicas:
            set_apply_delay(replica, f"{APPLY_DELAY:g}s")
        with routed.connect() as conn:
            conn.execute(f"UPDATE {table} SET v = 99 WHERE id = %s", (row,))
            started = time.monotonic()
            value, port = value_and_port(conn, table, row, tagged("waitlong"))
            took = time.monotonic() - started
            # The commit is applied on the standbys a second after it happened: the read
            # waited that long for one, rather than going to the primary.
            assert value == 99
            assert port in routed.replica_ports, f"{routed.name_of(port)} after {took:.3f}s"
            assert APPLY_DELAY - 0.3 <= took <= APPLY_DELAY + 0.5, f"took {took:.3f}s"
            # The default route does not wait: the primary answers at once.
            conn.execute(f"UPDATE {table} SET v = 100 WHERE id = %s", (row,))
            started = time.monotonic()
            assert value_and_port(conn, table, row) == (100, routed.primary_port)
            assert time.monotonic() - started < 0.5
    finally:
        for replica in pg_cluster.replicas:
            set_apply_delay(replica, None)
    pg_cluster.wait_replicated()


# --------------------------------------------------------------------------- capture_write_lsn

STICKY = 1.5  # seconds
STICKY_POLICY = POLICY.replace(
    "  on_stale: primary\n", f"  on_stale: primary\n  sticky_after_write: {STICKY:g}s\n", 1
)


def test_capture_write_lsn_off_sends_no_token(
    start_proxy: ProxyFactory,
    routed: Routed,
    pg_cluster: LocalCluster,
    table: str,
    tmp_path: Path,
) -> None:
    row = 30
    off = start_routed(
        start_proxy,
        pg_cluster,
        tmp_path,
        POLICY,
        databases={pg_cluster.APP_DB: {"capture_write_lsn": False}},
    )
    with off.connect() as conn:
        for value in range(1, 4):
            conn.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (value, row))
        with conn.transaction():
            conn.execute(f"UPDATE {table} SET v = 4 WHERE id = %s", (row,))
        assert conn.info.parameter_status("pgrouter.write_lsn") is None
        assert conn.execute("SHOW pgrouter.write_lsn").fetchone() == ("",)
    # (That no capture reaches the primary is checked on the proxy's traffic in
    # tests/unit/test_deferred.py: the FunctionCall it would send is not counted by
    # pg_stat_statements.)

    # The same writes through the shared proxy (capture on): a token for each.
    with routed.connect() as conn:
        for value in range(5, 8):
            conn.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (value, row))
            write_token(conn)
        with conn.transaction():
            conn.execute(f"UPDATE {table} SET v = 8 WHERE id = %s", (row,))
        write_token(conn)


def test_capture_write_lsn_off_keeps_tokens_and_sticky_after_write(
    start_proxy: ProxyFactory, pg_cluster: LocalCluster, table: str, tmp_path: Path
) -> None:
    row = 31
    off = start_routed(
        start_proxy,
        pg_cluster,
        tmp_path,
        STICKY_POLICY,
        databases={pg_cluster.APP_DB: {"capture_write_lsn": False}},
    )
    settle(off, table, row, 0)
    with off.connect() as conn, replay_paused(pg_cluster.replicas):
        conn.execute(f"UPDATE {table} SET v = 1 WHERE id = %s", (row,))
        written = time.monotonic()
        # Not from a write LSN (there is none) but from sticky_after_write.
        assert value_and_port(conn, table, row) == (1, off.primary_port)
        while time.monotonic() - written < STICKY + 0.3:
            time.sleep(0.05)
        # Past the sticky window, with no LSN known, a lagging replica serves the read...
        value, port = value_and_port(conn, table, row)
        assert (value, port in off.replica_ports) == (0, True), off.name_of(port)
        # ...unless the client presents a token, taken here from the primary itself.
        with superuser_conn(pg_cluster.primary) as primary:
            token = primary.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert token is not None
        conn.execute(f"SET pgrouter.min_lsn = '{token[0]}'", prepare=False)
        assert value_and_port(conn, table, row) == (1, off.primary_port)
