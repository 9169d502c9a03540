"""Several worker processes on one port (``workers: 2``): the kernel spreads clients over
them, a cancel reaches the query whichever worker receives it, a worker that dies is
replaced, and SIGTERM to the supervisor stops them all."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import ADMIN_PASSWORD, ADMIN_USER, ProxyProcess, base_config
from util import connect, scalar, wait_for

from router.localcluster import LocalCluster
from router.workers import owner_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ProxyFactory = Callable[..., ProxyProcess]
POOL_SIZE = 3


def workers_config(cluster: LocalCluster) -> dict[str, Any]:
    return base_config(
        cluster, workers=2, pool={"mode": "transaction", "size": POOL_SIZE}, log_level="info"
    )


def worker_pids(supervisor: int) -> list[int]:
    """The supervisor's live child processes."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children")
    return [int(pid) for pid in children.read_text().split()]


def wait_until_both_serve(proxy: ProxyProcess) -> None:
    """The port answers as soon as one worker listens; wait for the other too."""

    def both_serve() -> bool:
        conns: list[psycopg.Connection[Any]] = []
        try:
            conns += [connect(proxy.dsn()) for _ in range(8)]
            return {owner_of(c.info.backend_pid) for c in conns} == {0, 1} and all(
                scalar(c, "SELECT 1") == 1 for c in conns
            )
        except psycopg.OperationalError:  # a worker being replaced resets its queue
            return False
        finally:
            for conn in conns:
                conn.close()

    wait_for(both_serve, 15, "both workers serving", interval=0.3)


def test_clients_are_spread_over_both_workers_each_with_its_own_pool(
    start_proxy: ProxyFactory, pg_cluster: LocalCluster
) -> None:
    proxy = start_proxy(workers_config(pg_cluster))
    wait_until_both_serve(proxy)
    conns = [connect(proxy.dsn()) for _ in range(16)]
    try:
        owners = {owner_of(conn.info.backend_pid) for conn in conns}
        assert owners == {0, 1}, [conn.info.backend_pid for conn in conns]
        assert all(scalar(conn, "SELECT 41 + 1") == 42 for conn in conns)
        with connect(pg_cluster.primary.dsn()) as direct:
            servers = scalar(
                direct,
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND backend_type = "
                "'client backend' AND datname = %s",
                (LocalCluster.APP_USER, LocalCluster.APP_DB),
            )
        assert 2 <= servers <= 2 * POOL_SIZE  # per-worker pools, each within its size
    finally:
        for conn in conns:
            conn.close()


def test_a_cancel_reaches_the_query_whichever_worker_receives_it(
    start_proxy: ProxyFactory, pg_cluster: LocalCluster
) -> None:
    proxy = start_proxy(workers_config(pg_cluster))
    wait_until_both_serve(proxy)
    conns = [connect(proxy.dsn()) for _ in range(12)]
    try:
        for conn in conns:  # each cancel opens a new connection: either worker gets it
            timer = threading.Timer(0.2, conn.cancel)
            timer.start()
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(20)")
            timer.join()
            assert time.monotonic() - started < 10
            assert scalar(conn, "SELECT 1") == 1
    finally:
        for conn in conns:
            conn.close()
    # Twelve cancels over two workers: some went through the other worker's socket.
    assert "passed a cancel on to worker" in proxy.log_text(), proxy.log_tail()


def test_a_worker_that_dies_is_replaced(
    start_proxy: ProxyFactory, pg_cluster: LocalCluster
) -> None:
    proxy = start_proxy(workers_config(pg_cluster))
    before = wait_for(lambda: len(worker_pids(proxy.pid)) == 2 and worker_pids(proxy.pid), 10,
                      "two workers")  # fmt: skip
    os.kill(before[0], signal.SIGKILL)
    after = wait_for(
        lambda: (pids := worker_pids(proxy.pid)) and len(pids) == 2 and before[0] not in pids
        and pids, 15, "a replacement worker",
    )  # fmt: skip
    assert before[1] in after
    assert "exited with status" in proxy.log_text()
    wait_until_both_serve(proxy)


def test_sigterm_to_the_supervisor_stops_every_worker(
    start_proxy: ProxyFactory, pg_cluster: LocalCluster
) -> None:
    proxy = start_proxy(workers_config(pg_cluster))
    pids = wait_for(lambda: len(worker_pids(proxy.pid)) == 2 and worker_pids(proxy.pid), 10,
                    "two workers")  # fmt: skip
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait(30) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status"
        ).read_text().lower(), f"worker {pid} still running"


def test_each_worker_says_which_it_is_in_show_version(
    start_proxy: ProxyFactory, pg_cluster: LocalCluster
) -> None:
    proxy = start_proxy(workers_config(pg_cluster))
    wait_until_both_serve(proxy)
    seen = set()
    for _ in range(16):
        dsn = proxy.dsn(user=ADMIN_USER, password=ADMIN_PASSWORD, dbname="pgrouter")
        with psycopg.connect(dsn, autocommit=True) as console:
            row = console.execute("SHOW VERSION").fetchone()
        assert row is not None and row[0].startswith("pgrouter ")
        seen.add(row[0].split("(", 1)[1])
    assert seen == {"worker 0 of 2)", "worker 1 of 2)"}

