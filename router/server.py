"""Server connections: one TCP (or TLS) connection from the proxy to a PostgreSQL server.

Owns: connecting, TLS negotiation, authenticating as the pool's user, remembering the
server's ParameterStatus values and BackendKeyData, running the proxy's own statements
(reset query, parameter sync, auth_query) and relaying the server's bytes to the linked
client.
Must not touch: pool bookkeeping (pool.py decides reuse), client state (client.py).

Theory of operation. A connection moves through these modes:

    CONNECTING -> LOGIN -> READY <-> INTERNAL
                             \\-> CLOSED  (from any mode)

In LOGIN and INTERNAL every message is decoded whole (FrameReader) and handed to the
coroutine that waits for it. In READY the bytes are relayed: ``BackendScanner`` copies
out only ReadyForQuery, ParameterStatus and ErrorResponse, and the received chunk is
passed to the linked client untouched. The client is told of each ReadyForQuery, which
is what pooling decisions hang on.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol, cast

from protocol import backend as be
from protocol import frontend as fe
from protocol.framing import DEFAULT_MAX_MESSAGE_SIZE, TAGS, BackendScanner, FrameReader
from protocol.md5 import md5_response
from protocol.scram import SCRAM_SHA_256, ScramClient, ScramError
from protocol.startup import SSLRequest, StartupMessage
from router.backends import Backend, ServerCredentials
from router.errors import BackendUnavailable, ProxyError, ServerError
from router.inbox import Inbox
from router.prepared import ServerStatements
from router.tracker import TRACKED_TAGS, ResponseTracker

if TYPE_CHECKING:
    from router.config import TlsSettings

log = logging.getLogger("pgrouter.server")
# A Final alias: compiled code calls it without a module attribute lookup.
monotonic: Final = time.monotonic

# Relayed messages the proxy must read: ReadyForQuery, ParameterStatus, ErrorResponse;
# and the replies whose tags the response tracker follows (bodies not copied).
RELAY_INSPECT: Final = "ZSE"
RELAY_CAPTURE: Final = RELAY_INSPECT + "DV"  # while the proxy collects rows (or a function's
# result) of its own statement
RELAY_MARK: Final = "".join(t for t in TRACKED_TAGS if t not in RELAY_INSPECT)
DEFAULT_MAX_PREPARED: Final = 100


class Mode(enum.Enum):
    CONNECTING = "connecting"
    LOGIN = "login"
    READY = "ready"
    INTERNAL = "internal"
    CLOSED = "closed"


# The modes the relay tests per message, as constants: compiled code reads a Final
# module name directly, where ``Mode.READY`` is two dictionary lookups.
_READY: Final = Mode.READY
_CLOSED: Final = Mode.CLOSED


def nowhere(data: bytes) -> None:
    """Where writes go while a connection (server or client) has no transport."""


class Peer(Protocol):
    """What a server connection needs from the client it relays to."""

    def send(self, data: bytes) -> None: ...
    def server_ready(self, server: ServerConnection, status: str) -> None: ...
    def server_parameter(self, name: str, value: str) -> None: ...
    def server_lost(self, server: ServerConnection, reason: str) -> None: ...
    def server_event(self, server: ServerConnection, tag: str, body: bytes) -> bool: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    # The client's own transport is backed up (its pause_writing came, resume_writing not
    # yet): a server linked to it meanwhile must not read either.
    writing_paused: bool


class Owner(Protocol):
    """What a server connection tells its pool."""

    def server_closed(self, server: ServerConnection) -> None: ...


@dataclass
class QueryResult:
    """The outcome of a statement the proxy ran itself."""

    rows: list[tuple[bytes | None, ...]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    error: be.ErrorResponse | None = None


_next_id = 0


def _new_id() -> int:
    global _next_id
    _next_id += 1
    return _next_id


class ServerConnection:
    def __init__(
        self,
        backend: Backend,
        user: str,
        max_message_size: int,
        max_prepared: int = DEFAULT_MAX_PREPARED,
    ) -> None:
        self.id = _new_id()
        self.backend = backend
        self.user = user
        self.mode = Mode.CONNECTING
        self.transport: asyncio.Transport | None = None
        self._write: Callable[[bytes], object] = nowhere  # transport.write, bound once
        self.params: dict[str, str] = {}
        self.defaults: dict[str, str] = {}  # params right after login: what RESET gives
        self.defaults_key = 0
        self.pid = 0
        self.secret = 0
        self.tx_status = "I"
        self.tls = False
        self.created_at = monotonic()
        self.last_used = self.created_at
        self.generation = 0
        self.client: Peer | None = None
        self.owner: Owner | None = None
        self._max_message_size = max_message_size
        self._reader = FrameReader(max_message_size)
        self._scanner = self._new_scanner()
        self.tracker = ResponseTracker()
        self.statements = ServerStatements(max_prepared)
        # Non-reported parameters set on this connection: name -> how (see params.py).
        self.applied: dict[str, str] = {}
        # The client settings this connection was last brought in line with (see
        # ClientSession._acquire); None once anything may have changed them.
        self.settings_key: object = None
        self._held = b""  # a partial message held back while a reply may be swallowed
        self._for_client = b""  # replies kept while a ReadyForQuery is withheld (capture)
        self.watching = False  # report each reply to the client (a held replica read)
        # Flow control: reading paused because the linked client is backed up; writing
        # paused (the server is backed up), so the linked client is not read. A link
        # change carries both over: see link and unlink.
        self._reading_paused = False
        self._writing_paused = False
        self._inbox = Inbox()
        self._ssl_answer: asyncio.Future[bytes] | None = None
        self._lost_reason: str | None = None

    def __repr__(self) -> str:
        return f"<server {self.id} {self.backend.label} {self.mode.value}>"

    # ---------------------------------------------------------------- opening

    @classmethod
    async def open(
        cls,
        backend: Backend,
        credentials: ServerCredentials,
        *,
        tls: TlsSettings,
        ssl_context: ssl.SSLContext | None,
        timeout: float,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_prepared: int = DEFAULT_MAX_PREPARED,
    ) -> ServerConnection:
        """Connect and log in; raises BackendUnavailable or ServerError."""
        conn = cls(backend, credentials.user, max_message_size, max_prepared)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                try:
                    await loop.create_connection(
                        lambda: cast(asyncio.Protocol, conn), backend.host, backend.port
                    )
                except OSError as exc:
                    raise BackendUnavailable(
                        f"could not connect to {backend.label}: {exc.strerror or exc}",
                        lost=False,
                        hint="check that the server is running and accepting TCP connections",
                    ) from exc
                if ssl_context is not None:
                    await conn._negotiate_tls(tls.server_mode, ssl_context)
                await conn._login(credentials)
        except TimeoutError as exc:
            conn.close()
            raise BackendUnavailable(
                f"could not connect to {backend.label}: no answer within {timeout:g}s "
                "(server_connect_timeout)",
                lost=False,
            ) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    async def _negotiate_tls(self, mode: str, context: ssl.SSLContext) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._ssl_answer = loop.create_future()
        self.transport.write(SSLRequest().encode())
        answer = await self._ssl_answer
        self._ssl_answer = None
        if answer == b"S":
            transport = await loop.start_tls(
                self.transport,
                cast(asyncio.BaseProtocol, self),
                context,
                server_hostname=self.backend.host,
            )
            if transport is None:
                raise BackendUnavailable(f"TLS handshake with {self.backend.label} failed")
            self._use_transport(transport)
            self.tls = True
        elif mode in ("require", "verify-full"):
            raise BackendUnavailable(
                f"{self.backend.label} does not accept TLS but tls.server_mode is {mode}",
                lost=False,
            )

    async def _login(self, credentials: ServerCredentials) -> None:
        self.mode = Mode.LOGIN
        assert self.transport is not None
        startup = StartupMessage({"user": credentials.user, "database": self.backend.dbname})
        self.transport.write(startup.encode())
        scram: ScramClient | None = None
        while True:
            tag, body = await self._recv()
            if tag == "R":
                auth = be.decode_backend(tag, body)
                scram = self._answer_auth(auth, credentials, scram)
            elif tag == "S":
                ps = be.ParameterStatus.decode(body)
                self.params[ps.name] = ps.value
            elif tag == "K":
                key = be.BackendKeyData.decode(body)
                self.pid, self.secret = key.pid, key.secret
            elif tag == "Z":
                self.tx_status = be.ReadyForQuery.decode(body).status
                self.defaults = dict(self.params)
                self.defaults_key = hash(tuple(sorted(self.defaults.items())))
                self._enter_relay()
                return
            elif tag == "E":
                raise ServerError(be.ErrorResponse.decode(body))
            # NoticeResponse and NegotiateProtocolVersion during login need no answer.

    def _answer_auth(
        self, auth: be.BackendMessage, creds: ServerCredentials, scram: ScramClient | None
    ) -> ScramClient | None:
        assert self.transport is not None
        write = self.transport.write
        if isinstance(auth, be.AuthenticationOk):
            return None
        if isinstance(auth, be.AuthenticationCleartextPassword):
            write(fe.PasswordMessage(self._plaintext(creds, "password")).encode())
            return None
        if isinstance(auth, be.AuthenticationMD5Password):
            secret = creds.password if creds.password is not None else creds.md5_hash
            if secret is None:
                raise self._no_secret(creds, "md5")
            write(fe.PasswordMessage(md5_response(creds.user, secret, auth.salt)).encode())
            return None
        if isinstance(auth, be.AuthenticationSASL):
            if SCRAM_SHA_256 not in auth.mechanisms:
                raise BackendUnavailable(
                    f"{self.backend.label} offers no supported SASL mechanism "
                    f"({', '.join(auth.mechanisms)})"
                )
            if creds.password is not None:
                scram = ScramClient(password=creds.password)
            elif creds.scram_keys is not None:
                client_key, server_key = creds.scram_keys
                scram = ScramClient(client_key=client_key, server_key=server_key)
            else:
                raise self._no_secret(creds, "SCRAM-SHA-256")
            write(fe.SASLInitialResponse(SCRAM_SHA_256, scram.client_first()).encode())
            return scram
        if isinstance(auth, be.AuthenticationSASLContinue) and scram is not None:
            write(fe.SASLResponse(self._scram_step(scram.handle_server_first, auth.data)).encode())
            return scram
        if isinstance(auth, be.AuthenticationSASLFinal) and scram is not None:
            self._scram_step(scram.verify_server_final, auth.data)
            return None
        raise BackendUnavailable(
            f"{self.backend.label} asked for an authentication method pgrouter does not "
            f"support ({type(auth).__name__})"
        )

    def _scram_step(self, step: object, data: bytes) -> bytes:
        try:
            result = step(data)  # type: ignore[operator]
        except ScramError as exc:
            raise BackendUnavailable(
                f"SCRAM authentication with {self.backend.label} failed: {exc}"
            ) from exc
        return result if isinstance(result, bytes) else b""

    def _plaintext(self, creds: ServerCredentials, method: str) -> str:
        if creds.password is None:
            raise self._no_secret(creds, method)
        return creds.password

    def _no_secret(self, creds: ServerCredentials, method: str) -> BackendUnavailable:
        return BackendUnavailable(
            f'{self.backend.label} wants {method} authentication for user "{creds.user}" '
            "and pgrouter has no password for it",
            lost=False,
            hint="give the user a password in auth.users, or log in with SCRAM so "
            "pgrouter can pass the client's proof through",
        )

    async def _recv(self) -> tuple[str, bytes]:
        return await self._inbox.get(self._closed_error)

    def _closed_error(self) -> BackendUnavailable:
        reason = f": {self._lost_reason}" if self._lost_reason else ""
        return BackendUnavailable(f"{self.backend.label} closed the connection{reason}")

    def _new_scanner(self) -> BackendScanner:
        return BackendScanner(RELAY_INSPECT, self._max_message_size, mark=RELAY_MARK)

    def _enter_relay(self) -> None:
        self.mode = Mode.READY
        rest = self._reader.take_rest()
        self._scanner = self._new_scanner()
        if rest:
            self._relay(rest)

    # ---------------------------------------------------------------- statements run by the proxy

    async def query(self, sql: str, params: tuple[str | None, ...] | None = None) -> QueryResult:
        """Run one statement for the proxy itself; nothing reaches a client.

        With ``params`` the extended protocol is used, so values are never spliced into SQL.
        """
        if self.mode is not Mode.READY or self.client is not None:
            raise RuntimeError(f"{self!r} cannot run an internal query now")
        assert self.transport is not None
        self.mode = Mode.INTERNAL
        if params is None:
            self.transport.write(fe.Query(sql).encode())
        else:
            values = tuple(None if p is None else p.encode() for p in params)
            self.transport.write(
                fe.Parse("", sql).encode()
                + fe.Bind("", "", (), values, ()).encode()
                + fe.Execute("").encode()
                + fe.Sync().encode()
            )
        result = QueryResult()
        while True:
            tag, body = await self._recv()
            if tag == "D":
                result.rows.append(be.DataRow.decode(body).values)
            elif tag == "C":
                result.tags.append(be.CommandComplete.decode(body).tag)
            elif tag == "E":
                result.error = be.ErrorResponse.decode(body)
            elif tag == "S":
                ps = be.ParameterStatus.decode(body)
                self.params[ps.name] = ps.value
            elif tag == "Z":
                self.tx_status = be.ReadyForQuery.decode(body).status
                self.defaults = dict(self.params)
                self.defaults_key = hash(tuple(sorted(self.defaults.items())))
                self._enter_relay()
                return result

    # ---------------------------------------------------------------- relaying

    def link(self, client: Peer) -> None:
        self.client = client
        self._for_client = b""
        if client.writing_paused:
            self.pause_reading()
        if self._writing_paused:
            client.pause_reading()

    def unlink(self, now: float = 0.0) -> None:
        """Back to the pool (or to the proxy's own use): whatever flow control the last
        client imposed ends here, or an idle connection would never read again (its next
        client's answer, a notice, its closing) and that client would never be read.
        ``now``: the caller's monotonic clock reading, when it has one."""
        client, self.client = self.client, None
        self.watching = False
        self.last_used = now or monotonic()
        if self._reading_paused:
            self.resume_reading()
        if self._writing_paused and client is not None:
            client.resume_reading()

    def send(self, data: bytes) -> None:
        if self.mode is not _CLOSED:
            # Through a local: ``self._write(data)`` compiles to a method lookup by name.
            write = self._write  # nowhere while there is no transport
            write(data)

    def _relay(self, chunk: bytes) -> None:
        """Pass server bytes to the linked client, minus swallowed replies, plus
        synthetic ones, in order; tell the client of ReadyForQuery afterwards."""
        tracker = self.tracker
        scanner = self._scanner
        scanner.set_inspect(RELAY_CAPTURE if tracker.captures else RELAY_INSPECT)
        events = scanner.feed(chunk)
        shift = len(self._held)
        if shift:
            chunk = self._held + chunk
            self._held = b""
        client = self.client
        pieces: list[bytes] | None = None  # None while the chunk passes through whole
        pos = 0
        ready = False
        for tag, body, start, end in events:
            code = ord(tag)  # compared as a character code (see ResponseTracker.received)
            if code == ord("Z"):
                self.tx_status = TAGS[body[0]]
                ready = True
            elif code == ord("S"):
                ps = be.ParameterStatus.decode(body)
                self.params[ps.name] = ps.value
                self.settings_key = None
                if client is not None:
                    client.server_parameter(ps.name, ps.value)
            elif code == ord("E") and client is None:
                err = be.ErrorResponse.decode(body)
                self._lost_reason = f"{err.sqlstate} {err.message}"
                log.info("%r: idle server sent %s", self, self._lost_reason)
            if self.watching and client is not None:
                self.watching = client.server_event(self, tag, body)
            forward, due = tracker.received(tag, body)
            if forward and not due:
                continue
            if pieces is None:
                pieces = []
            end += shift
            if not forward:
                pieces.append(chunk[pos : start + shift])
                pos = end
            if due:
                pieces.append(chunk[pos:end])
                pieces.append(due)
                pos = end
        cut = len(chunk)
        if tracker.swallows and not scanner.at_boundary():
            # A message still arriving may have to be dropped: hold it back whole.
            cut = max(pos, scanner.boundary + shift if scanner.boundary >= 0 else pos)
            self._held = chunk[cut:]
        if pieces is None and cut == len(chunk):
            data = chunk
        else:
            pieces = pieces or []
            pieces.append(chunk[pos:cut])
            data = b"".join(pieces)
        if client is None:
            return
        if tracker.holding_ready:
            # The client can do nothing before the withheld ReadyForQuery: send what
            # precedes it together with it, in one write (and one wakeup of the client).
            self._for_client += data
            return
        if self._for_client:
            data, self._for_client = self._for_client + data, b""
        if data:
            client.send(data)
        if ready:
            client.server_ready(self, self.tx_status)

    # ---------------------------------------------------------------- the protocol callbacks
    # (asyncio.Protocol's, without inheriting from it: see ClientSession)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport instances; same interface.
        self._use_transport(cast(asyncio.Transport, transport))

    def _use_transport(self, transport: asyncio.Transport) -> None:
        """Bind the transport's write once, not at every send (see ClientSession)."""
        self.transport = transport
        self._write = transport.write

    def data_received(self, data: bytes) -> None:
        try:
            if self.mode is _READY:
                self._relay(data)
                return
            if self._ssl_answer is not None and not self._ssl_answer.done():
                self._ssl_answer.set_result(data[:1])
                if len(data) > 1:  # bytes after the answer before the handshake: refuse
                    self._fail("unexpected data after the TLS answer")
                return
            self._inbox.push(self._reader.feed(data))
        except ProxyError as exc:
            self._fail(exc.message)
        except Exception as exc:
            log.warning("%r: bad data from server: %s", self, exc)
            self._fail(f"invalid data from server: {exc}")

    def _fail(self, reason: str) -> None:
        self._lost_reason = reason
        self.close()

    def eof_received(self) -> None:
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._lost_reason is None:
            self._lost_reason = str(exc) or type(exc).__name__
        was = self.mode
        self.mode = Mode.CLOSED
        self.transport = None
        self._write = nowhere
        self._inbox.close()
        if self._ssl_answer is not None and not self._ssl_answer.done():
            self._ssl_answer.set_exception(
                BackendUnavailable(f"{self.backend.label} closed the connection during TLS setup")
            )
        client, self.client = self.client, None
        if client is not None and was is not Mode.CLOSED:
            client.server_lost(self, self._lost_reason or "connection closed by the server")
        if self.owner is not None:
            self.owner.server_closed(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.client is not None:
            self.client.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.client is not None:
            self.client.resume_reading()

    def pause_reading(self) -> None:
        self._reading_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        if self.transport is not None:
            self.transport.resume_reading()

    # ---------------------------------------------------------------- closing

    @property
    def closed(self) -> bool:
        return self.mode is _CLOSED

    def close(self) -> None:
        """Send Terminate and close; connection_lost follows."""
        transport = self.transport
        if transport is None or transport.is_closing():
            if transport is None and self.mode is not Mode.CLOSED:
                self.connection_lost(None)
            return
        if self.mode in (Mode.READY, Mode.INTERNAL):
            transport.write(fe.Terminate().encode())
        transport.close()
