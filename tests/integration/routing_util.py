"""Helpers for the read/write splitting and consistency tests (issues 4 and 5).

Owns: starting a proxy in transaction mode with routing on and an optional policy file,
finding out where a statement really ran (``inet_server_port()`` in the select list,
pg_stat_statements counts on each server), producing real replication lag
(``pg_wal_replay_pause()`` / ``resume``, ``recovery_min_apply_delay``), promoting a
standby with ``pg_ctl promote``, and reading SQLSTATEs off psycopg errors.
Must not touch: the proxy's own modules; the proxy is tested from outside, over sockets.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PROXIES_KEY
from e2e.util import superuser_conn
from e2e.util import unique_name as unique_name  # re-exported for the routing tests
from e2e.util import wait_for as wait_for
from harness import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    ProxyProcess,
    ProxyStartError,
    base_config,
    deep_merge,
)

from router.localcluster import LocalCluster, PgInstance

ProxyFactory = Callable[..., ProxyProcess]
ToxiFactory = Callable[[str, str, int], tuple[Any, int]]

PROBE_INTERVAL = 0.1  # the monitor's default, used unless a test overrides it
CONNECT_TIMEOUT = 10
PG_OS_USER = "postgres"


# --------------------------------------------------------------------------- the proxy


def write_policy(path: Path, text: str) -> None:
    """Replace the policy file in one rename, so the hot reloader never reads half of it."""
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(text)
    os.replace(scratch, path)


@dataclass
class Routed:
    """A proxy with read/write splitting in front of ``cluster``."""

    proxy: ProxyProcess
    cluster: LocalCluster
    policy_path: Path | None
    # Where each server port leads: the proxy may reach a server through Toxiproxy,
    # but inet_server_port() always reports the server's own port.
    names: dict[int, str] = field(default_factory=dict)

    @property
    def primary_port(self) -> int:
        return self.cluster.primary.port

    @property
    def replica_ports(self) -> set[int]:
        return {r.port for r in self.cluster.replicas}

    def name_of(self, port: int) -> str:
        return self.names.get(port, f"?{port}")

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
        autocommit = kwargs.pop("autocommit", True)
        return psycopg.connect(self.proxy.dsn(), autocommit=autocommit, **kwargs)

    async def aconnect(self, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
        return await psycopg.AsyncConnection.connect(self.proxy.dsn(), autocommit=True, **kwargs)

    def set_policy(self, text: str) -> None:
        assert self.policy_path is not None, "this proxy was started without a policy file"
        write_policy(self.policy_path, text)


def routed_config(
    cluster: LocalCluster,
    workdir: Path,
    policy: str | None = None,
    *,
    primary: tuple[str, int] | None = None,
    replicas: Sequence[tuple[str, int]] | None = None,
    **overrides: Any,
) -> tuple[dict[str, Any], Path | None]:
    """A transaction-mode config with routing on; ``primary`` / ``replicas`` replace the
    servers' addresses (e.g. with Toxiproxy listen ports), in the cluster's order."""
    db = cluster.APP_DB
    policy_path = None
    routing: dict[str, Any] = {"enabled": True}
    if policy is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        policy_path = workdir / f"{unique_name('policy')}.yaml"
        write_policy(policy_path, policy)
        routing["policy_file"] = str(policy_path)
    database: dict[str, Any] = {}
    if primary is not None:
        database["primary"] = {"host": primary[0], "port": primary[1], "dbname": db}
    if replicas is not None:
        database["replicas"] = [{"host": h, "port": p, "dbname": db} for h, p in replicas]
    config = base_config(
        cluster,
        **deep_merge(
            {
                "pool": {"mode": "transaction", "server_connect_timeout": "2s"},
                "routing": routing,
                "databases": {db: database} if database else {},
            },
            overrides,
        ),
    )
    return config, policy_path


def start_routed(
    start_proxy: ProxyFactory,
    cluster: LocalCluster,
    workdir: Path,
    policy: str | None = None,
    *,
    wait_replicas: bool = True,
    serving: Sequence[PgInstance] | None = None,
    **kwargs: Any,
) -> Routed:
    """Start the proxy; with ``wait_replicas``, return once reads reach every replica of
    ``serving`` (default: the cluster's running replicas)."""
    config, policy_path = routed_config(cluster, workdir, policy, **kwargs)
    proxy = start_proxy(config)
    names = {inst.port: inst.name for inst in cluster.instances}
    routed = Routed(proxy, cluster, policy_path, names)
    if wait_replicas:
        wait_until_replicas_serve(routed, serving)
    return routed


def show_replicas(routed: Routed) -> dict[str, dict[str, Any]]:
    """SHOW REPLICAS in the admin console, by backend name (the proxy's names are the
    cluster's: replica1, replica2, as are the standbys' application_name)."""
    dsn = routed.proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgrouter")
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as console:
        cur = console.execute("SHOW REPLICAS")
        assert cur.description is not None
        names = [column.name for column in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return {str(row["backend"]): row for row in rows if row["database"] == LocalCluster.APP_DB}


def wait_until_replicas_serve(
    routed: Routed, serving: Sequence[PgInstance] | None = None, timeout: float = 15.0
) -> None:
    """Poll with fresh reads until each replica of ``serving`` (default: every running
    one) has served one: the monitor's first probes must land before reads leave the
    primary."""
    replicas = routed.cluster.replicas if serving is None else serving
    wanted = {r.port for r in replicas if r.is_running()}
    seen: set[int] = set()
    with routed.connect() as conn:

        def all_seen() -> bool:
            seen.add(server_port(conn))
            return wanted <= seen

        wait_for(all_seen, timeout, f"reads on every replica {sorted(wanted)} (seen {seen})")


# --------------------------------------------------------------------------- where it ran


def server_port(conn: psycopg.Connection[Any], sql: str = "SELECT inet_server_port()") -> int:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[-1])


def value_and_port(
    conn: psycopg.Connection[Any], table: str, row_id: int, prefix: str = ""
) -> tuple[Any, int]:
    """``SELECT v, inet_server_port() FROM table WHERE id = row_id`` (``prefix`` may hold a
    pgrouter comment)."""
    row = conn.execute(
        f"{prefix}SELECT v, inet_server_port() FROM {table} WHERE id = %s", (row_id,)
    ).fetchone()
    assert row is not None, f"no row {row_id} in {table}"
    return row[0], int(row[1])


def make_table(cluster: LocalCluster, name: str, rows: int = 16, value: int = 0) -> str:
    """``name (id int primary key, v int)`` with ``rows`` rows, owned by the app user,
    created on the primary and replayed by every running replica."""
    with superuser_conn(cluster.primary) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"ALTER TABLE {name} OWNER TO {cluster.APP_USER}")
        conn.execute(
            f"INSERT INTO {name} SELECT g, %s FROM generate_series(1, %s) g", (value, rows)
        )
    cluster.wait_replicated()
    return name


def drop_table(cluster: LocalCluster, name: str) -> None:
    if not cluster.primary.is_running():
        return
    with superuser_conn(cluster.primary) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def ensure_stat_statements(cluster: LocalCluster) -> None:
    """pg_stat_statements is preloaded by LocalCluster; its view needs the extension."""
    with superuser_conn(cluster.primary) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    cluster.wait_replicated()


def statement_calls(inst: PgInstance, marker: str, dbname: str | None = None) -> int:
    """Executions recorded by ``inst``'s pg_stat_statements of statements containing
    ``marker`` (optionally only in database ``dbname``)."""
    sql = (
        "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s "
        "JOIN pg_database d ON d.oid = s.dbid "
        "WHERE s.query LIKE %s AND s.query NOT LIKE '%%pg_stat_statements%%'"
    )
    params: list[Any] = [f"%{marker}%"]
    if dbname is not None:
        sql += " AND d.datname = %s"
        params.append(dbname)
    with superuser_conn(inst) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def calls_by_server(
    cluster: LocalCluster, marker: str, dbname: str | None = None
) -> dict[str, int]:
    return {
        inst.name: statement_calls(inst, marker, dbname)
        for inst in cluster.instances
        if inst.is_running()
    }


def log_mentions(inst: PgInstance, marker: str) -> list[str]:
    """Lines of ``inst``'s server log naming ``marker`` (errors log their statement)."""
    try:
        text = inst.logfile.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if marker in line]


# --------------------------------------------------------------------------- lag


def pause_replay(inst: PgInstance) -> None:
    """Once this returns no further WAL record is replayed (the state may still read
    'pause requested' until the next record arrives)."""
    with superuser_conn(inst, "postgres") as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        row = conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()
        assert row is not None and row[0] in ("paused", "pause requested"), row


def resume_replay(inst: PgInstance) -> None:
    if not inst.is_running():
        return
    with superuser_conn(inst, "postgres") as conn:
        conn.execute("SELECT pg_wal_replay_resume()")


@contextmanager
def replay_paused(instances: Iterable[PgInstance]) -> Iterator[None]:
    """Pause WAL replay on ``instances``; always resumed on the way out."""
    paused: list[PgInstance] = []
    try:
        for inst in instances:
            paused.append(inst)
            pause_replay(inst)
        yield
    finally:
        for inst in paused:
            resume_replay(inst)


def replay_lsn(inst: PgInstance) -> str:
    with superuser_conn(inst, "postgres") as conn:
        row = conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def lsn_int(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def set_apply_delay(inst: PgInstance, delay: str | None) -> None:
    """ALTER SYSTEM SET recovery_min_apply_delay (RESET with None) and reload."""
    with superuser_conn(inst, "postgres") as conn:
        if delay is None:
            conn.execute("ALTER SYSTEM RESET recovery_min_apply_delay")
        else:
            conn.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'")
        conn.execute("SELECT pg_reload_conf()")
        wanted = "0" if delay is None else delay
        wait_for(
            lambda: conn.execute("SHOW recovery_min_apply_delay").fetchone() == (wanted,),
            10,
            f"recovery_min_apply_delay = {wanted} on {inst.name}",
        )


# --------------------------------------------------------------------------- roles


def promote(inst: PgInstance) -> None:
    """``pg_ctl promote -w``, as the postgres OS user when running as root (as
    LocalCluster runs pg_ctl: PostgreSQL refuses to act for root)."""
    argv = [str(inst.bindir / "pg_ctl"), "promote", "-w", "-D", str(inst.datadir)]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", PG_OS_USER, "--", *argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.run(
        argv, capture_output=True, text=True, cwd="/", env=env, timeout=60, check=False
    )
    assert proc.returncode == 0, f"pg_ctl promote failed: {proc.stderr or proc.stdout}"


# --------------------------------------------------------------------------- errors


def sqlstate_of(exc: BaseException) -> str | None:
    diag = getattr(exc, "diag", None)
    code = getattr(diag, "sqlstate", None) or getattr(exc, "sqlstate", None)
    return None if code is None else str(code)


# --------------------------------------------------------------------------- one proxy per module


def module_routed(
    pg_cluster: LocalCluster, workdir: Path, policy: str | None, **overrides: Any
) -> Iterator[Routed]:
    """Body of a module-scoped fixture: one routed proxy shared by a module's tests."""
    config, policy_path = routed_config(pg_cluster, workdir, policy, **overrides)
    proxy = ProxyProcess(config, workdir / "pgrouter")
    try:
        proxy.start()
    except ProxyStartError as exc:
        pytest.fail(f"pgrouter did not start: {exc}", pytrace=False)
    routed = Routed(proxy, pg_cluster, policy_path, {i.port: i.name for i in pg_cluster.instances})
    try:
        wait_until_replicas_serve(routed)
        yield routed
    finally:
        proxy.stop()


def shown_in_report(request: pytest.FixtureRequest, routed: Routed) -> Iterator[Routed]:
    """Body of a function-scoped fixture: attach the shared proxy's log to a failing
    test's report, and fail the test if the proxy died during it."""
    shown = request.node.stash.setdefault(PROXIES_KEY, [])
    shown.append(routed.proxy)
    yield routed
    assert routed.proxy.is_running(), f"pgrouter exited with {routed.proxy.returncode}"
    shown.remove(routed.proxy)
