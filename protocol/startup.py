"""Untagged startup-phase packets: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.

Owns: decoding the packet bodies ``framing.StartupReader`` returns, encoding whole
packets, and parsing the ``options`` startup parameter the way PostgreSQL does.
Must not touch: framing, sockets, TLS, authentication, what the parameters mean to the
proxy (the router decides which ones it consumes and which it forwards).
"""

from __future__ import annotations

from dataclasses import dataclass
from struct import Struct
from typing import ClassVar

from protocol._wire import INT32, BodyReader, cstr
from protocol.errors import ProtocolError

SSL_ALLOWED = b"S"
SSL_DENIED = b"N"

PROTOCOL_3_0 = 196608  # (3 << 16) | 0
SSL_REQUEST_CODE = 80877103  # (1234 << 16) | 5679
GSSENC_REQUEST_CODE = 80877104  # (1234 << 16) | 5680
CANCEL_REQUEST_CODE = 80877102  # (1234 << 16) | 5678

_CANCEL = Struct("!iiii")
# C isspace() in the "C" locale, which is what pg_split_opts uses.
_OPTION_SPACE = frozenset(" \t\n\v\f\r")


class UnsupportedProtocol(ProtocolError):
    """A startup packet asking for a protocol other than 3.x."""

    def __init__(self, version: int) -> None:
        major, minor = version >> 16, version & 0xFFFF
        super().__init__(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
        )
        self.version = version


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """Protocol version and connection parameters (user, database, options, ...)."""

    params: dict[str, str]
    version: int = PROTOCOL_3_0

    @property
    def user(self) -> str:
        return self.params.get("user", "")

    @property
    def database(self) -> str:
        """The ``database`` parameter; like PostgreSQL, the user name when missing or empty."""
        return self.params.get("database") or self.user

    def options(self) -> list[tuple[str, str]]:
        """``(name, value)`` settings from the ``options`` parameter, in order.

        Accepts ``-c name=value``, ``-cname=value`` and ``--name=value``. Words are split on
        whitespace, a backslash makes the next character literal (``-c x=a\\ b`` gives
        ``('x', 'a b')``) and dashes in names become underscores, as in PostgreSQL.
        Other switches raise ``ProtocolError``.
        """
        args = iter(_split_options(self.params.get("options", "")))
        settings: list[tuple[str, str]] = []
        for arg in args:
            if arg.startswith("--"):
                setting = arg[2:]
            elif arg == "-c":
                setting = next(args, "")
                if not setting:
                    raise ProtocolError("option -c requires an argument (-c name=value)")
            elif arg.startswith("-c"):
                setting = arg[2:]
            else:
                raise ProtocolError(
                    f"unsupported startup option {arg!r}: use -c name=value or --name=value"
                )
            name, sep, value = setting.partition("=")
            if not name or not sep:
                raise ProtocolError(f"startup option {arg!r} requires a value: name=value")
            settings.append((name.replace("-", "_"), value))
        return settings

    def encode(self) -> bytes:
        body = b"".join(cstr(k) + cstr(v) for k, v in self.params.items()) + b"\x00"
        return INT32.pack(len(body) + 8) + INT32.pack(self.version) + body


@dataclass(frozen=True, slots=True)
class SSLRequest:
    CODE: ClassVar[int] = SSL_REQUEST_CODE

    def encode(self) -> bytes:
        return b"\x00\x00\x00\x08\x04\xd2\x16\x2f"


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    CODE: ClassVar[int] = GSSENC_REQUEST_CODE

    def encode(self) -> bytes:
        return b"\x00\x00\x00\x08\x04\xd2\x16\x30"


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Sent on a new connection to cancel the query running on ``pid``."""

    CODE: ClassVar[int] = CANCEL_REQUEST_CODE
    pid: int
    secret: int

    def encode(self) -> bytes:
        return _CANCEL.pack(16, CANCEL_REQUEST_CODE, self.pid, self.secret)


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def decode_startup(body: bytes) -> StartupPacket:
    """Decode a startup packet body (what follows its Int32 length)."""
    reader = BodyReader(body, "startup packet")
    code = reader.int32()
    if code == SSL_REQUEST_CODE:
        reader.finish()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        reader.finish()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        pid = reader.int32()
        secret = reader.int32()
        reader.finish()
        return CancelRequest(pid, secret)
    if code >> 16 != 3:
        raise UnsupportedProtocol(code)
    params = _decode_params(body)
    if not params.get("user"):
        raise ProtocolError("no PostgreSQL user name specified in startup packet")
    return StartupMessage(params, code)


def _decode_params(body: bytes) -> dict[str, str]:
    """Name/value pairs after the version, closed by an empty name which must end the body."""
    if not body.endswith(b"\x00"):
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
    reader = BodyReader(body, "startup packet")
    reader.int32()
    params: dict[str, str] = {}
    while name := reader.cstring():
        params[name] = reader.cstring()
    reader.finish()
    return params


def _split_options(text: str) -> list[str]:
    """Split ``options`` into words like PostgreSQL's pg_split_opts."""
    words: list[str] = []
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in _OPTION_SPACE:
            pos += 1
        if pos >= end:
            return words
        word: list[str] = []
        while pos < end and text[pos] not in _OPTION_SPACE:
            if text[pos] == "\\" and pos + 1 < end:
                pos += 1
            word.append(text[pos])
            pos += 1
        words.append("".join(word))
