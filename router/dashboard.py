"""The live replication-lag dashboard: its page and the JSON state it polls.

Owns: ``PAGE`` (router/static/dashboard.html: one self-contained page, inline CSS, plain
JavaScript and SVG, no external resources, that polls ``/api/state`` every second), the
JSON it reads: ``api_state`` (per database, each backend's role, state, LSNs, lag and
eligibility, and the routing counters) and ``History`` (one small sample per second of
each replica's lag and the routing counters, the last five minutes, so that a page opened
during an incident shows what led up to it; served as ``/api/history``).
Must not touch: HTTP (metrics.py serves these and runs the sampler), any state it reports
(read only).
"""

from __future__ import annotations

from collections import deque
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from router.admin_commands import client_state
from router.admin_routing import BackendView, backend_views, lsn_text, routing_off
from router.cli import package_version

if TYPE_CHECKING:
    from router.director import Director
    from router.proxy import Proxy

PAGE = (files("router") / "static" / "dashboard.html").read_text(encoding="utf-8")
SAMPLE_INTERVAL = 1.0  # seconds between History samples
HISTORY_SECONDS = 300


def _backend(view: BackendView, routed: int) -> dict[str, Any]:
    return {
        "name": view.name,
        "role": view.role,
        "host": view.host,
        "port": view.port,
        "up": view.up,
        "in_recovery": view.in_recovery,
        "writer": view.writer,
        "replay_lsn": lsn_text(view.replay_lsn),
        "replay_lsn_bytes": view.replay_lsn,
        "receive_lsn": lsn_text(view.receive_lsn),
        "insert_lsn": lsn_text(view.insert_lsn),
        "lag_bytes": view.lag_bytes,
        "lag_seconds": view.lag_seconds,
        "probe_age_ms": None if view.probe_age is None else round(view.probe_age * 1000),
        "eligible": view.ineligible or "yes",
        "load": view.load,
        "sv_active": view.sv_active,
        "sv_idle": view.sv_idle,
        "routed": routed,
        "error": view.error,
    }


def api_state(proxy: Proxy, now: float, wall: float) -> dict[str, Any]:
    """Everything the dashboard shows; ``now`` is monotonic, ``wall`` is ``time.time()``."""
    views = backend_views(proxy, now)
    clients: dict[str, dict[str, int]] = {}
    for client in list(proxy.clients):
        state = client_state(client)
        if state is not None and client.database in proxy.settings.databases:
            counts = clients.setdefault(client.database, {})
            counts[state] = counts.get(state, 0) + 1
    databases = []
    for name, director in proxy.directors.items():
        if name not in proxy.settings.databases:
            continue
        stats = director.stats
        mine = [v for v in views if v.database == name]
        writer_lsn = next((v.insert_lsn for v in mine if v.writer), None)
        counts = _counts(director, mine)
        databases.append(
            {
                "name": name,
                "writer": next((v.name for v in mine if v.writer), None),
                "writer_lsn": lsn_text(writer_lsn),
                "routing_off": routing_off(proxy, name),
                "backends": [_backend(v, stats.by_backend.get(v.name, 0)) for v in mine],
                "routing": {
                    **counts,
                    "waits": stats.waits,
                    "wait_seconds": stats.wait_time,
                    "by_reason": dict(stats.by_reason),
                    "by_rule": dict(stats.by_rule),
                },
                "clients": clients.get(name, {}),
            }
        )
    return {
        "version": package_version(),
        "time": wall,
        "uptime": max(0.0, wall - proxy.started_at),
        "databases": databases,
    }


def _counts(director: Director, views: list[BackendView]) -> dict[str, int]:
    """Units run on replicas (reads) and on the writer, and reads that fell back to it."""
    by_backend = director.stats.by_backend
    replica_reads = sum(by_backend.get(v.name, 0) for v in views if not v.writer)
    return {
        "replica_reads": replica_reads,
        "writer_units": sum(by_backend.values()) - replica_reads,
        "fallbacks": director.stats.fallbacks,
    }


def _standby(view: BackendView) -> bool:
    """A replica to chart: a standby now, or a configured replica that is not the writer."""
    return not view.writer and (bool(view.in_recovery) or view.role == "replica")


def history_sample(proxy: Proxy, now: float, wall: float) -> dict[str, Any]:
    """Each replica's [lag bytes, lag seconds] (null while down) and the routing counts."""
    views = backend_views(proxy, now)
    databases: dict[str, Any] = {}
    for name, director in proxy.directors.items():
        mine = [v for v in views if v.database == name]
        lag = {v.name: [v.lag_bytes, v.lag_seconds] if v.up else None for v in mine if _standby(v)}
        databases[name] = {"lag": lag, **_counts(director, mine)}
    return {"t": wall, "databases": databases}


class History:
    """The last ``size`` samples, one per ``SAMPLE_INTERVAL``."""

    def __init__(self, size: int = HISTORY_SECONDS) -> None:
        self.samples: deque[dict[str, Any]] = deque(maxlen=size)

    def sample(self, proxy: Proxy, now: float, wall: float) -> None:
        self.samples.append(history_sample(proxy, now, wall))

    def as_json(self) -> dict[str, Any]:
        return {"interval": SAMPLE_INTERVAL, "samples": list(self.samples)}
