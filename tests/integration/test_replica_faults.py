"""Replica faults under a read workload, replica health, and a promotion (issues 4, 5).

A replica stopped mid-workload, and Toxiproxy resetting or silencing one replica's link,
must cost autocommit readers nothing visible: their reads are retried or routed to the
other replica (or the primary), and the replica is used again once it is back. A replica
that stops answering its probes is out within two probe intervals. When the primary goes
away, reads go on and writes get 08006 naming it; after ``pg_ctl promote`` of a standby,
writes follow it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from routing_util import (
    PROBE_INTERVAL,
    ProxyFactory,
    Routed,
    ToxiFactory,
    make_table,
    promote,
    replay_paused,
    server_port,
    show_replicas,
    sqlstate_of,
    start_routed,
    unique_name,
    value_and_port,
    wait_for,
)
from util import Background

from router.localcluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ClusterFactory = Callable[..., LocalCluster]
ROWS = 16


class ReadLoad:
    """Autocommit reads from ``clients`` threads, each on its own connection, recording
    when and where every read ran and every error a client saw."""

    def __init__(self, routed: Routed, table: str, clients: int = 4) -> None:
        self.routed = routed
        self.table = table
        self.reads: list[tuple[float, float, int]] = []  # (started, finished, server port)
        self.errors: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, n: int) -> None:
        conn: psycopg.Connection[Any] | None = None
        i = n
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if conn is None or conn.broken:
                    conn = self.routed.connect()
                value, port = value_and_port(conn, self.table, i % ROWS + 1)
                assert value == 0, f"read {value}, expected 0"
                self.reads.append((started, time.monotonic(), port))
            except (psycopg.Error, AssertionError) as exc:
                self.errors.append((started, f"{sqlstate_of(exc)}: {exc}"))
            i += 1
            time.sleep(0.002)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
            assert not thread.is_alive(), "a reader is stuck"

    def ports(self, since: float, until: float = float("inf")) -> Counter[str]:
        return Counter(
            self.routed.name_of(port) for started, _, port in list(self.reads)
            if since <= started and started < until
        )  # fmt: skip

    def wait_reads(self, count: int, since: float, timeout: float = 15) -> None:
        wait_for(
            lambda: sum(self.ports(since).values()) >= count or self.errors,
            timeout,
            f"{count} reads since t={since:.2f}",
        )
        assert not self.errors, self.errors[:5]

    def latency(self, since: float, until: float) -> float:
        return max(
            (end - start for start, end, _ in list(self.reads) if since <= start < until),
            default=0.0,
        )


# --------------------------------------------------------------------------- replica stopped


def test_replica_stopped_mid_workload(
    make_cluster: ClusterFactory, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    cluster = make_cluster(replicas=2)
    table = make_table(cluster, unique_name("rt_stop"), rows=ROWS)
    routed = start_routed(start_proxy, cluster, tmp_path)
    victim = cluster.replicas[0]
    load = ReadLoad(routed, table)
    try:
        load.wait_reads(100, since=0)
        stopped_at = time.monotonic()
        victim.stop("fast")
        # Reads that start after the first half second of the outage are the ones counted.
        load.wait_reads(300, since=stopped_at + 0.5)
        restarted_at = time.monotonic()
        while_down = load.ports(stopped_at + 0.5, restarted_at)
        victim.start()
        wait_for(
            lambda: load.ports(restarted_at)[victim.name] > 0 or load.errors,
            20,
            f"{victim.name} to serve reads again",
        )
        load.wait_reads(50, since=time.monotonic())
    finally:
        load.stop()
    assert not load.errors, load.errors[:5]
    assert victim.name not in while_down, while_down
    assert while_down["replica2"] > 0, while_down


# --------------------------------------------------------------------------- toxiproxy


def toxic_routed(
    pg_cluster: LocalCluster, make_proxy: ToxiFactory, start_proxy: ProxyFactory, tmp_path: Path
) -> tuple[Routed, Any]:
    """The proxy with replica1 reached through Toxiproxy; replica2 and the primary direct."""
    replica1, replica2 = pg_cluster.replicas
    toxi, toxi_port = make_proxy(unique_name("replica1"), replica1.host, replica1.port)
    routed = start_routed(
        start_proxy,
        pg_cluster,
        tmp_path,
        replicas=[("127.0.0.1", toxi_port), (replica2.host, replica2.port)],
    )
    return routed, toxi


TOXICS = {
    "reset_peer": {"type": "reset_peer", "stream": "upstream", "attributes": {"timeout": 0}},
    # Nothing comes back from the replica; Toxiproxy closes each connection after 500ms.
    "timeout": {"type": "timeout", "stream": "downstream", "attributes": {"timeout": 500}},
}


@pytest.fixture(scope="module")
def fault_table(pg_cluster: LocalCluster) -> str:
    return make_table(pg_cluster, unique_name("rt_faults"), rows=ROWS)


@pytest.mark.parametrize("toxic", sorted(TOXICS))
def test_toxic_on_a_replica_link_is_invisible_to_readers(
    pg_cluster: LocalCluster,
    make_proxy: ToxiFactory,
    start_proxy: ProxyFactory,
    tmp_path: Path,
    fault_table: str,
    toxic: str,
) -> None:
    routed, toxi = toxic_routed(pg_cluster, make_proxy, start_proxy, tmp_path)
    load = ReadLoad(routed, fault_table)
    try:
        load.wait_reads(100, since=0)
        assert load.ports(0)["replica1"] > 0
        toxi.add_toxic(name="fault", **TOXICS[toxic])
        on_at = time.monotonic()
        try:
            load.wait_reads(300, since=on_at)
            time.sleep(1.0)  # the fault lasts a while: probes fail, backoff, re-probes
            load.wait_reads(100, since=time.monotonic())
        finally:
            toxi.destroy_toxic("fault")
        off_at = time.monotonic()
        while_on = load.ports(on_at + 1.0, off_at)
        wait_for(
            lambda: load.ports(off_at)["replica1"] > 0 or load.errors,
            20,
            "replica1 to serve reads again after the toxic is gone",
        )
    finally:
        load.stop()
    assert not load.errors, load.errors[:5]
    assert "replica1" not in while_on, while_on
    # The healthy replica keeps its reads: one bad link must not take the others out.
    total = sum(while_on.values())
    assert while_on["replica2"] >= 0.8 * total, while_on


def test_replica_that_stops_answering_probes_is_ineligible_within_two_intervals(
    pg_cluster: LocalCluster,
    make_proxy: ToxiFactory,
    start_proxy: ProxyFactory,
    tmp_path: Path,
    fault_table: str,
) -> None:
    routed, toxi = toxic_routed(pg_cluster, make_proxy, start_proxy, tmp_path)
    with routed.connect() as conn:
        # Nothing comes back from replica1 from now on, and nothing is closed: a read
        # sent there would hang until the toxic is removed.
        toxi.add_toxic(
            name="silent", type="timeout", stream="downstream", attributes={"timeout": 0}
        )
        try:
            time.sleep(2 * PROBE_INTERVAL + 0.02)  # the bound under test
            reads = Background(lambda: [value_and_port(conn, fault_table, 1) for _ in range(30)])
            wait_for(reads.done, 3, "30 reads while replica1 is silent (did one go there?)")
            removed_at = time.monotonic()
            # After the probe timeout (1s by default) the console says why it is out.
            row = wait_for(
                lambda: (r := show_replicas(routed)["replica1"])["error"]
                == "no answer to the probe within 1s" and r,
                3,
                "SHOW REPLICAS to say replica1 did not answer its probe within 1s",
                interval=0.1,
            )
            assert row["state"] == "down" and row["eligible"] != "yes", row
        finally:
            toxi.destroy_toxic("silent")
        results = reads.join(10)
    assert reads.finished_at is not None and reads.finished_at < removed_at
    ports = Counter(routed.name_of(port) for _, port in results)
    assert "replica1" not in ports, ports


WAIT_POLICY = """\
version: 1
defaults:
  consistency: read_your_writes
  on_stale: wait
  wait_timeout: 1s
"""


def test_wait_for_a_replica_that_goes_silent_still_ends_at_the_wait_timeout(
    pg_cluster: LocalCluster,
    make_proxy: ToxiFactory,
    start_proxy: ProxyFactory,
    tmp_path: Path,
    fault_table: str,
) -> None:
    """on_stale: wait polls the replica it waits for; when that replica stops answering
    mid-wait, the read still ends within wait_timeout plus one probe, on the primary."""
    replica1 = pg_cluster.replicas[0]
    toxi, toxi_port = make_proxy(unique_name("replica1"), replica1.host, replica1.port)
    routed = start_routed(
        start_proxy,
        pg_cluster,
        tmp_path,
        WAIT_POLICY,
        replicas=[("127.0.0.1", toxi_port)],
        serving=[replica1],
    )
    with routed.connect() as conn, replay_paused([replica1]):
        conn.execute(f"UPDATE {fault_table} SET v = 0 WHERE id = 2")  # a write to wait for
        started = time.monotonic()
        read = Background(lambda: value_and_port(conn, fault_table, 2))
        try:
            time.sleep(0.2)  # the read is polling replica1's replay LSN now
            assert not read.done(), "the read did not wait for the replica"
            toxi.add_toxic(
                name="silent", type="timeout", stream="downstream", attributes={"timeout": 0}
            )
            wait_for(read.done, 5, "the waiting read to give up on the silent replica")
        finally:
            if toxi.toxics():
                toxi.destroy_toxic("silent")
        value, port = read.join(10)
    took = (read.finished_at or 0) - started
    assert (value, port) == (0, routed.primary_port), routed.name_of(port)
    assert took <= 1.0 + PROBE_INTERVAL + 0.05, f"took {took:.3f}s"


# --------------------------------------------------------------------------- promotion


def test_primary_down_then_promoted_replica_takes_the_writes(
    make_cluster: ClusterFactory, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    cluster = make_cluster(replicas=1)
    table = make_table(cluster, unique_name("rt_promote"), rows=ROWS)
    routed = start_routed(start_proxy, cluster, tmp_path)
    primary, standby = cluster.primary, cluster.replicas[0]
    backend = f"primary {primary.host}:{primary.port}"
    insert = f"INSERT INTO {table} VALUES (%s, 1) RETURNING inet_server_port()"
    read_failures: list[str] = []  # checked last, so the promotion is tested regardless

    def read_on_standby(conn: psycopg.Connection[Any], row: int) -> None:
        try:
            got = value_and_port(conn, table, row)
        except psycopg.Error as exc:
            read_failures.append(f"{sqlstate_of(exc)}: {exc}")
            return
        assert got == (0, standby.port), got

    with routed.connect() as conn:
        assert conn.execute(insert, (ROWS + 1,)).fetchone() == (primary.port,)
        cluster.wait_replicated()
        primary.stop("fast")
        wait_for(
            lambda: f"{backend} is down" in routed.proxy.log_text(),
            5,
            "the monitor to see the primary down",
        )
        with routed.connect() as late:  # a login while the primary is down
            # Writes get a clear 08006 naming the backend, and the session goes on.
            for i in range(3):
                with pytest.raises(psycopg.Error) as refused:
                    late.execute(insert, (ROWS + 10 + i,))
                assert sqlstate_of(refused.value) == "08006", refused.value
                assert backend in str(refused.value), refused.value
            # Reads go on, on this connection and on one that wrote before.
            for i in range(3):
                read_on_standby(late, i + 1)
                read_on_standby(conn, i + 1)

        promote(standby)
        promoted_at = time.monotonic()

        def write_lands() -> int | None:
            try:
                return server_port(conn, insert.replace("%s", str(ROWS + 2)))
            except psycopg.Error as exc:
                assert sqlstate_of(exc) == "08006", exc  # not yet seen as the writer
                return None

        assert wait_for(write_lands, 10, "a write to succeed after the promotion") == standby.port
        took = time.monotonic() - promoted_at
        assert value_and_port(conn, table, ROWS + 2) == (1, standby.port)
    assert took < 5, f"writes followed the promotion after {took:.1f}s"
    assert not read_failures, f"reads failed while the primary was down: {read_failures}"
