"""Messages a client sends after startup (tagged), one class each.

Owns: encoding and decoding the bodies of frontend messages.
Must not touch: framing (framing.py), server-sent messages (backend.py: 'D', 'S', 'E', 'C'
mean different things there), sockets, asyncio, routing.

Every class is a frozen dataclass with ``encode()`` (the whole frame: tag, Int32 length,
body) and ``decode(body)`` (the bytes after the 5-byte header). A malformed body raises
``ProtocolError``. The password family (tag 'p') is ambiguous on the wire: which of
``PasswordMessage``, ``SASLInitialResponse`` and ``SASLResponse`` it is depends on the
authentication request the server sent, so the caller decodes it with the right class and
``decode_frontend`` refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from protocol._wire import (
    INT16,
    INT32,
    UINT16,
    UINT32,
    BodyReader,
    cstr,
    frame,
    int16_list,
    value,
)
from protocol.errors import ProtocolError

_KINDS = ("S", "P")


def _kind(reader: BodyReader) -> str:
    kind = reader.char()
    if kind not in _KINDS:
        raise reader.error(f"kind must be 'S' (statement) or 'P' (portal), not {kind!r}")
    return kind


def _check_kind(kind: str) -> bytes:
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'S' or 'P', not {kind!r}")
    return kind.encode("ascii")


@dataclass(frozen=True, slots=True)
class Query:
    """Simple query: one or more SQL statements."""

    TAG: ClassVar[str] = "Q"
    sql: str

    def encode(self) -> bytes:
        return frame(b"Q", cstr(self.sql))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "Query message")
        sql = reader.cstring()
        reader.finish()
        return cls(sql)


@dataclass(frozen=True, slots=True)
class Parse:
    """Extended protocol: prepare ``query`` as statement ``name`` ('' is the unnamed one)."""

    TAG: ClassVar[str] = "P"
    name: str
    query: str
    param_types: tuple[int, ...] = ()

    def encode(self) -> bytes:
        types = b"".join(UINT32.pack(oid) for oid in self.param_types)
        count = UINT16.pack(len(self.param_types))
        return frame(b"P", cstr(self.name) + cstr(self.query) + count + types)

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "Parse message")
        name = reader.cstring()
        query = reader.cstring()
        types = reader.uint32_list()
        reader.finish()
        return cls(name, query, types)


@dataclass(frozen=True, slots=True)
class Bind:
    """Extended protocol: bind ``params`` to ``statement``, creating ``portal``."""

    TAG: ClassVar[str] = "B"
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]

    def encode(self) -> bytes:
        parts = [
            cstr(self.portal),
            cstr(self.statement),
            int16_list(self.param_formats),
            UINT16.pack(len(self.params)),
            *(value(p) for p in self.params),
            int16_list(self.result_formats),
        ]
        return frame(b"B", b"".join(parts))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "Bind message")
        portal = reader.cstring()
        statement = reader.cstring()
        param_formats = reader.int16_list()
        params = reader.values()
        result_formats = reader.int16_list()
        reader.finish()
        return cls(portal, statement, param_formats, params, result_formats)


@dataclass(frozen=True, slots=True)
class Describe:
    """Extended protocol: describe a statement ('S') or a portal ('P')."""

    TAG: ClassVar[str] = "D"
    kind: str
    name: str

    def encode(self) -> bytes:
        return frame(b"D", _check_kind(self.kind) + cstr(self.name))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "Describe message")
        kind = _kind(reader)
        name = reader.cstring()
        reader.finish()
        return cls(kind, name)


@dataclass(frozen=True, slots=True)
class Execute:
    """Extended protocol: run ``portal``; ``max_rows`` 0 means all rows."""

    TAG: ClassVar[str] = "E"
    portal: str
    max_rows: int = 0

    def encode(self) -> bytes:
        return frame(b"E", cstr(self.portal) + INT32.pack(self.max_rows))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "Execute message")
        portal = reader.cstring()
        max_rows = reader.int32()
        reader.finish()
        return cls(portal, max_rows)


@dataclass(frozen=True, slots=True)
class Close:
    """Extended protocol: close a statement ('S') or a portal ('P')."""

    TAG: ClassVar[str] = "C"
    kind: str
    name: str

    def encode(self) -> bytes:
        return frame(b"C", _check_kind(self.kind) + cstr(self.name))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "Close message")
        kind = _kind(reader)
        name = reader.cstring()
        reader.finish()
        return cls(kind, name)


class _Empty:
    """Shared codec of the messages that have no body."""

    __slots__ = ()
    TAG: ClassVar[str]
    _FRAME: ClassVar[bytes]

    def encode(self) -> bytes:
        return self._FRAME

    @classmethod
    def decode(cls, body: bytes) -> Self:
        if body:
            raise ProtocolError(
                f"invalid {cls.__name__} message: {len(body)} unexpected trailing byte(s)"
            )
        return cls()


@dataclass(frozen=True, slots=True)
class Sync(_Empty):
    TAG: ClassVar[str] = "S"
    _FRAME: ClassVar[bytes] = b"S\x00\x00\x00\x04"


@dataclass(frozen=True, slots=True)
class Flush(_Empty):
    TAG: ClassVar[str] = "H"
    _FRAME: ClassVar[bytes] = b"H\x00\x00\x00\x04"


@dataclass(frozen=True, slots=True)
class Terminate(_Empty):
    TAG: ClassVar[str] = "X"
    _FRAME: ClassVar[bytes] = b"X\x00\x00\x00\x04"


@dataclass(frozen=True, slots=True)
class CopyDone(_Empty):
    """Client finished sending COPY FROM STDIN data."""

    TAG: ClassVar[str] = "c"
    _FRAME: ClassVar[bytes] = b"c\x00\x00\x00\x04"


@dataclass(frozen=True, slots=True)
class CopyData:
    """COPY FROM STDIN data sent by the client (backend.CopyData is the other direction)."""

    TAG: ClassVar[str] = "d"
    data: bytes

    def encode(self) -> bytes:
        return frame(b"d", self.data)

    @classmethod
    def decode(cls, body: bytes) -> Self:
        return cls(bytes(body))


@dataclass(frozen=True, slots=True)
class CopyFail:
    """Client aborts COPY FROM STDIN with an error message."""

    TAG: ClassVar[str] = "f"
    message: str

    def encode(self) -> bytes:
        return frame(b"f", cstr(self.message))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "CopyFail message")
        message = reader.cstring()
        reader.finish()
        return cls(message)


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """Legacy fast-path function call by OID."""

    TAG: ClassVar[str] = "F"
    oid: int
    arg_formats: tuple[int, ...]
    args: tuple[bytes | None, ...]
    result_format: int

    def encode(self) -> bytes:
        parts = [
            UINT32.pack(self.oid),
            int16_list(self.arg_formats),
            UINT16.pack(len(self.args)),
            *(value(a) for a in self.args),
            INT16.pack(self.result_format),
        ]
        return frame(b"F", b"".join(parts))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "FunctionCall message")
        oid = reader.uint32()
        arg_formats = reader.int16_list()
        args = reader.values()
        result_format = reader.int16()
        reader.finish()
        return cls(oid, arg_formats, args, result_format)


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """Tag 'p' answering AuthenticationCleartextPassword or AuthenticationMD5Password."""

    TAG: ClassVar[str] = "p"
    password: str

    def encode(self) -> bytes:
        return frame(b"p", cstr(self.password))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "PasswordMessage message")
        password = reader.cstring()
        reader.finish()
        return cls(password)


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    """Tag 'p' answering AuthenticationSASL: chosen mechanism and client-first-message."""

    TAG: ClassVar[str] = "p"
    mechanism: str
    data: bytes | None

    def encode(self) -> bytes:
        return frame(b"p", cstr(self.mechanism) + value(self.data))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "SASLInitialResponse message")
        mechanism = reader.cstring()
        data = reader.value()
        reader.finish()
        return cls(mechanism, data)


@dataclass(frozen=True, slots=True)
class SASLResponse:
    """Tag 'p' answering AuthenticationSASLContinue: mechanism-specific data."""

    TAG: ClassVar[str] = "p"
    data: bytes

    def encode(self) -> bytes:
        return frame(b"p", self.data)

    @classmethod
    def decode(cls, body: bytes) -> Self:
        return cls(bytes(body))


FrontendMessage = (
    Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Close
    | Sync
    | Flush
    | Terminate
    | CopyData
    | CopyDone
    | CopyFail
    | FunctionCall
    | PasswordMessage
    | SASLInitialResponse
    | SASLResponse
)

_DECODERS: dict[str, type[FrontendMessage]] = {
    cls.TAG: cls
    for cls in (
        Query,
        Parse,
        Bind,
        Describe,
        Execute,
        Close,
        Sync,
        Flush,
        Terminate,
        CopyData,
        CopyDone,
        CopyFail,
        FunctionCall,
    )
}


def decode_frontend(tag: str, body: bytes) -> FrontendMessage:
    """Decode a client message by tag. 'p' needs context: use the password classes directly."""
    cls = _DECODERS.get(tag)
    if cls is None:
        if tag == "p":
            raise ProtocolError(
                "message type 'p' depends on the authentication exchange; decode it with "
                "PasswordMessage, SASLInitialResponse or SASLResponse"
            )
        raise ProtocolError(f"unknown frontend message type {tag!r}")
    return cls.decode(body)
