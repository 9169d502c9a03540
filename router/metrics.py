"""Prometheus metrics and the small HTTP server that serves them and the dashboard.

Owns: ``ProxyCollector`` (a collector that reads the proxy's state when scraped: client
sessions, pools and their counters, the replica monitor's snapshots, the directors'
routing counters, the classifier's counters; nothing is counted on the per-message path),
the private registry it lives in, and ``MetricsServer``: a minimal HTTP/1.1 server on
``metrics.host:metrics.port`` answering ``GET /metrics``, ``GET /`` and ``/dashboard``
(the live page), ``GET /api/state`` and ``/api/history`` (its JSON), one request per
connection, and the once-a-second task that samples the dashboard's history.
Must not touch: any state it reports (read only), the dashboard's page and JSON shape
(dashboard.py).

Label values are bounded: database, user and backend names come from the configuration,
rules from the policy, reasons from a fixed vocabulary; never SQL text. A client that
asked for a database pgrouter does not serve is counted under ``(other)``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from pgrouter_native import build_mode
from router import dashboard
from router.admin_commands import client_state
from router.admin_routing import backend_views
from router.cli import package_version
from router.config import ADMIN_DATABASE
from router.dashboard import History

if TYPE_CHECKING:
    from router.proxy import Proxy

log = logging.getLogger("pgrouter.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CLIENT_STATES = ("active", "idle", "waiting", "login")
POOL_LABELS = ("database", "user", "backend")
BACKEND_LABELS = ("database", "backend")
OTHER_DATABASE = "(other)"
REQUEST_TIMEOUT = 5.0  # seconds for a client to send its request head
MAX_REQUEST_HEAD = 8192


def _bool(value: bool) -> float:
    return 1.0 if value else 0.0


def pin_category(reason: str) -> str:
    """A pin reason without the names a client chose (``SET work_mem`` -> ``SET``)."""
    if reason.startswith("SET ROLE"):
        return "SET ROLE"
    if reason.startswith("SET"):
        return "SET"
    return reason.split(" (", 1)[0]


class ProxyCollector(Collector):
    """Reads the proxy's state at scrape time."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def collect(self) -> Iterator[Metric]:
        yield from self._process()
        yield from self._clients()
        yield from self._pools()
        yield from self._backends(time.monotonic())
        yield from self._routing()
        yield from self._classifier()

    def _database_label(self, name: str) -> str:
        known = name in self.proxy.settings.databases or name == ADMIN_DATABASE
        return name if known else OTHER_DATABASE

    def _process(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "pgrouter_info", "pgrouter's version and build", labels=["version", "build"]
        )
        info.add_metric([package_version(), build_mode()], 1)
        yield info
        yield GaugeMetricFamily(
            "pgrouter_start_time_seconds",
            "When pgrouter started, in seconds since the Unix epoch",
            value=self.proxy.started_at,
        )
        yield GaugeMetricFamily(
            "pgrouter_max_client_connections",
            "listen.max_client_conn",
            value=self.proxy.settings.listen.max_client_conn,
        )

    def _clients(self) -> Iterator[Metric]:
        states: Counter[tuple[str, str]] = Counter()
        pinned: Counter[tuple[str, str]] = Counter()
        for client in list(self.proxy.clients):
            state = client_state(client)
            if state is None:
                continue
            database = self._database_label(client.database)
            states[(database, state)] += 1
            if client.pin_reason is not None:
                pinned[(database, pin_category(client.pin_reason))] += 1
        clients = GaugeMetricFamily(
            "pgrouter_clients",
            "Client connections by database and state (login, waiting for a server, "
            "active: linked to a server, idle: between transactions)",
            labels=["database", "state"],
        )
        for database in [*self.proxy.settings.databases, ADMIN_DATABASE]:
            for state in CLIENT_STATES:
                states.setdefault((database, state), 0)
        for (database, state), count in sorted(states.items()):
            clients.add_metric([database, state], count)
        yield clients
        pins = GaugeMetricFamily(
            "pgrouter_pinned_clients",
            "Clients pinned to their server connection, by why",
            labels=["database", "reason"],
        )
        for (database, reason), count in sorted(pinned.items()):
            pins.add_metric([database, reason], count)
        yield pins

    def _pools(self) -> Iterator[Metric]:
        servers = GaugeMetricFamily(
            "pgrouter_pool_servers",
            "Server connections per pool: active (checked out), idle, opening",
            labels=[*POOL_LABELS, "state"],
        )
        waiting = GaugeMetricFamily(
            "pgrouter_pool_waiting_clients",
            "Clients queued for a server connection of the pool",
            labels=list(POOL_LABELS),
        )
        size = GaugeMetricFamily(
            "pgrouter_pool_size", "The pool's configured size", labels=list(POOL_LABELS)
        )
        counters = {
            name: CounterMetricFamily(f"pgrouter_pool_{name}", text, labels=list(POOL_LABELS))
            for name, text in (
                ("transactions", "Transactions run through the pool"),
                ("queries", "Queries run through the pool"),
                ("transaction_seconds", "Time spent in transactions"),
                ("query_seconds", "Time spent in queries"),
                ("received_bytes", "Bytes received from the pool's clients"),
                ("sent_bytes", "Bytes sent to the pool's clients"),
                ("waits", "Times a client had to queue for a server connection"),
                ("wait_seconds", "Time clients spent queued for a server connection"),
                ("connect_failures", "Failed attempts to open a server connection"),
            )
        }
        for pool in sorted(self.proxy.pools.values(), key=lambda p: str(p.key)):
            labels = [pool.key.database, pool.key.user, pool.key.backend]
            servers.add_metric([*labels, "active"], len(pool.active))
            servers.add_metric([*labels, "idle"], len(pool.idle))
            servers.add_metric([*labels, "opening"], pool.opening)
            waiting.add_metric(labels, sum(not w.done() for w in pool.waiters))
            size.add_metric(labels, pool.settings.size)
            stats = pool.stats
            values = {
                "transactions": stats.xact_count,
                "queries": stats.query_count,
                "transaction_seconds": stats.xact_time,
                "query_seconds": stats.query_time,
                "received_bytes": stats.received,
                "sent_bytes": stats.sent,
                "waits": stats.wait_count,
                "wait_seconds": stats.wait_time,
                "connect_failures": stats.connect_failures,
            }
            for name, value in values.items():
                counters[name].add_metric(labels, value)
        yield servers
        yield waiting
        yield size
        yield from counters.values()

    def _backends(self, now: float) -> Iterator[Metric]:
        def gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=list(BACKEND_LABELS))

        info = GaugeMetricFamily(
            "pgrouter_backend_info",
            "A configured server: its role in the configuration, host and port",
            labels=[*BACKEND_LABELS, "role", "host", "port"],
        )
        up = gauge("pgrouter_backend_up", "1 when the last probe of the server succeeded")
        recovery = gauge("pgrouter_backend_in_recovery", "1 for a standby (pg_is_in_recovery)")
        writer = gauge("pgrouter_backend_writer", "1 for the server that takes writes now")
        eligible = gauge(
            "pgrouter_backend_eligible", "1 when a read on the default route may use the server"
        )
        age = gauge("pgrouter_backend_probe_age_seconds", "Seconds since the last good probe")
        load = gauge("pgrouter_backend_load", "Units of work running on the server now")
        replay = gauge("pgrouter_replica_replay_lsn_bytes", "pg_last_wal_replay_lsn() as bytes")
        receive = gauge("pgrouter_replica_receive_lsn_bytes", "pg_last_wal_receive_lsn() as bytes")
        lag_bytes = gauge("pgrouter_replica_lag_bytes", "WAL bytes the replica has not replayed")
        lag_seconds = gauge(
            "pgrouter_replica_lag_seconds",
            "Age of the oldest writer LSN the replica has not replayed (0 when caught up)",
        )
        writer_lsn = GaugeMetricFamily(
            "pgrouter_writer_lsn_bytes",
            "pg_current_wal_insert_lsn() of the server taking writes, as bytes",
            labels=["database"],
        )
        for view in backend_views(self.proxy, now):
            labels = [view.database, view.name]
            info.add_metric([*labels, view.role, view.host, str(view.port)], 1)
            up.add_metric(labels, _bool(view.up))
            if view.in_recovery is not None:
                recovery.add_metric(labels, _bool(view.in_recovery))
            writer.add_metric(labels, _bool(view.writer))
            eligible.add_metric(labels, _bool(view.ineligible is None))
            if view.probe_age is not None:
                age.add_metric(labels, view.probe_age)
            load.add_metric(labels, view.load)
            for family, value in (
                (replay, view.replay_lsn),
                (receive, view.receive_lsn),
                (lag_bytes, view.lag_bytes),
                (lag_seconds, view.lag_seconds),
            ):
                if value is not None:
                    family.add_metric(labels, value)
            if view.writer and view.insert_lsn is not None:
                writer_lsn.add_metric([view.database], view.insert_lsn)
        yield from (info, up, recovery, writer, eligible, age, load)
        yield from (replay, receive, lag_bytes, lag_seconds, writer_lsn)

    def _routing(self) -> Iterator[Metric]:
        routed = CounterMetricFamily(
            "pgrouter_routed",
            "Units of work (a query, or messages up to Sync) started on each backend",
            labels=["database", "backend"],
        )
        rules = CounterMetricFamily(
            "pgrouter_route_rule", "Routing decisions by policy rule", labels=["database", "rule"]
        )
        reasons = CounterMetricFamily(
            "pgrouter_route_reason",
            "Routing decisions by reason (write, default, replica-stale:min_lsn, ...)",
            labels=["database", "reason"],
        )
        fallbacks = CounterMetricFamily(
            "pgrouter_read_fallbacks",
            "Reads sent to the writer because no replica was fresh enough or available",
            labels=["database"],
        )
        waits = CounterMetricFamily(
            "pgrouter_replica_waits",
            "Reads that waited for a replica to catch up (on_stale: wait)",
            labels=["database"],
        )
        wait_time = CounterMetricFamily(
            "pgrouter_replica_wait_seconds",
            "Time reads spent waiting for a replica to catch up",
            labels=["database"],
        )
        learned = GaugeMetricFamily(
            "pgrouter_learned_writes",
            "Statement shapes learned to be writes (a replica answered 25006)",
            labels=["database"],
        )
        for database, director in self.proxy.directors.items():
            stats = director.stats
            for backend in director.backends:
                routed.add_metric([database, backend], stats.by_backend.get(backend, 0))
            for rule, count in sorted(stats.by_rule.items()):
                rules.add_metric([database, rule], count)
            for reason, count in sorted(stats.by_reason.items()):
                reasons.add_metric([database, reason], count)
            fallbacks.add_metric([database], stats.fallbacks)
            waits.add_metric([database], stats.waits)
            wait_time.add_metric([database], stats.wait_time)
            learned.add_metric([database], len(director.learned_writes))
        yield from (routed, rules, reasons, fallbacks, waits, wait_time, learned)

    def _classifier(self) -> Iterator[Metric]:
        classifier = self.proxy.classifier
        hits, misses, entries = classifier.cache_info()
        yield CounterMetricFamily(
            "pgrouter_classifier_fallbacks",
            "Statements not understood by the classifier, sent to the primary",
            value=classifier.fallbacks,
        )
        yield CounterMetricFamily(
            "pgrouter_classifier_cache_hits", "Classifications answered from the cache", value=hits
        )
        yield CounterMetricFamily(
            "pgrouter_classifier_cache_misses", "Classifications that ran the parser", value=misses
        )
        yield GaugeMetricFamily(
            "pgrouter_classifier_cache_entries", "Statement shapes in the cache", value=entries
        )


def registry_for(proxy: Proxy) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(proxy))
    return registry


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    content_type: str
    body: bytes

    def encode(self, head_only: bool = False) -> bytes:
        reason = REASONS.get(self.status, "Unknown")
        head = (
            f"HTTP/1.1 {self.status} {reason}\r\n"
            f"Content-Type: {self.content_type}\r\n"
            f"Content-Length: {len(self.body)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode("latin-1") + (b"" if head_only else self.body)


REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


def _text(status: int, message: str) -> Response:
    return Response(status, TEXT, (message + "\n").encode())


def respond(
    proxy: Proxy, registry: CollectorRegistry, history: History, method: str, target: str
) -> Response:
    """The response to one request; pure apart from reading the proxy's state."""
    if method not in ("GET", "HEAD"):
        return _text(405, f"method {method} not allowed: use GET")
    path = target.split("?", 1)[0]
    if path == "/metrics":
        return Response(200, CONTENT_TYPE, generate_latest(registry))
    if proxy.settings.metrics.dashboard:
        if path in ("/", "/dashboard"):
            return Response(200, "text/html; charset=utf-8", dashboard.PAGE.encode())
        if path == "/api/state":
            state = dashboard.api_state(proxy, time.monotonic(), time.time())
            return Response(200, JSON, json.dumps(state).encode())
        if path == "/api/history":
            return Response(200, JSON, json.dumps(history.as_json()).encode())
    return _text(404, f"not found: {path} (try /metrics)")


def parse_request_line(head: bytes) -> tuple[str, str] | None:
    """(method, target) from a request head, or None when it is not HTTP/1.x."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return None
    return parts[0], parts[1]


class MetricsServer:
    """The HTTP endpoint, or nothing when ``metrics.port`` is unset."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.registry = registry_for(proxy)
        self.history = History()
        self._server: asyncio.AbstractServer | None = None
        self._sampler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.proxy.settings.metrics
        if settings.port is None:
            return
        port = settings.port
        worker = self.proxy.worker
        if worker is not None and port:  # one endpoint per worker: port, port + 1, ...
            port += worker.index
        self._server = await asyncio.start_server(
            self._handle, settings.host, port, limit=MAX_REQUEST_HEAD, reuse_address=True
        )
        log.info("metrics on http://%s:%d/metrics", settings.host, self.port)
        self._sampler = asyncio.get_running_loop().create_task(self._sample())

    @property
    def port(self) -> int | None:
        sockets = getattr(self._server, "sockets", None)
        return int(sockets[0].getsockname()[1]) if sockets else None

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _sample(self) -> None:
        while True:
            if self.proxy.settings.metrics.dashboard:
                try:
                    self.history.sample(self.proxy, time.monotonic(), time.time())
                except Exception:
                    log.exception("dashboard history sample failed")
            await asyncio.sleep(dashboard.SAMPLE_INTERVAL)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            request = parse_request_line(head)
            if request is None:
                response = _text(400, "bad request")
            else:
                try:
                    response = respond(self.proxy, self.registry, self.history, *request)
                except Exception:
                    log.exception("metrics request %s failed", request[1])
                    response = _text(500, "internal error; see pgrouter's log")
            writer.write(response.encode(head_only=request is not None and request[0] == "HEAD"))
            await writer.drain()
        except asyncio.LimitOverrunError:
            writer.write(_text(431, "request head too large").encode())
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def start_metrics(proxy: Proxy) -> MetricsServer:
    server = MetricsServer(proxy)
    await server.start()
    return server
