"""pgbench through the proxy: initialization (COPY) and the TPC-B-like run in each query
mode, checked against what the primary's tables hold."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from harness import ProxyProcess

from e2e.util import client_binary, libpq_env, primary_conn, proxy_fixtures, run_client, scalar
from router.localcluster import LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

POOL_MODES = ["session", "transaction"]
module_proxy, proxy = proxy_fixtures(POOL_MODES)

CLIENTS = 4
TRANSACTIONS_PER_CLIENT = 200


@pytest.fixture(scope="module")
def initialized(module_proxy: ProxyProcess, pg_cluster: LocalCluster) -> Iterator[ProxyProcess]:
    """pgbench -i -s 1 through the proxy, once per pool mode; checked on the primary."""
    out = run_client(
        [client_binary("pgbench"), "-i", "-s", "1", "-q"], libpq_env(module_proxy), timeout=60
    )
    assert "done in" in out.stderr, out.stderr
    with primary_conn(pg_cluster) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM pgbench_accounts), "
            "(SELECT count(*) FROM pgbench_branches), "
            "(SELECT count(*) FROM pgbench_tellers), "
            "(SELECT count(*) FROM pgbench_history)"
        ).fetchone()
    assert counts == (100_000, 1, 10, 0)
    # pgbench's clients are new ones: in transaction mode their first reads (the scale)
    # may go to a replica.
    pg_cluster.wait_replicated()
    yield module_proxy
    with primary_conn(pg_cluster) as conn:
        conn.execute(
            "DROP TABLE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history"
        )


def test_pgbench_initialization_loads_scale_1(
    initialized: ProxyProcess, pg_cluster: LocalCluster
) -> None:
    # The accounts were generated client-side and sent with COPY: the data must be intact.
    with primary_conn(pg_cluster) as conn:
        row = conn.execute(
            "SELECT min(aid), max(aid), count(DISTINCT aid), sum(abalance), count(*) FILTER "
            "(WHERE bid = 1) FROM pgbench_accounts"
        ).fetchone()
        assert row == (1, 100_000, 100_000, 0, 100_000)
        assert scalar(conn, "SELECT count(*) FROM pg_indexes WHERE tablename LIKE 'pgbench_%'") == 3


@pytest.mark.parametrize("query_mode", ["simple", "extended", "prepared"])
def test_pgbench_run(initialized: ProxyProcess, pg_cluster: LocalCluster, query_mode: str) -> None:
    expected = CLIENTS * TRANSACTIONS_PER_CLIENT
    with primary_conn(pg_cluster) as conn:
        history_before = scalar(conn, "SELECT count(*) FROM pgbench_history")
        balance_before = scalar(conn, "SELECT sum(abalance) FROM pgbench_accounts")
        started = scalar(conn, "SELECT clock_timestamp()")
        argv = [
            client_binary("pgbench"),
            "-n",  # no vacuum before the run
            "-c", str(CLIENTS),
            "-j", "2",
            "-t", str(TRANSACTIONS_PER_CLIENT),
            "-M", query_mode,
        ]  # fmt: skip
        out = run_client(argv, libpq_env(initialized), timeout=60)
        report = out.stdout
        assert f"query mode: {query_mode}" in report
        processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", report)
        assert processed is not None, report
        assert int(processed.group(1)) == expected, report
        assert int(processed.group(2)) == expected, report
        failed = re.search(r"number of failed transactions: (\d+)", report)
        if failed is not None:
            assert int(failed.group(1)) == 0, report
        # The work happened on the primary: one history row per transaction, and the account
        # balances moved by exactly the deltas recorded there. (pg_stat_database.xact_commit
        # is no good here: pooled backends stay connected and may report it 10 s late.)
        assert scalar(conn, "SELECT count(*) FROM pgbench_history") - history_before == expected
        recent = "FROM pgbench_history WHERE mtime >= %s"
        assert scalar(conn, f"SELECT count(*) {recent}", (started,)) == expected
        moved = scalar(conn, f"SELECT sum(delta) {recent}", (started,))
        assert scalar(conn, "SELECT sum(abalance) FROM pgbench_accounts") - balance_before == moved
