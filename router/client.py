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
each chunk from the client is split into frames and forwarded to the server; every Query,
Sync and FunctionCall is one outstanding request, and each ReadyForQuery from the server
settles one. A server connection goes back to its pool only when no request is
outstanding and no transaction is open; otherwise it is closed, never reused dirty.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from protocol import backend as be
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
from router.errors import (
    ClientProtocolViolation,
    FeatureNotSupported,
    LoginTimeout,
    ProxyError,
    ServerError,
    TooManyClients,
    UnknownDatabase,
    error_response,
)
from router.params import startup_parameters, sync_statement

if TYPE_CHECKING:
    from router.pool import Pool
    from router.proxy import Proxy
    from router.server import ServerConnection

log = logging.getLogger("pgrouter.client")


# Every message type a client may send once logged in ('p' answers a server's auth request).
FRONTEND_TAGS = frozenset("QPBDESHXCdcfFp")


class State(enum.Enum):
    STARTUP = "startup"
    LOGIN = "login"
    LINKING = "linking"
    ACTIVE = "active"
    CLOSED = "closed"


class ClientSession(asyncio.Protocol):
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.state = State.STARTUP
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.user = ""
        self.database = ""
        self.application_name = ""
        self.tls = False
        self.key: tuple[int, int] = (0, 0)
        self.connected_at = time.time()
        self.startup_params: dict[str, str] = {}
        self.reported: dict[str, str] = {}
        self.pool: Pool | None = None
        self.server: ServerConnection | None = None
        self.pending = 0  # requests sent to the server not yet answered by ReadyForQuery
        self.tx_status = "I"
        self.close_reason = ""
        self.rejected: ProxyError | None = None
        self._startup_reader: StartupReader | None = StartupReader()
        self._reader = FrameReader(proxy.settings.listen.max_message_size)
        self._inbox: deque[tuple[str, bytes]] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._login_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<client {self.key[0]} {self.user}@{self.database} from {self.peer}>"

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "unix")
        self.rejected = self.proxy.admit(self)
        self._login_task = asyncio.get_running_loop().create_task(self._login())

    def data_received(self, data: bytes) -> None:
        try:
            if self._startup_reader is not None:
                self._startup_packets(data)
            elif self.state is State.ACTIVE:
                self._forward(self._reader.feed_raw(data))
            else:
                self._push(self._reader.feed(data))
        except ProxyError as exc:
            self.fail(exc)
        except Exception as exc:  # a decoding error: the client's bytes are not a protocol
            self.fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is not State.CLOSED:
            self._finish(self.close_reason or ("connection reset" if exc else "client closed"))

    def pause_writing(self) -> None:
        if self.server is not None:
            self.server.pause_reading()

    def resume_writing(self) -> None:
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
            else:  # CancelRequest: nothing may follow
                return

    def _push(self, items: list[tuple[str, bytes]]) -> None:
        self._inbox.extend(items)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _recv(self) -> tuple[str, bytes]:
        while not self._inbox:
            if self.state is State.CLOSED:
                raise ConnectionResetError("client went away")
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup
        return self._inbox.popleft()

    async def _login(self) -> None:
        try:
            async with asyncio.timeout(self.proxy.settings.listen.client_login_timeout):
                startup = await self._handshake()
                if startup is None:
                    return
                credentials = await self._authenticate(startup)
            self.send(be.AuthenticationOk().encode())
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
            if isinstance(message, CancelRequest):
                await self.proxy.cancel(message.pid, message.secret)
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
        transport = await loop.start_tls(self.transport, self, context, server_side=True)
        if transport is None:
            raise ConnectionResetError("TLS handshake failed")
        self.transport = transport
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
        self.application_name = self.startup_params.get("application_name", "")
        if self.database not in settings.databases:
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
        self.state = State.LINKING
        pool = self.proxy.pool_for(self.database, self.user, credentials)
        server = await pool.acquire()
        self.pool, self.server = pool, server
        statement = sync_statement(self.startup_params, server.params)
        if statement is not None:
            result = await server.query(*statement)
            if result.error is not None:
                raise ServerError(result.error)
        server.link(self)
        self.key = self.proxy.register(self)
        welcome = [be.ParameterStatus(k, v).encode() for k, v in server.params.items()]
        welcome.append(be.BackendKeyData(*self.key).encode())
        welcome.append(be.ReadyForQuery(server.tx_status).encode())
        self.reported = dict(server.params)
        self.send(b"".join(welcome))
        self.state = State.ACTIVE
        early = [item for item in self._inbox if item[0] != "startup"]
        self._inbox.clear()
        if early:
            self._forward([(tag, _frame(tag, body)) for tag, body in early])

    # ---------------------------------------------------------------- active phase

    def _forward(self, frames: list[tuple[str, bytes]]) -> None:
        server = self.server
        if server is None:
            return
        out: list[bytes] = []
        for tag, raw in frames:
            if tag not in FRONTEND_TAGS:
                raise ClientProtocolViolation(f"unknown message type {tag!r}")
            if tag in "QSF":
                self.pending += 1
            elif tag == "X":
                if out:
                    server.send(b"".join(out))
                self.close("client sent Terminate")
                return
            out.append(raw)
        if out:
            server.send(out[0] if len(out) == 1 else b"".join(out))

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def server_ready(self, server: ServerConnection, status: str) -> None:
        if self.pending:
            self.pending -= 1
        self.tx_status = status

    def server_parameter(self, name: str, value: str) -> None:
        self.reported[name] = value

    def server_lost(self, server: ServerConnection, reason: str) -> None:
        self.server = None
        self.fail(
            ServerError(
                be.ErrorResponse.build(
                    "FATAL",
                    "08006",
                    f"server connection to {server.backend.label} was lost: {reason}",
                    hint="the server may have restarted; reconnect to get a new session",
                )
            )
        )

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
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        task = self._login_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        server, self.server = self.server, None
        if server is not None and self.pool is not None:
            clean = was_active and self.pending == 0 and server.tx_status == "I"
            self.pool.release(server, reusable=clean)
        self.proxy.forget(self)
        log.info(
            "closed %s@%s from %s after %.1fs: %s",
            self.user or "?",
            self.database or "?",
            self.peer,
            time.time() - self.connected_at,
            reason,
        )


def _frame(tag: str, body: bytes) -> bytes:
    return tag.encode("latin-1") + (len(body) + 4).to_bytes(4, "big") + body
