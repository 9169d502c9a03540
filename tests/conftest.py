"""Shared pytest fixtures: real PostgreSQL clusters, Toxiproxy, and the proxy process.

Fixtures
- ``pg_cluster`` (session): LocalCluster, primary + 2 streaming replicas.
- ``make_cluster`` (function): ``make_cluster(replicas=1, extra_conf=None) -> LocalCluster``,
  a started private cluster, stopped and removed after the test.
- ``fresh_cluster`` (function): ``make_cluster(replicas=1)``, for destructive tests.
- ``toxiproxy`` (session): ToxiproxyHandle (``.server``, ``.client``, ``.make_proxy``);
  every proxy is deleted after each test.
- ``make_proxy`` (function): ``make_proxy(name, upstream_host, upstream_port) ->
  (proxy, listen_port)``.
- ``start_proxy`` (function): ``start_proxy(config, **kw) -> ProxyProcess``, started and
  listening (else ProxyStartError with the log tail); all are stopped after the test,
  and a failed test's report carries the last 60 lines of each proxy's log.

Missing PostgreSQL or Toxiproxy binaries make the fixtures fail, not skip: a test run
that silently skipped its integration tests would prove nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ProxyProcess, ToxiproxyHandle

from router.localcluster import ClusterError, LocalCluster
from router.toxiproxy_server import INSTALL_HINT as TOXIPROXY_HINT
from router.toxiproxy_server import ToxiproxyServer, find_toxiproxy_server

PROXIES_KEY = pytest.StashKey[list[ProxyProcess]]()
TOXIPROXY_KEY = pytest.StashKey[ToxiproxyHandle]()
PROXY_LOG_LINES = 60

ClusterFactory = Callable[..., LocalCluster]
ProxyFactory = Callable[..., ProxyProcess]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for proxy in item.stash.get(PROXIES_KEY, []):
            title = f"pgrouter log, port {proxy.port} (last {PROXY_LOG_LINES} lines)"
            report.sections.append((title, proxy.log_tail(PROXY_LOG_LINES)))
    return report


# --------------------------------------------------------------------------- clusters


def _started_cluster(
    base_dir: Path, replicas: int, extra_conf: dict[str, str] | None
) -> LocalCluster:
    try:
        cluster = LocalCluster(base_dir, replicas=replicas, extra_conf=extra_conf)
        cluster.__enter__()
    except ClusterError as exc:
        pytest.fail(f"cannot start a local PostgreSQL cluster: {exc}", pytrace=False)
    return cluster


def _stop_cluster(cluster: LocalCluster) -> None:
    cluster.__exit__(None, None, None)


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = _started_cluster(tmp_path_factory.mktemp("pg"), 2, None)
    yield cluster
    _stop_cluster(cluster)


@pytest.fixture
def make_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterFactory]:
    started: list[LocalCluster] = []

    def make(replicas: int = 1, extra_conf: dict[str, str] | None = None) -> LocalCluster:
        cluster = _started_cluster(tmp_path_factory.mktemp("pgfresh"), replicas, extra_conf)
        started.append(cluster)
        return cluster

    yield make
    for cluster in started:
        _stop_cluster(cluster)


@pytest.fixture
def fresh_cluster(make_cluster: ClusterFactory) -> LocalCluster:
    return make_cluster(replicas=1)


# --------------------------------------------------------------------------- toxiproxy


@pytest.fixture(scope="session")
def toxiproxy(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[ToxiproxyHandle]:
    binary = find_toxiproxy_server()
    if binary is None:
        pytest.fail(
            f"toxiproxy server binary not found; install it: {TOXIPROXY_HINT}", pytrace=False
        )
    server = ToxiproxyServer(binary=binary, log_path=tmp_path_factory.mktemp("toxi") / "toxi.log")
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    handle = ToxiproxyHandle(server)
    pytestconfig.stash[TOXIPROXY_KEY] = handle
    yield handle
    del pytestconfig.stash[TOXIPROXY_KEY]
    server.stop()


@pytest.fixture(autouse=True)
def _delete_toxiproxy_proxies(pytestconfig: pytest.Config) -> Iterator[None]:
    yield
    handle = pytestconfig.stash.get(TOXIPROXY_KEY, None)
    if handle is not None and handle.server.is_running():
        handle.destroy_all()


@pytest.fixture
def make_proxy(toxiproxy: ToxiproxyHandle) -> Callable[[str, str, int], tuple[Any, int]]:
    return toxiproxy.make_proxy


# --------------------------------------------------------------------------- pgrouter


@pytest.fixture
def start_proxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProxyFactory]:
    proxies: list[ProxyProcess] = []
    request.node.stash[PROXIES_KEY] = proxies

    def start(config: dict[str, Any], *, timeout: float = 20.0, **kwargs: Any) -> ProxyProcess:
        proxy = ProxyProcess(config, tmp_path / f"pgrouter{len(proxies)}", **kwargs)
        proxies.append(proxy)
        return proxy.start(timeout)  # ProxyStartError carries the log tail

    yield start
    for proxy in proxies:
        proxy.stop()
