"""Admin console reports: one handler per SHOW command, and the types all commands share.

Owns: ``Context`` (the proxy, the asking client and one clock reading), ``Table`` and
``Done`` (what a command returns), ``AdminError``, and each SHOW handler: a pure function
from a Context to a Table with PgBouncer's column names (plus a few of our own); the
routing reports (SHOW REPLICAS, ROUTES, ROUTE FOR) are in admin_routing.py.
Must not touch: wire bytes, parsing and control commands (admin.py), and the state it
reports: these handlers only read sessions, pools, servers and settings.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from pgrouter_native import build_mode
from router.backends import backends_of
from router.cli import package_version
from router.client import State
from router.config import Settings
from router.errors import ProxyError
from router.lsn import format_lsn
from router.server import Mode

if TYPE_CHECKING:
    from router.client import ClientSession
    from router.pool import Pool
    from router.proxy import Proxy
    from router.server import ServerConnection

MASK = "********"
# Settings a RELOAD cannot change: the listening socket is bound once.
FIXED_SETTINGS = frozenset(
    {"config_file", "listen.host", "listen.port", "metrics.host", "metrics.port"}
)


class AdminError(ProxyError):
    """A command the console refuses; the session goes on (severity ERROR)."""

    def __init__(
        self, code: str, message: str, *, detail: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, detail=detail, hint=hint)
        self.sqlstate = code


@dataclass(frozen=True, slots=True)
class Context:
    """What a handler may look at, with the clock read once so every row agrees."""

    proxy: Proxy
    client: ClientSession
    wall: float  # time.time()
    mono: float  # time.monotonic()

    @classmethod
    def now(cls, proxy: Proxy, client: ClientSession) -> Context:
        return cls(proxy, client, time.time(), time.monotonic())

    def wall_of(self, monotonic: float) -> float:
        """A ``time.monotonic()`` reading as wall-clock time."""
        return self.wall - (self.mono - monotonic)


@dataclass(frozen=True, slots=True)
class Table:
    columns: tuple[str, ...]
    rows: list[tuple[object, ...]]


@dataclass(frozen=True, slots=True)
class Done:
    """A command that returns no rows: its tag, and a NOTICE to show, if any."""

    tag: str
    notice: str | None = None


# --------------------------------------------------------------------------- helpers


def timestamp(wall: float | None) -> str | None:
    if wall is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))


def seconds_and_us(seconds: float) -> tuple[int, int]:
    """PgBouncer's split of a duration: whole seconds, and the microseconds left over."""
    seconds = max(seconds, 0.0)
    whole = int(seconds)
    return whole, int((seconds - whole) * 1_000_000)


def address(peer: str) -> tuple[str, int | None]:
    """``"ip:port"`` (IPv6 too) as (addr, port); a unix socket has no port."""
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit():
        return peer, None
    return host.strip("[]"), int(port)


def tls_text(conn: ClientSession | ServerConnection) -> str:
    """Empty without TLS, else the protocol version and cipher, as PgBouncer shows them."""
    if not conn.tls:
        return ""
    transport = conn.transport
    ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return "tls"
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()}/{cipher[0]}" if cipher else str(ssl_object.version())


def _pools(proxy: Proxy) -> list[Pool]:
    return sorted(proxy.pools.values(), key=lambda p: (p.key.database, p.key.user, p.key.backend))


def client_state(client: ClientSession) -> str | None:
    """login / waiting / active (linked to a server) / idle (between transactions);
    None once closed."""
    if client.state is State.CLOSED:
        return None
    if client.waiting_since is not None:
        return "waiting"
    if client.state in (State.STARTUP, State.LOGIN, State.LINKING):
        return "login"
    # An admin console has no server; like PgBouncer, it counts as active.
    return "active" if client.server is not None or client.console is not None else "idle"


def server_state(server: ServerConnection, pool: Pool) -> str:
    if server.mode in (Mode.CONNECTING, Mode.LOGIN):
        return "login"
    if server in pool.idle:
        return "idle"
    if server.client is not None:
        return "active"
    return "tested" if server.mode is Mode.INTERNAL else "used"


def _link_of(server: ServerConnection) -> object:
    key = getattr(server.client, "key", None)
    return key[0] if key else ""


# --------------------------------------------------------------------------- SHOW


def show_pools(ctx: Context) -> Table:
    """One row per pool. cl_active counts the pool's logged-in clients that are not waiting
    (linked to a server, or between transactions, as in PgBouncer); cl_waiting the queued
    acquires; sv_used servers checked out but unlinked; sv_tested servers running the
    proxy's own statements; sv_login connections being opened or reset. maxwait is the
    oldest current wait, split into seconds and microseconds as PgBouncer does."""
    columns = (
        "database", "user", "backend", "cl_active", "cl_waiting", "sv_active", "sv_idle",
        "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us", "pool_mode",
    )  # fmt: skip
    rows: list[tuple[object, ...]] = []
    for pool in _pools(ctx.proxy):
        mine = [c for c in ctx.proxy.clients if c.pool is pool]
        states = [client_state(c) for c in mine]
        waits = [ctx.mono - c.waiting_since for c in mine if c.waiting_since is not None]
        servers = [server_state(s, pool) for s in pool.active]
        maxwait, maxwait_us = seconds_and_us(max(waits, default=0.0))
        rows.append((
            pool.key.database, pool.key.user, pool.key.backend,
            sum(s in ("active", "idle") for s in states),
            sum(not w.done() for w in pool.waiters),
            servers.count("active"), len(pool.idle), servers.count("used"),
            servers.count("tested"), pool.opening + servers.count("login"),
            maxwait, maxwait_us, pool.settings.mode,
        ))  # fmt: skip
    return Table(columns, rows)


def _routing_columns(client: ClientSession) -> tuple[str, str, str, str]:
    """last_write_lsn, min_lsn (a presented token), route (SET pgrouter.route), backend."""
    forwarder = client.forwarder
    server = client.server
    backend = "" if server is None else server.backend.name
    if forwarder is None:
        return "", "", "", backend
    written, token = forwarder.last_write_lsn, forwarder.min_lsn
    return (
        "" if written is None else format_lsn(written),
        "" if token is None else format_lsn(token),
        forwarder.route,
        backend,
    )


def show_clients(ctx: Context) -> Table:
    """Every client session, admin consoles included (database ``pgrouter``). Ours after
    PgBouncer's columns: ``last_write_lsn`` (the client's latest write), ``min_lsn`` (the
    token it presented), ``route`` (SET pgrouter.route) and ``backend`` (the server it is
    linked to now)."""
    columns = (
        "type", "user", "database", "state", "addr", "port", "connect_time", "request_time",
        "wait", "wait_us", "ptr", "link", "tls", "application_name", "pinned", "tx_status",
        "last_write_lsn", "min_lsn", "route", "backend",
    )  # fmt: skip
    rows: list[tuple[object, ...]] = []
    for client in sorted(ctx.proxy.clients, key=lambda c: (c.key[0] or 2**63, c.connected_at)):
        state = client_state(client)
        if state is None:
            continue
        since, requested = client.waiting_since, client.last_request_at
        wait, wait_us = seconds_and_us(0.0 if since is None else ctx.mono - since)
        addr, port = address(client.peer)
        rows.append((
            "C", client.user, client.database, state, addr, port,
            timestamp(client.connected_at),
            timestamp(client.connected_at if requested is None else ctx.wall_of(requested)),
            wait, wait_us,
            client.key[0] or None, "" if client.server is None else client.server.id,
            tls_text(client), client.application_name,
            client.pin_reason or "", client.tx_status, *_routing_columns(client),
        ))  # fmt: skip
    return Table(columns, rows)


def show_servers(ctx: Context) -> Table:
    """Every server connection in a pool (idle or checked out); ``link`` is the ptr of the
    client it serves. Connections still opening or resetting are counted in SHOW POOLS."""
    columns = (
        "type", "user", "database", "backend", "state", "addr", "port", "connect_time",
        "request_time", "ptr", "link", "remote_pid", "tls", "application_name", "age_s",
    )  # fmt: skip
    rows: list[tuple[object, ...]] = []
    for pool in _pools(ctx.proxy):
        for server in sorted([*pool.active, *pool.idle], key=lambda s: s.id):
            rows.append((
                "S", server.user, pool.key.database, server.backend.name,
                server_state(server, pool), server.backend.host, server.backend.port,
                timestamp(ctx.wall_of(server.created_at)), timestamp(ctx.wall_of(server.last_used)),
                server.id, _link_of(server), server.pid, tls_text(server),
                server.params.get("application_name", ""), int(ctx.mono - server.created_at),
            ))  # fmt: skip
    return Table(columns, rows)


STATS_COLUMNS = (
    "database", "total_xact_count", "total_query_count", "total_received", "total_sent",
    "total_xact_time", "total_query_time", "total_wait_time", "avg_xact_count",
    "avg_query_count", "avg_recv", "avg_sent", "avg_xact_time", "avg_query_time",
    "avg_wait_time",
)  # fmt: skip


def show_stats(ctx: Context) -> Table:
    """Per database, summed over its pools since the proxy started. Times are in
    microseconds. Unlike PgBouncer there is no stats period: avg_xact_count,
    avg_query_count, avg_recv and avg_sent are per second since the proxy started;
    avg_xact_time and avg_query_time are the mean duration of one transaction / query,
    avg_wait_time the mean wait of one client that had to queue for a server."""
    uptime = max(ctx.wall - ctx.proxy.started_at, 1e-6)
    names = list(ctx.proxy.settings.databases)
    names += sorted({key.database for key in ctx.proxy.pools} - set(names))
    rows: list[tuple[object, ...]] = []
    for name in names:
        totals = dict.fromkeys(("xact", "query", "wait_count", "recv", "sent"), 0)
        times = dict.fromkeys(("xact", "query", "wait"), 0.0)
        for pool in ctx.proxy.pools.values():
            if pool.key.database != name:
                continue
            stats = pool.stats
            totals["xact"] += stats.xact_count
            totals["query"] += stats.query_count
            totals["wait_count"] += stats.wait_count
            totals["recv"] += stats.received
            totals["sent"] += stats.sent
            times["xact"] += stats.xact_time
            times["query"] += stats.query_time
            times["wait"] += stats.wait_time
        us = {k: int(v * 1_000_000) for k, v in times.items()}
        rows.append((
            name, totals["xact"], totals["query"], totals["recv"], totals["sent"],
            us["xact"], us["query"], us["wait"],
            int(totals["xact"] / uptime), int(totals["query"] / uptime),
            int(totals["recv"] / uptime), int(totals["sent"] / uptime),
            us["xact"] // max(totals["xact"], 1), us["query"] // max(totals["query"], 1),
            us["wait"] // max(totals["wait_count"], 1),
        ))  # fmt: skip
    return Table(STATS_COLUMNS, rows)


def show_databases(ctx: Context) -> Table:
    """One row per configured server: each database's primary, then its replicas.
    ``backend`` (our extra) joins these rows to SHOW POOLS and SHOW SERVERS."""
    columns = (
        "name", "host", "port", "database", "role", "backend", "force_user", "pool_size",
        "min_pool_size", "reserve_pool", "pool_mode", "max_connections",
        "current_connections", "paused", "disabled",
    )  # fmt: skip
    settings = ctx.proxy.settings
    paused = ctx.proxy.paused_databases
    rows: list[tuple[object, ...]] = []
    for name, database in settings.databases.items():
        pool = settings.pool_for(name)
        pools = [p for p in ctx.proxy.pools.values() if p.key.database == name]
        is_paused = name in paused or any(p.paused for p in pools)
        for backend in backends_of(name, database):
            current = sum(p.total for p in pools if p.key.backend == backend.name)
            rows.append((
                name, backend.host, backend.port, backend.dbname, backend.role, backend.name,
                database.user, pool.size, pool.min_size, pool.reserve_size,
                pool.mode, pool.max_db_connections, current, int(is_paused), 0,
            ))  # fmt: skip
    return Table(columns, rows)


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested settings as (dotted key, scalar); lists of scalars stay one value."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and any(isinstance(v, Mapping | list) for v in value):
        for index, item in enumerate(value):
            yield from flatten(item, f"{prefix}.{index}")
    else:
        yield prefix, value


def config_text(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if key.rsplit(".", 1)[-1] == "password":
        return MASK
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def setting_defaults() -> dict[str, Any]:
    """Every default setting by dotted key, read from the schema (not the environment)."""
    defaults: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        value = field.get_default(call_default_factory=True)
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        defaults.update(flatten(value, name))
    return defaults


def show_config(ctx: Context) -> Table:
    """Every effective setting as a dotted key; passwords are masked."""
    defaults = setting_defaults()
    path = ctx.proxy.config_path
    current: list[tuple[str, Any]] = [("config_file", None if path is None else str(path))]
    current += flatten(ctx.proxy.settings.model_dump(mode="json"))
    rows: list[tuple[object, ...]] = [
        (
            key,
            config_text(key, value),
            config_text(key, defaults.get(key)),
            "no" if key in FIXED_SETTINGS else "yes",
        )
        for key, value in current
    ]
    return Table(("key", "value", "default", "changeable"), rows)


def show_version(ctx: Context) -> Table:
    """PgBouncer's one column; the build (compiled or interpreted) follows the version."""
    worker = ctx.proxy.worker
    suffix = "" if worker is None else f" (worker {worker.index} of {ctx.proxy.settings.workers})"
    return Table(("version",), [(f"pgrouter {package_version()}, {build_mode()}{suffix}",)])


def show_users(ctx: Context) -> Table:
    """Users from auth.users and auth.admin_users; pool_mode is the user's own override."""
    auth = ctx.proxy.settings.auth
    names = list(auth.users) + [n for n in auth.admin_users if n not in auth.users]
    rows: list[tuple[object, ...]] = []
    for name in names:
        entry = auth.users.get(name)
        mode = None if entry is None else entry.pool_mode
        rows.append((name, mode, "yes" if name in auth.admin_users else "no"))
    return Table(("name", "pool_mode", "admin"), rows)
