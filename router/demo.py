"""``pgrouter demo``: a local primary and replica, pgrouter in front, a visible workload.

Owns: the demo's choreography and its console output.
Must not touch: proxy internals (it starts a ``Proxy`` like ``serve`` does and talks to
it only through the wire protocol, with psycopg, as any application would).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from router.config import Settings
from router.localcluster import LocalCluster
from router.proxy import Proxy

CLIENTS = 8


@dataclass
class Tally:
    writes: int = 0
    reads: int = 0
    errors: int = 0
    mismatches: int = 0


def demo_settings(cluster: LocalCluster, port: int) -> Settings:
    primary, replicas = cluster.primary, cluster.replicas
    return Settings.model_validate(
        dict(
            listen={"host": "127.0.0.1", "port": port},
            auth={
                "type": "scram-sha-256",
                "users": {cluster.APP_USER: {"password": cluster.APP_PASSWORD}},
            },
            pool={"mode": "session", "size": CLIENTS},
            databases={
                cluster.APP_DB: {
                    "primary": {"host": primary.host, "port": primary.port},
                    "replicas": [{"host": r.host, "port": r.port} for r in replicas],
                }
            },
        )
    )


async def _client(dsn: str, number: int, tally: Tally, until: float) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        value = 0
        while time.monotonic() < until:
            value += 1
            try:
                await conn.execute(
                    "INSERT INTO demo_kv (client, value) VALUES (%s, %s) "
                    "ON CONFLICT (client) DO UPDATE SET value = EXCLUDED.value",
                    (number, value),
                )
                tally.writes += 1
                cur = await conn.execute("SELECT value FROM demo_kv WHERE client = %s", (number,))
                row = await cur.fetchone()
                tally.reads += 1
                if row is None or row[0] != value:
                    tally.mismatches += 1
            except psycopg.Error as exc:
                tally.errors += 1
                print(f"  client {number}: {exc.sqlstate} {exc}", file=sys.stderr)
                await asyncio.sleep(0.2)


async def _report(proxy: Proxy, tally: Tally, until: float) -> None:
    last = Tally()
    second = 0
    print(
        f"{'t':>3}  {'writes/s':>9}  {'reads/s':>8}  {'clients':>7}  {'servers':>7}  "
        f"{'stale':>5}  {'errors':>6}"
    )
    while time.monotonic() < until:
        await asyncio.sleep(1.0)
        second += 1
        servers = sum(p.total for p in proxy.pools.values())
        print(
            f"{second:>3}  {tally.writes - last.writes:>9}  {tally.reads - last.reads:>8}  "
            f"{len(proxy.clients):>7}  {servers:>7}  {tally.mismatches:>5}  {tally.errors:>6}"
        )
        last = Tally(tally.writes, tally.reads)


async def run_demo(seconds: float, port: int) -> int:
    base = Path(tempfile.mkdtemp(prefix="pgrouter-demo-"))
    cluster = LocalCluster(base, replicas=1)
    print(f"starting a PostgreSQL primary and a streaming replica under {base} ...")
    cluster.start()
    try:
        return await _with_cluster(cluster, seconds, port)
    finally:
        print("stopping the PostgreSQL servers ...")
        cluster.stop()


async def _with_cluster(cluster: LocalCluster, seconds: float, port: int) -> int:
    proxy = Proxy(demo_settings(cluster, port))
    await proxy.start()
    user, password, db = cluster.APP_USER, cluster.APP_PASSWORD, cluster.APP_DB
    dsn = f"host=127.0.0.1 port={proxy.port} dbname={db} user={user} password={password}"
    print(f"primary   127.0.0.1:{cluster.primary.port}")
    for replica in cluster.replicas:
        print(f"replica   127.0.0.1:{replica.port}")
    print(f"pgrouter  127.0.0.1:{proxy.port}\n")
    print("connect with:")
    print(f"  PGPASSWORD={password} psql -h 127.0.0.1 -p {proxy.port} -U {user} {db}\n")
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS demo_kv (client int PRIMARY KEY, value int NOT NULL)"
            )
        tally = Tally()
        until = time.monotonic() + seconds
        print(f"{CLIENTS} clients each write a value and read it back, for {seconds:g}s:")
        await asyncio.gather(
            _report(proxy, tally, until),
            *(_client(dsn, n, tally, until) for n in range(CLIENTS)),
        )
        print(
            f"\ndone: {tally.writes} writes, {tally.reads} reads, "
            f"{tally.mismatches} stale reads, {tally.errors} errors"
        )
        if sys.stdin.isatty() and os.environ.get("CI") is None:
            print("pgrouter is still running; connect with the psql line above. Ctrl-C stops.")
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
        return 0 if tally.errors == 0 and tally.mismatches == 0 else 1
    finally:
        await proxy.stop()
