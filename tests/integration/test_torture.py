"""Read-after-write torture under read_your_writes while replay pauses and resumes (issue 5).

Sixteen asyncio clients each own one row. Every iteration a client writes the next value
to its row on connection A, then reads it back twice through pgrouter: on A itself, and
on its second connection B, which presents A's ``pgrouter.write_lsn`` as a token
(``SET pgrouter.min_lsn`` or a ``/* pgrouter:min_lsn=... */`` comment, alternately).
Meanwhile a chaos task pauses and resumes WAL replay on the replicas at random, directly
on the standbys. No read may return anything but the value just written. Where every read
ran (``inet_server_port()``) gives the replicas' share while replay runs on both: above
80%, since the policy lets a read wait up to 150ms for a replica to replay the write
instead of going to the primary (the monitor's snapshot is up to 100ms old).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from routing_util import (
    ProxyFactory,
    Routed,
    drop_table,
    make_table,
    start_routed,
    unique_name,
)

from router.localcluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CLIENTS = 16
DURATION = 40.0  # seconds of workload
MIN_ITERATIONS = 2000  # in total, over all clients
REPLICA_SHARE = 0.8  # of reads while replay runs on both replicas
WAIT_TIMEOUT_MS = 150

POLICY = f"""\
version: 1
defaults:
  consistency: read_your_writes
  on_stale: wait
  wait_timeout: {WAIT_TIMEOUT_MS}ms
"""


@dataclass(frozen=True, slots=True)
class Read:
    how: str  # "same" (the writing connection), "set" or "comment" (a token on B)
    began: float  # when the write it follows began
    ended: float  # when the read returned
    expected: int
    got: int | None
    port: int


@dataclass
class Chaos:
    """When replay was running on every replica: closed intervals (start, end)."""

    running: list[tuple[float, float]]
    pauses: Counter[str]

    def all_running(self, began: float, ended: float) -> bool:
        return any(start <= began and ended <= end for start, end in self.running)


@pytest.fixture
def table(pg_cluster: LocalCluster) -> Iterator[str]:
    name = make_table(pg_cluster, unique_name("rt_torture"), rows=CLIENTS)
    yield name
    drop_table(pg_cluster, name)


async def client(
    routed: Routed, table: str, row: int, deadline: float, committed: list[tuple[float, int]]
) -> list[Read]:
    """Write-then-read loop on ``row``; ``committed`` gets (time the write returned, value)."""
    reads: list[Read] = []
    select = f"SELECT v, inet_server_port() FROM {table} WHERE id = %s"
    async with await routed.aconnect() as writer, await routed.aconnect() as reader:
        value = 0
        while time.monotonic() < deadline:
            value += 1
            began = time.monotonic()
            await writer.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (value, row))
            committed.append((time.monotonic(), value))
            token = writer.info.parameter_status("pgrouter.write_lsn")
            assert token is not None, "no pgrouter.write_lsn after a write"

            cur = await writer.execute(select, (row,))
            got = await cur.fetchone()
            assert got is not None
            reads.append(Read("same", began, time.monotonic(), value, got[0], got[1]))

            if value % 2:
                await reader.execute(f"SET pgrouter.min_lsn = '{token}'")
                how, sql = "set", select
            else:
                how, sql = "comment", f"/* pgrouter:min_lsn={token} */ {select}"
            cur = await reader.execute(sql, (row,))
            got = await cur.fetchone()
            assert got is not None
            reads.append(Read(how, began, time.monotonic(), value, got[0], got[1]))
    return reads


async def bystander(
    routed: Routed, table: str, deadline: float, committed: list[tuple[float, int]]
) -> tuple[int, int]:
    """A client with no writes and no token reading row 1: how many of its reads returned
    less than a value committed before the read began. Proves the lag was real, so
    the writers' zero would mean something."""
    stale = total = 0
    async with await routed.aconnect() as conn:
        while time.monotonic() < deadline:
            began = time.monotonic()
            known = max((v for t, v in list(committed) if t < began), default=0)
            cur = await conn.execute(f"SELECT v FROM {table} WHERE id = 1")
            got = await cur.fetchone()
            assert got is not None
            total += 1
            stale += got[0] < known
            await asyncio.sleep(0.01)
    return stale, total


async def chaos(cluster: LocalCluster, deadline: float, seed: int) -> Chaos:
    """Pause and resume replay on the replicas at random until ``deadline``; every
    replica is resumed on the way out. Mostly one replica paused at a time, sometimes
    both, with stretches where both run."""
    rng = random.Random(seed)
    conns = {
        r.name: await psycopg.AsyncConnection.connect(
            r.dsn(LocalCluster.SUPERUSER), autocommit=True, connect_timeout=10
        )
        for r in cluster.replicas
    }
    paused: set[str] = set()
    pauses: Counter[str] = Counter()
    running: list[tuple[float, float]] = []
    running_since: float | None = time.monotonic()
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(0.2, 0.8) if paused else rng.uniform(0.4, 1.4))
            if paused and (rng.random() < 0.7 or len(paused) == len(conns)):
                name = rng.choice(sorted(paused))
                await conns[name].execute("SELECT pg_wal_replay_resume()")
                paused.discard(name)
                if not paused:
                    running_since = time.monotonic()
            else:
                names = sorted(set(conns) - paused)
                chosen = names if not paused and rng.random() < 0.25 else [rng.choice(names)]
                if running_since is not None:
                    running.append((running_since, time.monotonic()))
                    running_since = None
                for name in chosen:
                    await conns[name].execute("SELECT pg_wal_replay_pause()")
                    paused.add(name)
                    pauses[name] += 1
    finally:
        for conn in conns.values():
            await conn.execute("SELECT pg_wal_replay_resume()")
            await conn.close()
        if running_since is not None:
            running.append((running_since, time.monotonic()))
    return Chaos(running, pauses)


def test_no_stale_reads_while_replay_pauses_and_resumes(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, tmp_path: Path, table: str
) -> None:
    routed = start_routed(start_proxy, pg_cluster, tmp_path, POLICY)
    seed = random.randrange(1 << 30)

    committed: list[tuple[float, int]] = []  # row 1's writes

    async def main() -> tuple[list[list[Read]], Chaos, tuple[int, int]]:
        deadline = time.monotonic() + DURATION
        chaos_task = asyncio.create_task(chaos(pg_cluster, deadline, seed))
        control = asyncio.create_task(bystander(routed, table, deadline, committed))
        reads = await asyncio.gather(
            *(
                client(routed, table, row, deadline, committed if row == 1 else [])
                for row in range(1, CLIENTS + 1)
            )
        )
        return reads, await chaos_task, await control

    per_client, replay, (control_stale, control_total) = asyncio.run(
        asyncio.wait_for(main(), DURATION + 40)
    )
    reads = [read for client_reads in per_client for read in client_reads]

    stale = [r for r in reads if r.got != r.expected]
    names = Counter(routed.name_of(r.port) for r in reads)
    quiet = [r for r in reads if replay.all_running(r.began, r.ended)]
    on_replicas = sum(1 for r in quiet if r.port in routed.replica_ports)
    share = on_replicas / len(quiet) if quiet else 0.0
    by_how = {
        how: Counter(routed.name_of(r.port) for r in reads if r.how == how)
        for how in ("same", "set", "comment")
    }
    running_time = sum(end - start for start, end in replay.running)
    print(
        f"\ntorture (seed {seed}): {len(reads) // 2} iterations, {len(reads)} reads, "
        f"{len(stale)} stale; served by {dict(names)}; by kind {by_how}; "
        f"pauses {dict(replay.pauses)}; replay running on both {running_time:.1f}s of "
        f"{DURATION:g}s; reads then: {len(quiet)}, on replicas {on_replicas} ({share:.1%}); "
        f"token-less bystander: {control_stale} of {control_total} reads stale"
    )
    assert not stale, f"{len(stale)} stale reads, e.g. {stale[:5]}"
    assert len(reads) // 2 >= MIN_ITERATIONS, f"only {len(reads) // 2} iterations"
    assert sum(replay.pauses.values()) >= 10, replay.pauses
    assert control_stale > 0, "replay pauses never made a replica stale: the test saw no lag"
    assert len(quiet) >= 500, f"only {len(quiet)} reads while replay ran on both"
    assert share > REPLICA_SHARE, f"replicas served {share:.1%} of reads while replay ran"
    assert names["replica1"] > 0 and names["replica2"] > 0, names
