"""Metrics without sockets: the collector over fake proxy state (exact names, labels and
values), the HTTP responses and request handling, and the dashboard's JSON."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

import pgrouter_native
from policies.match import compile_policy
from policies.model import Policy
from router.backends import backends_of
from router.client import State
from router.config import Settings
from router.dashboard import PAGE, History, api_state
from router.director import Director
from router.metrics import (
    CONTENT_TYPE,
    MetricsServer,
    parse_request_line,
    pin_category,
    registry_for,
    respond,
)
from router.monitor import BackendState, ClusterState, Monitor
from router.pool import PoolKey, PoolStats
from router.server import Mode

P1, R1, R2 = 0x3000060, 0x3000060, 0x2FFF000

SETTINGS: dict[str, Any] = {
    "auth": {"admin_users": ["admin"], "users": {"app": {"password": "pw"}}},
    "pool": {"mode": "transaction", "size": 8},
    "databases": {
        "app": {
            "primary": {"host": "10.0.0.1", "port": 5432},
            "replicas": [{"host": "10.0.0.2"}, {"host": "10.0.0.3", "port": 5433}],
        }
    },
}


class Fake:
    """An attribute bag that can live in a set."""

    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


class Waiter:
    def __init__(self, done: bool) -> None:
        self._done = done

    def done(self) -> bool:
        return self._done


def cluster(now: float) -> ClusterState:
    primary, replica1, replica2 = backends_of("app", Settings(**SETTINGS).databases["app"])
    return ClusterState(
        "app",
        (
            BackendState(primary, up=True, in_recovery=False, insert_lsn=P1, checked_at=now - 1),
            BackendState(
                replica1, up=True, in_recovery=True, replay_lsn=R1, receive_lsn=R1,
                lag_bytes=0, lag_seconds=0.0, checked_at=now - 1,
            ),
            BackendState(
                replica2, up=True, in_recovery=True, replay_lsn=R2, receive_lsn=P1,
                lag_bytes=P1 - R2, lag_seconds=12.5, checked_at=now - 1,
            ),
        ),
        "primary",
        P1,
        now,
    )  # fmt: skip


def director(settings: Settings, now: float) -> Director:
    backends = backends_of("app", settings.databases["app"])
    monitor = Monitor(
        "app", backends, None, interval=10.0, timeout=1.0, max_backoff=30.0,
        tls=settings.tls, ssl_context=None,
    )  # fmt: skip
    monitor.state = cluster(now)
    result = Director("app", backends, monitor)
    stats = result.stats
    stats.by_backend.update({"primary": 5, "replica1": 7, "replica2": 3})
    stats.by_rule.update({"(default)": 12, "reports": 2})
    stats.by_reason.update({"default": 9, "write": 4, "replica-stale:min_lsn": 1})
    stats.fallbacks, stats.waits, stats.wait_time = 2, 1, 0.25
    result.learned_writes.add("fingerprint")
    result.load["replica1"] = 1
    return result


def make_proxy() -> Fake:
    now = time.monotonic()
    settings = Settings(**SETTINGS)
    backends = backends_of("app", settings.databases["app"])
    pool = Fake(
        key=PoolKey("app", "app", "replica1"),
        backend=backends[1],
        settings=settings.pool,
        idle=[],
        active=set(),
        opening=1,
        waiters=deque([Waiter(False), Waiter(True)]),
        stats=PoolStats(
            xact_count=4, query_count=10, xact_time=0.5, query_time=0.25, received=100,
            sent=200, wait_count=2, wait_time=0.5, connect_failures=1,
        ),
    )  # fmt: skip

    def client(**attrs: Any) -> Fake:
        defaults: dict[str, Any] = {
            "database": "app", "state": State.ACTIVE, "waiting_since": None, "server": None,
            "console": None, "pin_reason": None,
        }  # fmt: skip
        return Fake(**{**defaults, **attrs})

    linked = client(pin_reason="SET work_mem")
    server = Fake(mode=Mode.READY, client=linked)
    linked.server = server
    pool.active = {server}
    pool.idle = [Fake(mode=Mode.READY, client=None)]
    clients = {
        linked,
        client(),
        client(waiting_since=now - 1),
        client(database="pgrouter", console=object()),
        client(database="nosuch", state=State.LOGIN),
        client(state=State.CLOSED),
    }
    classifier = Fake(fallbacks=3, cache_info=lambda: (5, 2, 2))
    return Fake(
        settings=settings,
        clients=clients,
        pools={pool.key: pool},
        directors={"app": director(settings, now)},
        classifier=classifier,
        policy=compile_policy(Policy()),
        started_at=1700000000.0,
    )


@pytest.fixture
def proxy() -> Fake:
    return make_proxy()


def value(proxy: Fake, name: str, **labels: str) -> float | None:
    return registry_for(proxy).get_sample_value(name, labels)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- collector


def test_process_metrics(proxy: Fake) -> None:
    assert value(proxy, "pgrouter_start_time_seconds") == 1700000000.0
    assert value(proxy, "pgrouter_max_client_connections") == 1000
    families = {f.name: f for f in registry_for(proxy).collect()}  # type: ignore[arg-type]
    (info,) = families["pgrouter_info"].samples
    assert info.value == 1 and set(info.labels) == {"version", "build"}
    assert info.labels["build"] == pgrouter_native.build_mode()


@pytest.mark.parametrize(
    ("database", "state", "count"),
    [
        ("app", "active", 1),
        ("app", "idle", 1),
        ("app", "waiting", 1),
        ("app", "login", 0),
        ("pgrouter", "active", 1),
        ("pgrouter", "idle", 0),
        ("(other)", "login", 1),
    ],
)
def test_clients_by_database_and_state(proxy: Fake, database: str, state: str, count: int) -> None:
    assert value(proxy, "pgrouter_clients", database=database, state=state) == count


def test_closed_clients_are_not_counted(proxy: Fake) -> None:
    families = {f.name: f for f in registry_for(proxy).collect()}  # type: ignore[arg-type]
    assert sum(s.value for s in families["pgrouter_clients"].samples) == 5


def test_pinned_clients_by_reason_without_parameter_names(proxy: Fake) -> None:
    assert value(proxy, "pgrouter_pinned_clients", database="app", reason="SET") == 1


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("SET work_mem", "SET"),
        ("SET SESSION search_path", "SET"),
        ("SET ROLE", "SET ROLE"),
        ("LISTEN", "LISTEN"),
        ("PREPARE (SQL-level prepared statement)", "PREPARE"),
        ("session-level function (advisory lock, set_config, ...)", "session-level function"),
        ("temporary object", "temporary object"),
    ],
)
def test_pin_category(reason: str, category: str) -> None:
    assert pin_category(reason) == category


def test_pool_gauges(proxy: Fake) -> None:
    labels = {"database": "app", "user": "app", "backend": "replica1"}
    assert value(proxy, "pgrouter_pool_servers", **labels, state="active") == 1
    assert value(proxy, "pgrouter_pool_servers", **labels, state="idle") == 1
    assert value(proxy, "pgrouter_pool_servers", **labels, state="opening") == 1
    assert value(proxy, "pgrouter_pool_waiting_clients", **labels) == 1
    assert value(proxy, "pgrouter_pool_size", **labels) == 8


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("pgrouter_pool_transactions_total", 4),
        ("pgrouter_pool_queries_total", 10),
        ("pgrouter_pool_transaction_seconds_total", 0.5),
        ("pgrouter_pool_query_seconds_total", 0.25),
        ("pgrouter_pool_received_bytes_total", 100),
        ("pgrouter_pool_sent_bytes_total", 200),
        ("pgrouter_pool_waits_total", 2),
        ("pgrouter_pool_wait_seconds_total", 0.5),
        ("pgrouter_pool_connect_failures_total", 1),
    ],
)
def test_pool_counters(proxy: Fake, name: str, expected: float) -> None:
    assert value(proxy, name, database="app", user="app", backend="replica1") == expected


@pytest.mark.parametrize(
    ("name", "backend", "expected"),
    [
        ("pgrouter_backend_up", "primary", 1),
        ("pgrouter_backend_up", "replica2", 1),
        ("pgrouter_backend_in_recovery", "primary", 0),
        ("pgrouter_backend_in_recovery", "replica1", 1),
        ("pgrouter_backend_writer", "primary", 1),
        ("pgrouter_backend_writer", "replica1", 0),
        ("pgrouter_backend_eligible", "primary", 0),
        ("pgrouter_backend_eligible", "replica1", 1),
        ("pgrouter_backend_eligible", "replica2", 0),  # 12.5s behind, default bound 10s
        ("pgrouter_backend_load", "replica1", 1),
        ("pgrouter_replica_replay_lsn_bytes", "replica1", R1),
        ("pgrouter_replica_replay_lsn_bytes", "replica2", R2),
        ("pgrouter_replica_receive_lsn_bytes", "replica2", P1),
        ("pgrouter_replica_lag_bytes", "replica1", 0),
        ("pgrouter_replica_lag_bytes", "replica2", P1 - R2),
        ("pgrouter_replica_lag_seconds", "replica2", 12.5),
    ],
)
def test_backend_gauges(proxy: Fake, name: str, backend: str, expected: float) -> None:
    assert value(proxy, name, database="app", backend=backend) == expected


def test_unknown_values_have_no_sample(proxy: Fake) -> None:
    assert value(proxy, "pgrouter_replica_lag_bytes", database="app", backend="primary") is None
    assert (
        value(proxy, "pgrouter_replica_replay_lsn_bytes", database="app", backend="primary") is None
    )


def test_backend_info_and_writer_lsn(proxy: Fake) -> None:
    labels = {"database": "app", "backend": "replica2", "role": "replica", "host": "10.0.0.3"}
    assert value(proxy, "pgrouter_backend_info", **labels, port="5433") == 1
    assert value(proxy, "pgrouter_writer_lsn_bytes", database="app") == P1
    age = value(proxy, "pgrouter_backend_probe_age_seconds", database="app", backend="replica1")
    assert age is not None and 1.0 <= age < 2.0


def test_a_down_replica_is_down_ineligible_and_has_no_lag(proxy: Fake) -> None:
    monitor = proxy.directors["app"].monitor
    primary, replica1, replica2 = monitor.state.backends
    down = BackendState(replica2.backend, up=False, replay_lsn=R2, error="refused", failures=3)
    monitor.state = ClusterState("app", (primary, replica1, down), "primary", P1, 0.0)
    assert value(proxy, "pgrouter_backend_up", database="app", backend="replica2") == 0
    assert value(proxy, "pgrouter_backend_eligible", database="app", backend="replica2") == 0
    assert value(proxy, "pgrouter_replica_lag_bytes", database="app", backend="replica2") is None
    # The replay LSN of a down replica is still a true lower bound.
    assert (
        value(proxy, "pgrouter_replica_replay_lsn_bytes", database="app", backend="replica2") == R2
    )


@pytest.mark.parametrize(
    ("name", "labels", "expected"),
    [
        ("pgrouter_routed_total", {"backend": "primary"}, 5),
        ("pgrouter_routed_total", {"backend": "replica1"}, 7),
        ("pgrouter_routed_total", {"backend": "replica2"}, 3),
        ("pgrouter_route_rule_total", {"rule": "(default)"}, 12),
        ("pgrouter_route_rule_total", {"rule": "reports"}, 2),
        ("pgrouter_route_reason_total", {"reason": "write"}, 4),
        ("pgrouter_route_reason_total", {"reason": "replica-stale:min_lsn"}, 1),
        ("pgrouter_read_fallbacks_total", {}, 2),
        ("pgrouter_replica_waits_total", {}, 1),
        ("pgrouter_replica_wait_seconds_total", {}, 0.25),
        ("pgrouter_learned_writes", {}, 1),
    ],
)
def test_routing_counters(proxy: Fake, name: str, labels: dict[str, str], expected: float) -> None:
    assert value(proxy, name, database="app", **labels) == expected


def test_a_backend_nothing_ran_on_still_has_a_routed_series(proxy: Fake) -> None:
    proxy.directors["app"].stats.by_backend.clear()
    assert value(proxy, "pgrouter_routed_total", database="app", backend="replica2") == 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("pgrouter_classifier_fallbacks_total", 3),
        ("pgrouter_classifier_cache_hits_total", 5),
        ("pgrouter_classifier_cache_misses_total", 2),
        ("pgrouter_classifier_cache_entries", 2),
    ],
)
def test_classifier_metrics(proxy: Fake, name: str, expected: float) -> None:
    assert value(proxy, name) == expected


def test_scraping_counts_nothing(proxy: Fake) -> None:
    stats = proxy.directors["app"].stats
    before = (dict(stats.by_rule), dict(stats.by_reason), dict(stats.by_backend), stats.fallbacks)
    registry_for(proxy).collect()
    respond(proxy, registry_for(proxy), History(), "GET", "/metrics")  # type: ignore[arg-type]
    after = (dict(stats.by_rule), dict(stats.by_reason), dict(stats.by_backend), stats.fallbacks)
    assert before == after


# --------------------------------------------------------------------------- HTTP


def get(proxy: Fake, target: str, method: str = "GET") -> Any:
    return respond(proxy, registry_for(proxy), History(), method, target)  # type: ignore[arg-type]


def test_get_metrics_is_prometheus_text(proxy: Fake) -> None:
    response = get(proxy, "/metrics")
    assert (response.status, response.content_type) == (200, CONTENT_TYPE)
    families = {f.name: f for f in text_string_to_metric_families(response.body.decode())}
    assert families["pgrouter_routed"].type == "counter"
    assert families["pgrouter_replica_lag_bytes"].type == "gauge"
    lag = {s.labels["backend"]: s.value for s in families["pgrouter_replica_lag_bytes"].samples}
    assert lag == {"replica1": 0, "replica2": P1 - R2}
    every_label_value = {v for f in families.values() for s in f.samples for v in s.labels.values()}
    assert not any("SELECT" in v.upper() for v in every_label_value)


def test_unknown_path_is_404(proxy: Fake) -> None:
    response = get(proxy, "/nope")
    assert response.status == 404
    assert response.encode().startswith(b"HTTP/1.1 404 Not Found\r\n")


def test_other_methods_are_405(proxy: Fake) -> None:
    assert get(proxy, "/metrics", "POST").status == 405


def test_query_string_is_ignored(proxy: Fake) -> None:
    assert get(proxy, "/metrics?x=1").status == 200


@pytest.mark.parametrize("path", ["/", "/dashboard"])
def test_dashboard_page(proxy: Fake, path: str) -> None:
    response = get(proxy, path)
    assert response.status == 200
    assert response.content_type.startswith("text/html")
    assert b"/api/state" in response.body


def test_dashboard_page_is_self_contained() -> None:
    for external in ("http://", "https://", "//cdn", "<link", "src="):
        assert external not in PAGE.replace('"http://www.w3.org/2000/svg"', "")


def test_dashboard_off_leaves_only_metrics(proxy: Fake) -> None:
    proxy.settings = Settings(**{**SETTINGS, "metrics": {"port": 9187, "dashboard": False}})
    assert get(proxy, "/dashboard").status == 404
    assert get(proxy, "/api/state").status == 404
    assert get(proxy, "/metrics").status == 200


def test_response_encoding_closes_the_connection() -> None:
    response = get(make_proxy(), "/nope")
    head, _, body = response.encode().partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert response.encode(head_only=True).endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("head", "parsed"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", ("GET", "/metrics")),
        (b"HEAD / HTTP/1.0\r\n\r\n", ("HEAD", "/")),
        (b"GET /metrics\r\n\r\n", None),
        (b"\x16\x03\x01\x02\x00\r\n\r\n", None),
        (b"GET metrics HTTP/1.1\r\n\r\n", None),
    ],
)
def test_parse_request_line(head: bytes, parsed: tuple[str, str] | None) -> None:
    assert parse_request_line(head) == parsed


class Writer:
    def __init__(self) -> None:
        self.data = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def handle(proxy: Fake, request: bytes, eof: bool = True) -> Writer:
    """One request through MetricsServer's connection handler, without a socket."""

    async def run() -> Writer:
        reader = asyncio.StreamReader(limit=8192)
        reader.feed_data(request)
        if eof:
            reader.feed_eof()
        writer = Writer()
        server = MetricsServer(proxy)  # type: ignore[arg-type]
        await server._handle(reader, cast(asyncio.StreamWriter, writer))
        return writer

    return asyncio.run(run())


def test_handler_answers_one_request_and_closes(proxy: Fake) -> None:
    writer = handle(proxy, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head, _, body = writer.data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"pgrouter_replica_lag_bytes" in body
    assert writer.closed


def test_handler_head_request_has_no_body(proxy: Fake) -> None:
    writer = handle(proxy, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert writer.data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert writer.data.endswith(b"\r\n\r\n")


def test_handler_rejects_garbage_with_400(proxy: Fake) -> None:
    writer = handle(proxy, b"hello\r\n\r\n")
    assert writer.data.startswith(b"HTTP/1.1 400 ")
    assert writer.closed


def test_handler_refuses_an_oversized_head(proxy: Fake) -> None:
    writer = handle(proxy, b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n")
    assert writer.data.startswith(b"HTTP/1.1 431 ")
    assert writer.closed


def test_handler_closes_quietly_on_a_truncated_request(proxy: Fake) -> None:
    writer = handle(proxy, b"GET /metr")
    assert writer.data == b""
    assert writer.closed


def test_handler_turns_a_failure_into_500(proxy: Fake) -> None:
    proxy.classifier = Fake()  # no cache_info: the collector fails
    writer = handle(proxy, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert writer.data.startswith(b"HTTP/1.1 500 ")


def test_metrics_server_is_inert_without_a_port(proxy: Fake) -> None:
    async def run() -> int | None:
        server = MetricsServer(proxy)  # type: ignore[arg-type]
        await server.start()
        port = server.port
        await server.close()
        return port

    assert asyncio.run(run()) is None


# --------------------------------------------------------------------------- dashboard JSON


def test_api_state_shape(proxy: Fake) -> None:
    response = get(proxy, "/api/state")
    assert (response.status, response.content_type) == (200, "application/json")
    state = json.loads(response.body)
    assert set(state) == {"version", "time", "uptime", "databases"}
    (db,) = state["databases"]
    assert (db["name"], db["writer"], db["writer_lsn"], db["routing_off"]) == (
        "app", "primary", "0/3000060", None,
    )  # fmt: skip
    backends = {b["name"]: b for b in db["backends"]}
    assert list(backends) == ["primary", "replica1", "replica2"]
    assert backends["replica2"] | {"probe_age_ms": 0} == {
        "name": "replica2", "role": "replica", "host": "10.0.0.3", "port": 5433, "up": True,
        "in_recovery": True, "writer": False, "replay_lsn": "0/2FFF000",
        "replay_lsn_bytes": R2, "receive_lsn": "0/3000060", "insert_lsn": "",
        "lag_bytes": P1 - R2, "lag_seconds": 12.5, "probe_age_ms": 0, "eligible": "lag>10s",
        "load": 0, "sv_active": 0, "sv_idle": 0, "routed": 3, "error": None,
    }  # fmt: skip
    assert backends["replica1"]["eligible"] == "yes"
    assert (backends["replica1"]["sv_active"], backends["replica1"]["sv_idle"]) == (1, 1)
    assert db["routing"] == {
        "replica_reads": 10, "writer_units": 5, "fallbacks": 2, "waits": 1,
        "wait_seconds": 0.25, "by_reason": {"default": 9, "write": 4, "replica-stale:min_lsn": 1},
        "by_rule": {"(default)": 12, "reports": 2},
    }  # fmt: skip
    assert db["clients"] == {"active": 1, "idle": 1, "waiting": 1}


def test_api_state_says_when_reads_stay_on_the_writer(proxy: Fake) -> None:
    proxy.settings = Settings(**{**SETTINGS, "pool": {"mode": "session"}})
    state = api_state(proxy, time.monotonic(), time.time())  # type: ignore[arg-type]
    (db,) = state["databases"]
    assert db["routing_off"] == "session-pool-mode"
    assert {b["name"]: b["eligible"] for b in db["backends"]}["replica1"] == "session-pool-mode"


def test_history_keeps_the_last_samples_of_each_standby(proxy: Fake) -> None:
    history = History(size=2)
    for t in (1.0, 2.0, 3.0):
        history.sample(proxy, time.monotonic(), t)  # type: ignore[arg-type]
    body = json.loads(get(proxy, "/api/history").body)
    assert body == {"interval": 1.0, "samples": []}  # a fresh History per call here
    samples = history.as_json()["samples"]
    assert [s["t"] for s in samples] == [2.0, 3.0]
    assert samples[-1]["databases"]["app"] == {
        "lag": {"replica1": [0, 0.0], "replica2": [P1 - R2, 12.5]},
        "replica_reads": 10,
        "writer_units": 5,
        "fallbacks": 2,
    }
