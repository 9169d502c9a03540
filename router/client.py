"""Client sessions: one connection from an application to the proxy.

Owns: the startup phase (SSLRequest / GSSENCRequest / CancelRequest / StartupMessage),
driving authentication, handing the client its server connection, relaying the client's
messages, counting outstanding requests, and ending the session with a reason.
Must not touch: pool internals (it asks a Pool for a server and gives it back), server
login (server.py), the wording of errors (errors.py).

Theory of operation. States and the events that move between them:

    STARTUP --StartupMessage--> LOGIN --authenticated--> LINKING --params synced--> ACTIVE
       |                          |                         |                          |
       +--CancelRequest/error-----+----------error----------+--------error/Terminate---+--> CLOSED

Everything before ACTIVE runs in one coroutine (``_login``) fed by an inbox of decoded
packets, so the rules of the handshake read top to bottom. ACTIVE is callback-driven:
each chunk from the client is split into frames, translated by the Forwarder and sent to
the server; the server's ResponseTracker records every reply owed. In transaction and
statement modes a client without a server queues its messages while ``_attach`` gets
one, and gives it back on the ReadyForQuery that leaves nothing owed and no transaction
open. A server connection released with replies owed or a transaction open is closed,
never reused dirty.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Final, cast

from protocol import backend as be
from protocol import frontend as fe
from protocol.framing import FrameReader, StartupReader
from protocol.startup import (
    SSL_ALLOWED,
    SSL_DENIED,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    decode_startup,
)
from router.auth import authenticate
from router.capture import CAPTURE_SQL
from router.config import ADMIN_DATABASE
from router.deferred import planned_unit
from router.director import Session
from router.dispatch import Dispatch
from router.errors import (
    AuthorizationFailed,
    ClientProtocolViolation,
    FeatureNotSupported,
    InvalidStartupLsn,
    LoginTimeout,
    ProxyError,
    ServerError,
    TooManyClients,
    UnknownDatabase,
    error_response,
)
from router.forward import Forwarder
from router.inbox import Inbox
from router.lsn import InvalidLsn, parse_lsn
from router.params import split_wanted, startup_parameters, sync_query
from router.prepared import with_body
from router.routing import Decision
from router.server import nowhere
from router.sessionstate import REPORTED
from router.units import Planner

if TYPE_CHECKING:
    from policies.match import RouteRequest
    from router.admin import AdminConsole
    from router.director import Director
    from router.pool import Pool, Waiter
    from router.proxy import Proxy
    from router.server import ServerConnection

log = logging.getLogger("pgrouter.client")


# (settings key, reported parameters, other applied parameters); see ClientSession._wanted.
Wanted = tuple[object, dict[str, str], dict[str, str]]
# Clients with the same settings share one Wanted (idle clients are many, settings few).
_SHARED_WANTED: Final[dict[object, Wanted]] = {}
_DONE: Final = Inbox()  # the inbox of every client past login


class State(enum.Enum):
    STARTUP = "startup"
    LOGIN = "login"
    LINKING = "linking"
    ACTIVE = "active"
    CLOSED = "closed"


def _closed() -> bool:
    return True


_ACTIVE: Final = State.ACTIVE  # tested per message: see router/server.py's _READY


class ClientSession(Dispatch):
    # Thousands of these stay alive while idle: no per-instance dict.
    __slots__ = (
        "_closing",
        "_console_queue",
        "_console_task",
        "_inbox",
        "_login_task",
        "_pools",
        "_reader",
        "_reported_version",
        "_startup_applied",
        "_startup_min_lsn",
        "_startup_reader",
        "_wanted_cache",
        "_wanted_for",
        "_write",
        "application_name",
        "client_addr",
        "close_reason",
        "connected_at",
        "console",
        "database",
        "director",
        "forwarder",
        "key",
        "loads",
        "mode",
        "peer",
        "planner",
        "proxy",
        "rejected",
        "reported",
        "startup_params",
        "state",
        "tls",
        "transport",
        "user",
        "writing_paused",
    )

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.state = State.STARTUP
        self.transport: asyncio.Transport | None = None
        self._write: Callable[[bytes], object] = nowhere  # transport.write, bound once
        self._closing: Callable[[], bool] = _closed  # transport.is_closing, bound once
        self.peer = "?"
        self.client_addr: str | None = None
        self.user = ""
        self.database = ""
        self.application_name = ""
        self.tls = False
        self.key: tuple[int, int] = (0, 0)
        self.connected_at = time.time()
        self.startup_params: dict[str, str] = {}
        self._startup_min_lsn: int | None = None
        self.reported: dict[str, str] = {}
        self.pool: Pool | None = None
        self.mode = "session"
        self.server: ServerConnection | None = None
        self.writing_paused = False  # this client's transport is backed up
        self.forwarder: Forwarder | None = None
        self.tx_status = "I"
        self.waiting_since: float | None = None  # monotonic, while waiting for a server
        self.last_request_at: float | None = None  # monotonic
        self._startup_applied: dict[str, str] = {}
        self._reported_version = 0
        self._pools: dict[str, Pool] = {}  # by backend name
        self._wanted_cache: Wanted | None = None
        self._wanted_for = (0, 0, 0)  # the versions _wanted_cache was computed for
        self._queued: list[tuple[str, bytes]] = []  # messages waiting for a server
        self._attaching: asyncio.Task[None] | Waiter | None = None
        # Monotonic start of the request / transaction being timed; 0.0: none. (Plain
        # floats, not Optional: compiled, they are stored unboxed.)
        self._request_started = 0.0
        self._xact_started = 0.0
        self.director: Director | None = None
        self.planner: Planner | None = None
        self._init_dispatch()
        self.close_reason = ""
        self.rejected: ProxyError | None = None
        self._startup_reader: StartupReader | None = StartupReader()
        self._reader = FrameReader(proxy.settings.listen.max_message_size)
        self._inbox = Inbox()
        self._login_task: asyncio.Task[None] | None = None
        self.console: AdminConsole | None = None

    def __repr__(self) -> str:
        return f"<client {self.key[0]} {self.user}@{self.database} from {self.peer}>"

    # ---------------------------------------------------------------- the protocol callbacks
    # (asyncio.Protocol's, without inheriting from it: a plain class compiles to a native
    # one, see pgrouter_native; the event loop only calls these methods)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport instances; same interface.
        self._use_transport(cast(asyncio.Transport, transport))
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "unix")
        # The IPv4 address, which policies match with CIDRs; None otherwise.
        self.client_addr = self.peer.rsplit(":", 1)[0] if self.peer.count(".") == 3 else None
        self.rejected = self.proxy.admit(self)
        self._login_task = asyncio.get_running_loop().create_task(self._login())

    def data_received(self, data: bytes) -> None:
        try:
            if self._startup_reader is not None:
                self._startup_packets(data)
            elif self.state is _ACTIVE:
                if self.console is not None:
                    self._console_frames(self._reader.feed_raw(data))
                    return
                if self.pool is not None:
                    self.pool.stats.received += len(data)
                frames = self._reader.feed_raw(data)
                if frames:
                    self._forward(frames)
            else:
                self._push(self._reader.feed(data))
        except ProxyError as exc:
            self.fail(exc)
        except Exception as exc:  # a decoding error: the client's bytes are not a protocol
            self.fail(exc)

    def eof_received(self) -> None:
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is not State.CLOSED:
            self._finish(self.close_reason or ("connection reset" if exc else "client closed"))

    def pause_writing(self) -> None:
        self.writing_paused = True  # a server linked later starts paused (see link)
        if self.server is not None:
            self.server.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.server is not None:
            self.server.resume_reading()

    # ---------------------------------------------------------------- startup phase

    def _startup_packets(self, data: bytes) -> None:
        reader = self._startup_reader
        assert reader is not None
        packets = reader.feed(data)
        for index, body in enumerate(packets):
            message = decode_startup(body)
            self._push([("startup", body)])
            if isinstance(message, SSLRequest | GSSENCRequest):
                if index < len(packets) - 1 or reader.take_rest():
                    # Bytes sent before our answer could be spliced into the TLS stream.
                    raise ClientProtocolViolation("unexpected data after an encryption request")
                if isinstance(message, SSLRequest):
                    assert self.transport is not None
                    self.transport.pause_reading()  # until the TLS handshake takes over
            elif isinstance(message, StartupMessage):
                self._startup_reader = None
                rest = reader.take_rest()
                if rest:
                    self._push(self._reader.feed(rest))
                return
            else:  # CancelRequest: nothing may follow. Acted on now, not by the login
                # task: a sender that closes at once must not lose it.
                assert isinstance(message, CancelRequest)
                self.proxy.cancel_soon(message.pid, message.secret)
                return

    def _push(self, items: list[tuple[str, bytes]]) -> None:
        self._inbox.push(items)

    async def _recv(self) -> tuple[str, bytes]:
        return await self._inbox.get(lambda: ConnectionResetError("client went away"))

    async def _login(self) -> None:
        try:
            async with asyncio.timeout(self.proxy.settings.listen.client_login_timeout):
                startup = await self._handshake()
                if startup is None:
                    return
                credentials = await self._authenticate(startup)
            self.send(be.AuthenticationOk().encode())
            if self.database == ADMIN_DATABASE:
                self._open_console()
            else:
                await self._link(credentials)
        except TimeoutError:
            self.fail(
                LoginTimeout(
                    "client_login_timeout: login not completed in "
                    f"{self.proxy.settings.listen.client_login_timeout:g}s"
                )
            )
        except (ConnectionResetError, asyncio.CancelledError):
            return
        except ProxyError as exc:
            self.fail(exc)
        except Exception as exc:
            log.exception("%r: login failed", self)
            self.fail(exc)

    async def _handshake(self) -> StartupMessage | None:
        """Answer encryption requests until the StartupMessage; None after a cancel."""
        while True:
            _, body = await self._recv()
            message = decode_startup(body)
            if isinstance(message, CancelRequest):  # already passed on (_startup_packets)
                self.close("cancel request")
                return None
            if isinstance(message, GSSENCRequest):
                self.send(SSL_DENIED)
            elif isinstance(message, SSLRequest):
                await self._start_tls()
            else:
                assert isinstance(message, StartupMessage)
                return message

    async def _start_tls(self) -> None:
        context = self.proxy.client_ssl
        assert self.transport is not None
        if context is None or self.tls:
            self.send(SSL_DENIED)
            self.transport.resume_reading()
            return
        self.send(SSL_ALLOWED)
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            self.transport, cast(asyncio.BaseProtocol, self), context, server_side=True
        )
        if transport is None:
            raise ConnectionResetError("TLS handshake failed")
        self._use_transport(transport)
        self.tls = True

    async def _authenticate(self, startup: StartupMessage) -> object:
        self.user = startup.user
        self.database = startup.database
        if self.rejected is not None:
            raise self.rejected
        if "replication" in startup.params:
            raise FeatureNotSupported("replication connections are not supported by pgrouter")
        settings = self.proxy.settings
        if settings.tls.client_mode == "require" and not self.tls:
            raise ClientProtocolViolation(
                "pgrouter requires TLS (tls.client_mode is require)",
                hint="connect with sslmode=require",
            )
        self.startup_params = startup_parameters(startup)
        self._startup_min_lsn = _startup_min_lsn(startup)
        self.application_name = self.startup_params.get("application_name", "")
        if self.database == ADMIN_DATABASE:
            if self.user not in settings.auth.admin_users:
                raise AuthorizationFailed(
                    f'user "{self.user}" is not an admin user',
                    hint="list the user under auth.admin_users to use the admin console",
                )
        elif self.database not in settings.databases:
            raise UnknownDatabase(self.database)
        secret = await self.proxy.user_secret(self.database, self.user)
        credentials = await authenticate(
            settings.auth.type, self.user, secret, self.send, self._recv
        )
        log.info(
            "login %s@%s from %s%s",
            self.user,
            self.database,
            self.peer,
            " (tls)" if self.tls else "",
        )
        return credentials

    async def _link(self, credentials: object) -> None:
        """Get a server in line with the client's parameters and send the welcome.

        In session mode the client keeps that server; in the other modes it goes back to
        the pool at once and the client gets one per transaction (or statement).
        """
        self.state = State.LINKING
        self.proxy.learn_credentials(self.user, credentials)
        director = self.proxy.directors[self.database]
        self.loads = director
        self.mode = self.proxy.settings.pool_for(self.database, self.user).mode
        if self.mode == "session":
            backend = director.writer().name
        else:
            backend = director.login_backend().name
            if self.proxy.routes_reads(self.database):
                self.director = director
        pool = self._pool_on(backend)
        self.pool = pool
        self.forwarder = Forwarder(self.mode != "session", self._pinned, pool.parsed)
        self.forwarder.min_lsn = self._startup_min_lsn
        # Statements are planned only where a replica could serve a read.
        database = self.proxy.settings.databases[self.database]
        if database.replicas:
            forwarder = self.forwarder
            self.planner = Planner(
                self.proxy.classifier, forwarder.statement_query, forwarder.query_text
            )
        self._track_writes = bool(database.replicas)
        self._capture_lsn = self._track_writes and database.capture_write_lsn
        self.reported, self._startup_applied = split_wanted(self.startup_params)
        self._reported_version += 1
        server = await self._acquire(pool)
        director.started(server.backend.name)
        self.key = self.proxy.register(self)
        welcome = [be.ParameterStatus(k, v).encode() for k, v in server.params.items()]
        welcome.append(be.BackendKeyData(*self.key).encode())
        welcome.append(be.ReadyForQuery(server.tx_status).encode())
        self.reported = dict(server.params)
        self._reported_version += 1
        if self.mode == "session":
            server.link(self)
        else:
            director.finished(server.backend.name)
            self.server = None
            pool.release(server, reusable=True, reset=False)
        self.send(b"".join(welcome))
        self.state = State.ACTIVE
        early = [item for item in self._inbox.drain() if item[0] != "startup"]
        self._inbox = _DONE  # login is over: nothing waits on the inbox any more
        self._login_task = None
        if early:
            self._forward([(tag, with_body(tag.encode(), body)) for tag, body in early])

    async def _acquire(self, pool: Pool) -> ServerConnection:
        """A server from ``pool``, holding this client's parameters."""
        self.waiting_since = time.monotonic()
        try:
            server = await pool.acquire()
        finally:
            self.waiting_since = None
        self.server = server  # from here on, _finish gives it back
        await self._sync(server)
        return server

    async def _sync(self, server: ServerConnection) -> None:
        """Bring ``server`` in line with this client's parameters."""
        key, reported, applied = self._wanted(server)
        if server.settings_key != key:
            sql = sync_query(reported, applied, server.params, server.applied)
            if sql is not None:
                result = await server.query(sql)
                if result.error is not None:
                    raise ServerError(result.error)
                server.applied = dict(applied)  # the server's own: ``applied`` is shared
            server.settings_key = key

    def _wanted(self, server: ServerConnection) -> Wanted:
        """(key, reported, applied): what this client needs a server to hold. The key is
        equal for clients with equal settings, so a server in line is not synced again.
        Reported parameters the client never set must be the server's defaults, not
        whatever a previous client left on the connection."""
        assert self.forwarder is not None
        tracked = self.forwarder.tracked_version
        cached = self._wanted_cache
        if (
            cached is not None
            and self._wanted_for[0] == self._reported_version
            and self._wanted_for[1] == tracked
            and self._wanted_for[2] == server.defaults_key
        ):
            return cached
        reported = {k: v for k, v in server.defaults.items() if k.lower() in REPORTED}
        reported.update((k, v) for k, v in self.reported.items() if k.lower() in REPORTED)
        tracked_sets = self.forwarder.tracked
        applied = (
            {**self._startup_applied, **tracked_sets} if tracked_sets else self._startup_applied
        )
        key = (tuple(sorted(reported.items())), tuple(sorted(applied.items())))
        wanted = _SHARED_WANTED.get(key)
        if wanted is None:
            if len(_SHARED_WANTED) > 10000:
                _SHARED_WANTED.clear()
            wanted = _SHARED_WANTED[key] = (key, reported, applied)
        self._wanted_cache = wanted
        self._wanted_for = (self._reported_version, tracked, server.defaults_key)
        return wanted

    def _pinned(self, reason: str) -> None:
        log.info("%r pinned to its server connection: %s", self, reason)

    @property
    def pin_reason(self) -> str | None:
        return None if self.forwarder is None else self.forwarder.pin_reason

    def _open_console(self) -> None:
        from router.admin import AdminConsole

        self.console = AdminConsole(self.proxy, self)
        self.key = self.proxy.register(self)
        welcome = [be.ParameterStatus(k, v).encode() for k, v in self.console.parameters()]
        welcome.append(be.BackendKeyData(*self.key).encode())
        welcome.append(be.ReadyForQuery("I").encode())
        self.send(b"".join(welcome))
        self.state = State.ACTIVE
        self._console_queue: asyncio.Queue[str] = asyncio.Queue()
        self._console_task = asyncio.get_running_loop().create_task(self._run_console())

    def _console_frames(self, frames: list[tuple[str, bytes]]) -> None:
        for tag, raw in frames:
            if tag == "X":
                self.close("client sent Terminate")
                return
            if tag != "Q":
                raise FeatureNotSupported(
                    "the admin console answers simple queries only",
                    hint="use psql, or a driver's simple query mode",
                )
            self._console_queue.put_nowait(fe.Query.decode(raw[5:]).sql)

    async def _run_console(self) -> None:
        assert self.console is not None
        while self.state is not State.CLOSED:
            sql = await self._console_queue.get()
            try:
                reply = await self.console.execute(sql)
            except Exception as exc:
                log.exception("admin command failed: %s", sql)
                self.fail(exc)
                return
            self.send(reply)

    # ---------------------------------------------------------------- active phase (see Dispatch)

    def send(self, data: bytes) -> None:
        if self._holding is not None and self._hold(data):
            return
        closing = self._closing  # called through a local: see ServerConnection.send
        if self.transport is not None and not closing():
            write = self._write
            write(data)
            if self.pool is not None:
                self.pool.stats.sent += len(data)

    def _use_transport(self, transport: asyncio.Transport) -> None:
        """Bind the transport's methods used per message once, not at every send."""
        self.transport = transport
        self._write = transport.write
        self._closing = transport.is_closing

    def _routing(self) -> bool:
        return self.director is not None

    def _pool_on(self, backend: str) -> Pool:
        pool = self._pools.get(backend)
        if pool is None or pool.retired:
            pool = self._pools[backend] = self.proxy.pool_on(self.database, self.user, backend)
        return pool

    def _route_now(self, unit: list[tuple[str, bytes]]) -> Decision | None:
        director = self.director
        assert director is not None
        if self._force_writer:
            return Decision(director.writer().name, "retry-on-writer")
        request, required = self._request(unit)
        if request.consistency == "strong" and request.target != "primary":
            return None
        return director.decide(request, required)

    async def _route(self, unit: list[tuple[str, bytes]]) -> Decision:
        director = self.director
        assert director is not None
        if self._force_writer:
            return Decision(director.writer().name, "retry-on-writer")
        request, required = self._request(unit)
        if request.consistency == "strong" and request.target != "primary":
            current = await self._writer_lsn()
            if current is None:
                return Decision(director.writer().name, "strong:writer-lsn-unknown", fallback=True)
            required = max(required or 0, current)
        return director.decide(request, required)

    async def _writer_lsn(self) -> int | None:
        """The writer's insert LSN now (for strong consistency), on a pooled connection."""
        pool = self._pool_on(self._writer_name())
        try:
            server = await self._acquire(pool)
        except ProxyError:
            return None
        self.server = None
        try:
            result = await server.query(CAPTURE_SQL)
        except ProxyError:
            return None
        pool.release(server, reusable=True, reset=False)
        value = result.rows[0][0] if result.rows else None
        return None if value is None else parse_lsn(value.decode())

    def _request(self, unit: list[tuple[str, bytes]]) -> tuple[RouteRequest, int | None]:
        director, planner, forwarder = self.director, self.planner, self.forwarder
        assert director is not None and planner is not None and forwarder is not None
        read_only = self.reported.get("default_transaction_read_only") == "on"
        # Behind a deferred BEGIN the unit is planned with it: a transaction (the writer)
        # unless it makes that transaction read-only (see router/deferred.py).
        planned = planner.plan(planned_unit(self._deferred, unit), read_only_session=read_only)
        if forwarder.route != "auto" and planned.hint is None:
            planned = replace(planned, hint=forwarder.route)
        session = Session(
            self.database,
            self.user,
            self.application_name,
            self.client_addr,
            forwarder.last_write_lsn,
            forwarder.min_lsn,
            forwarder.last_write_at,
        )
        request = director.request(self.proxy.policy, planned, session)
        return request, director.required_lsn(request, planned, session)

    def _command(self, frames: list[tuple[str, bytes]]) -> bytes | None:
        assert self.forwarder is not None
        return self.forwarder.command_reply(frames, self.tx_status)

    def server_parameter(self, name: str, value: str) -> None:
        if self.reported.get(name) != value:
            self.reported[name] = value
            self._reported_version += 1

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    # ---------------------------------------------------------------- ending

    def fail(self, exc: BaseException) -> None:
        """Send ``exc`` as an ErrorResponse and close the session."""
        if self.state is State.CLOSED:
            return
        response = error_response(exc)
        if not isinstance(exc, ProxyError) or isinstance(exc, TooManyClients):
            log.info("%r: %s", self, response.message)
        self.send(response.encode())
        self.close(f"{response.sqlstate} {response.message}")

    def close(self, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        self.close_reason = reason
        if self.transport is not None:
            self.transport.close()
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        was_active = self.state is State.ACTIVE
        self.state = State.CLOSED
        self._inbox.close()
        current = asyncio.current_task()
        for task in (self._login_task, self._attaching, getattr(self, "_console_task", None)):
            if task is not None and not task.done() and task is not current:
                task.cancel()
        server, self.server = self.server, None
        if server is not None and self.pool is not None:
            self.loads.finished(server.backend.name)
            clean = was_active and server.client is self and server.tracker.idle
            reset = self.mode == "session" or self.pin_reason is not None
            self.pool.release(server, reusable=clean and server.tx_status == "I", reset=reset)
        self.proxy.forget(self)
        log.info(
            "closed %s@%s from %s after %.1fs: %s",
            self.user or "?",
            self.database or "?",
            self.peer,
            time.time() - self.connected_at,
            reason,
        )


def _startup_min_lsn(startup: StartupMessage) -> int | None:
    """``options=-c pgrouter.min_lsn=...`` (or a ``pgrouter.min_lsn`` startup key)."""
    values = [v for k, v in startup.options() if k == "pgrouter.min_lsn"]
    if "pgrouter.min_lsn" in startup.params:
        values.append(startup.params["pgrouter.min_lsn"])
    try:
        return max(parse_lsn(v) for v in values) if values else None
    except InvalidLsn as exc:
        raise InvalidStartupLsn(str(exc)) from exc
