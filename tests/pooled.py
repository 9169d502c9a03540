"""Shared fixture machinery for the transaction-pooling test modules.

Each module starts one proxy per parameter (routed / primary-only) for all its tests;
every test then gets that proxy through ``released``, which attaches the proxy's log to
a failing test's report and insists that, once the test's clients are gone, every server
connection is back in its pool (so a leak is blamed on the test that caused it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PROXIES_KEY
from harness import ADMIN_PASSWORD, ADMIN_USER, ProxyProcess, ProxyStartError


def start_module_proxy(config: dict[str, Any], workdir: Path, label: str) -> ProxyProcess:
    proxy = ProxyProcess(config, workdir)
    try:
        proxy.start()
    except ProxyStartError as exc:
        pytest.fail(f"pgrouter ({label}) did not start: {exc}", pytrace=False)
    return proxy


def released(request: pytest.FixtureRequest, proxy: ProxyProcess) -> Iterator[ProxyProcess]:
    shown = request.node.stash.setdefault(PROXIES_KEY, [])
    shown.append(proxy)
    yield proxy
    assert proxy.is_running(), f"pgrouter exited with code {proxy.returncode}"
    deadline = time.monotonic() + 10
    while busy := busy_pools(proxy):
        assert time.monotonic() < deadline, f"server connections still in use: {busy}"
        time.sleep(0.05)
    shown.remove(proxy)


def admin(proxy: ProxyProcess) -> psycopg.Connection[Any]:
    return psycopg.connect(
        proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgrouter"),
        autocommit=True,
        prepare_threshold=None,
        connect_timeout=10,
    )


def show(conn: psycopg.Connection[Any], what: str) -> list[dict[str, Any]]:
    cur = conn.execute(f"SHOW {what}")
    assert cur.description is not None
    names = [column.name for column in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def busy_pools(proxy: ProxyProcess) -> list[dict[str, Any]]:
    """SHOW POOLS rows with a server connection in use or a client waiting."""
    with admin(proxy) as console:
        rows = show(console, "POOLS")
    busy = ("sv_active", "sv_used", "sv_tested", "sv_login", "cl_waiting")
    return [row for row in rows if any(str(row[key]) != "0" for key in busy)]
