"""Helpers shared by the end-to-end tests (real clients through the proxy).

Owns: one proxy process per test module and pool mode (``proxy_fixtures``), whose log is
attached to a failing test's report like ``start_proxy``'s; running the libpq command-line
clients (psql, pgbench) against the proxy; polling with a deadline; unique object names;
direct superuser connections to the primary, to check what really happened there.
Must not touch: the proxy's own modules; the proxy is tested from outside, over sockets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from conftest import PROXIES_KEY
from harness import ProxyProcess, ProxyStartError, base_config, deep_merge

from router.localcluster import LocalCluster, PgInstance

T = TypeVar("T")

CLIENT_INSTALL_HINT = "apt-get install -y postgresql-client"
CONNECT_TIMEOUT = 10


# --------------------------------------------------------------------------- the proxy


def proxy_fixtures(pool_modes: Sequence[str], **overrides: Any) -> tuple[Any, Any]:
    """Two fixtures for a test module: ``module_proxy`` and ``proxy``.

    ``module_proxy`` (module scope, parametrized over ``pool_modes``) runs one proxy for
    the shared ``pg_cluster`` with ``pool.mode`` set and ``overrides`` deep-merged into
    ``base_config``. ``proxy`` (function scope) returns it, shows its log in the report
    of a failing test, and fails the test if the proxy process died during it. Use as::

        POOL_MODES = ["session"]
        module_proxy, proxy = proxy_fixtures(POOL_MODES)
    """

    @pytest.fixture(scope="module", params=list(pool_modes), name="module_proxy")
    def module_proxy(
        request: pytest.FixtureRequest,
        pg_cluster: LocalCluster,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> Iterator[ProxyProcess]:
        mode = request.param
        config = base_config(pg_cluster, **deep_merge({"pool": {"mode": mode}}, overrides))
        proxy = ProxyProcess(config, tmp_path_factory.mktemp(f"pgrouter-{mode}"))
        try:
            proxy.start()
        except ProxyStartError as exc:
            pytest.fail(f"pgrouter ({mode} pooling) did not start: {exc}", pytrace=False)
        yield proxy
        proxy.stop()

    @pytest.fixture(name="proxy")
    def proxy(request: pytest.FixtureRequest, module_proxy: ProxyProcess) -> Iterator[ProxyProcess]:
        shown = request.node.stash.setdefault(PROXIES_KEY, [])
        shown.append(module_proxy)
        yield module_proxy
        assert module_proxy.is_running(), (
            f"pgrouter exited with code {module_proxy.returncode} during this test"
        )
        shown.remove(module_proxy)

    return module_proxy, proxy


def pool_mode(proxy: ProxyProcess) -> str:
    return str(proxy.config["pool"]["mode"])


# --------------------------------------------------------------------------- drivers


def connect(
    proxy: ProxyProcess, *, autocommit: bool = True, **kwargs: Any
) -> psycopg.Connection[Any]:
    """A psycopg connection to the app database through ``proxy``."""
    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
    return psycopg.connect(proxy.dsn(), autocommit=autocommit, **kwargs)


def scalar(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None, f"no row from {sql!r}"
    return row[0]


def primary_conn(
    cluster: LocalCluster, dbname: str = LocalCluster.APP_DB
) -> psycopg.Connection[Any]:
    """A superuser connection straight to the primary, bypassing the proxy."""
    return superuser_conn(cluster.primary, dbname)


def superuser_conn(inst: PgInstance, dbname: str = LocalCluster.APP_DB) -> psycopg.Connection[Any]:
    return psycopg.connect(
        inst.dsn(LocalCluster.SUPERUSER, dbname=dbname),
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT,
    )


def activity(cluster: LocalCluster, marker: str) -> list[tuple[str, int, str, str | None]]:
    """``(instance, pid, state, wait_event)`` of every server session on any instance of
    ``cluster`` whose current or last query contains ``marker``. All instances, because
    the proxy may send a read to a replica."""
    found = []
    for inst in cluster.instances:
        with superuser_conn(inst, "postgres") as conn:
            rows = conn.execute(
                "SELECT pid, state, wait_event FROM pg_stat_activity "
                "WHERE query LIKE %s AND pid <> pg_backend_pid()",
                (f"%{marker}%",),
            ).fetchall()
        found += [(inst.name, pid, state, wait_event) for pid, state, wait_event in rows]
    return found


def running(cluster: LocalCluster, marker: str) -> list[tuple[str, int, str, str | None]]:
    """The sessions of ``activity`` that are executing right now."""
    return [row for row in activity(cluster, marker) if row[2] == "active"]


def asyncpg_params(proxy: ProxyProcess, **extra: Any) -> dict[str, Any]:
    """Keyword arguments for ``asyncpg.connect`` / ``create_pool`` through ``proxy``."""
    return {
        "host": proxy.host,
        "port": proxy.port,
        "user": LocalCluster.APP_USER,
        "password": LocalCluster.APP_PASSWORD,
        "database": LocalCluster.APP_DB,
        "timeout": CONNECT_TIMEOUT,
        **extra,
    }


# --------------------------------------------------------------------------- command-line clients


def client_binary(name: str) -> str:
    """The path of a PostgreSQL client program; a missing one fails the test."""
    found = shutil.which(name)
    if found is None:
        candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
        found = str(candidates[-1]) if candidates else None
    if found is None:
        pytest.fail(f"{name} not found on PATH; install it: {CLIENT_INSTALL_HINT}", pytrace=False)
    return found


def libpq_env(proxy: ProxyProcess, **extra: str) -> dict[str, str]:
    """The environment for a libpq program logging in to the app database via ``proxy``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGHOST=proxy.host,
        PGPORT=str(proxy.port),
        PGUSER=LocalCluster.APP_USER,
        PGPASSWORD=LocalCluster.APP_PASSWORD,
        PGDATABASE=LocalCluster.APP_DB,
        PGCONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
        PGCLIENTENCODING="UTF8",
        LC_ALL="C.UTF-8",
    )
    env.update(extra)
    return env


def run_client(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    input_text: str | None = None,
    timeout: float = 60.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a client program; with ``check`` a non-zero exit fails the test with its output."""
    try:
        proc = subprocess.run(
            list(argv),
            env=dict(env),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{argv[0]} did not finish within {timeout:g}s\n"
            f"stdout: {_text(exc.stdout)}\nstderr: {_text(exc.stderr)}",
            pytrace=False,
        )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited with {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}",
            pytrace=False,
        )
    return proc


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


# --------------------------------------------------------------------------- polling, names


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}", pytrace=False)
        time.sleep(interval)


def unique_name(prefix: str) -> str:
    """A fresh lower-case SQL identifier, so tests sharing one cluster never collide."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
