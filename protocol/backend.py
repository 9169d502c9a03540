"""Messages a server sends (tagged), one class each, plus ``text_rows`` for result sets.

Owns: encoding and decoding the bodies of backend messages.
Must not touch: framing (framing.py), client-sent messages (frontend.py: 'D', 'S', 'E', 'C'
mean different things there), sockets, asyncio, routing.

Every class is a frozen dataclass with ``encode()`` (the whole frame) and ``decode(body)``
(the bytes after the 5-byte header); a malformed body raises ``ProtocolError``. Tag 'R'
is a family told apart by its Int32 code, kept in backend_auth.py and re-exported here;
``decode_backend`` dispatches on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from struct import Struct
from typing import ClassVar, Self

from protocol._wire import (
    INT32,
    UINT16,
    UINT32,
    BodyReader,
    cstr,
    frame,
    int16_list,
    value,
)
from protocol.backend_auth import (
    Authentication,
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationUnsupported,
    decode_auth,
)
from protocol.errors import ProtocolError

__all__ = [
    "Authentication",
    "AuthenticationCleartextPassword",
    "AuthenticationMD5Password",
    "AuthenticationOk",
    "AuthenticationSASL",
    "AuthenticationSASLContinue",
    "AuthenticationSASLFinal",
    "AuthenticationUnsupported",
    "BackendKeyData",
    "BackendMessage",
    "BindComplete",
    "CloseComplete",
    "CommandComplete",
    "CopyBothResponse",
    "CopyData",
    "CopyDone",
    "CopyInResponse",
    "CopyOutResponse",
    "DataRow",
    "EmptyQueryResponse",
    "ErrorResponse",
    "FieldDescription",
    "FunctionCallResponse",
    "NegotiateProtocolVersion",
    "NoData",
    "NoticeResponse",
    "NotificationResponse",
    "ParameterDescription",
    "ParameterStatus",
    "ParseComplete",
    "PortalSuspended",
    "ReadyForQuery",
    "RowDescription",
    "decode_backend",
    "text_rows",
]

# --- Session parameters and status ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    TAG: ClassVar[str] = "S"
    name: str
    value: str

    def encode(self) -> bytes:
        return frame(b"S", cstr(self.name) + cstr(self.value))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "ParameterStatus message")
        name = reader.cstring()
        val = reader.cstring()
        reader.finish()
        return cls(name, val)


_KEY = Struct("!ii")


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    """Cancel key. ``secret`` is a signed Int32 (protocol 3.0), as libpq reads it."""

    TAG: ClassVar[str] = "K"
    pid: int
    secret: int

    def encode(self) -> bytes:
        return frame(b"K", _KEY.pack(self.pid, self.secret))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        if len(body) != 8:
            raise ProtocolError(f"invalid BackendKeyData message: body of {len(body)} bytes, not 8")
        pid, secret = _KEY.unpack(body)
        return cls(pid, secret)


_STATUSES = ("I", "T", "E")


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    """``status``: 'I' idle, 'T' in a transaction block, 'E' in a failed transaction."""

    TAG: ClassVar[str] = "Z"
    status: str

    def encode(self) -> bytes:
        if self.status not in _STATUSES:
            raise ValueError(f"ReadyForQuery status must be I, T or E, not {self.status!r}")
        return frame(b"Z", self.status.encode("ascii"))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "ReadyForQuery message")
        status = reader.char()
        reader.finish()
        if status not in _STATUSES:
            raise reader.error(f"unknown transaction status {status!r}")
        return cls(status)


# --- Errors and notices ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _FieldsMessage:
    """ErrorResponse / NoticeResponse: (field code, value) pairs in the order received."""

    TAG: ClassVar[str]
    fields: tuple[tuple[str, str], ...]

    def get(self, code: str) -> str | None:
        for field_code, text in self.fields:
            if field_code == code:
                return text
        return None

    @property
    def severity(self) -> str:
        """Field 'S' (possibly localized); '' if absent."""
        return self.get("S") or ""

    @property
    def severity_nonlocalized(self) -> str:
        """Field 'V' (never localized, PostgreSQL 9.6+), else 'S'."""
        return self.get("V") or self.severity

    @property
    def sqlstate(self) -> str:
        return self.get("C") or ""

    @property
    def message(self) -> str:
        return self.get("M") or ""

    @property
    def detail(self) -> str | None:
        return self.get("D")

    @property
    def hint(self) -> str | None:
        return self.get("H")

    @classmethod
    def build(
        cls,
        severity: str,
        sqlstate: str,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
    ) -> Self:
        fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", message)]
        if detail is not None:
            fields.append(("D", detail))
        if hint is not None:
            fields.append(("H", hint))
        return cls(tuple(fields))

    def encode(self) -> bytes:
        parts = []
        for code, text in self.fields:
            if len(code) != 1 or code == "\x00":
                raise ValueError(f"field code must be one non-NUL character, not {code!r}")
            parts.append(code.encode("latin-1") + cstr(text))
        parts.append(b"\x00")
        return frame(self.TAG.encode("ascii"), b"".join(parts))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, f"{cls.__name__} message")
        fields: list[tuple[str, str]] = []
        while (code := reader.char()) != "\x00":
            fields.append((code, reader.cstring()))
        reader.finish()
        return cls(tuple(fields))


@dataclass(frozen=True, slots=True)
class ErrorResponse(_FieldsMessage):
    TAG: ClassVar[str] = "E"


@dataclass(frozen=True, slots=True)
class NoticeResponse(_FieldsMessage):
    TAG: ClassVar[str] = "N"


# --- Query results ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandComplete:
    """``tag`` is the command tag, e.g. 'SELECT 3', 'INSERT 0 1', 'COMMIT'."""

    TAG: ClassVar[str] = "C"
    tag: str

    def encode(self) -> bytes:
        return frame(b"C", cstr(self.tag))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "CommandComplete message")
        tag = reader.cstring()
        reader.finish()
        return cls(tag)


_FIELD = Struct("!IhIhih")


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One column of a RowDescription (defaults: a text column not from a table)."""

    name: str
    table_oid: int = 0
    column: int = 0
    type_oid: int = 25
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0

    def _encode(self) -> bytes:
        return cstr(self.name) + _FIELD.pack(
            self.table_oid,
            self.column,
            self.type_oid,
            self.type_size,
            self.type_modifier,
            self.format,
        )


@dataclass(frozen=True, slots=True)
class RowDescription:
    TAG: ClassVar[str] = "T"
    fields: tuple[FieldDescription, ...]

    def encode(self) -> bytes:
        body = UINT16.pack(len(self.fields)) + b"".join(f._encode() for f in self.fields)
        return frame(b"T", body)

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "RowDescription message")
        count = reader.uint16()
        fields = []
        for _ in range(count):
            name = reader.cstring()
            numbers = _FIELD.unpack(reader.take(_FIELD.size))
            fields.append(FieldDescription(name, *numbers))
        reader.finish()
        return cls(tuple(fields))


@dataclass(frozen=True, slots=True)
class DataRow:
    """One row; ``None`` is SQL NULL."""

    TAG: ClassVar[str] = "D"
    values: tuple[bytes | None, ...]

    def encode(self) -> bytes:
        body = UINT16.pack(len(self.values)) + b"".join(value(v) for v in self.values)
        return frame(b"D", body)

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "DataRow message")
        values = reader.values()
        reader.finish()
        return cls(values)


class _Empty:
    """Shared codec of the messages that have no body."""

    __slots__ = ()
    TAG: ClassVar[str]

    def encode(self) -> bytes:
        return frame(self.TAG.encode("ascii"), b"")

    @classmethod
    def decode(cls, body: bytes) -> Self:
        if body:
            raise ProtocolError(
                f"invalid {cls.__name__} message: {len(body)} unexpected trailing byte(s)"
            )
        return cls()


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(_Empty):
    TAG: ClassVar[str] = "I"


@dataclass(frozen=True, slots=True)
class ParseComplete(_Empty):
    TAG: ClassVar[str] = "1"


@dataclass(frozen=True, slots=True)
class BindComplete(_Empty):
    TAG: ClassVar[str] = "2"


@dataclass(frozen=True, slots=True)
class CloseComplete(_Empty):
    TAG: ClassVar[str] = "3"


@dataclass(frozen=True, slots=True)
class NoData(_Empty):
    TAG: ClassVar[str] = "n"


@dataclass(frozen=True, slots=True)
class PortalSuspended(_Empty):
    TAG: ClassVar[str] = "s"


@dataclass(frozen=True, slots=True)
class CopyDone(_Empty):
    """Server finished sending COPY TO STDOUT data (frontend.CopyDone is the other way)."""

    TAG: ClassVar[str] = "c"


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    TAG: ClassVar[str] = "t"
    type_oids: tuple[int, ...]

    def encode(self) -> bytes:
        oids = b"".join(UINT32.pack(oid) for oid in self.type_oids)
        return frame(b"t", UINT16.pack(len(self.type_oids)) + oids)

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "ParameterDescription message")
        oids = reader.uint32_list()
        reader.finish()
        return cls(oids)


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    """NOTIFY delivered to a listening session."""

    TAG: ClassVar[str] = "A"
    pid: int
    channel: str
    payload: str

    def encode(self) -> bytes:
        return frame(b"A", INT32.pack(self.pid) + cstr(self.channel) + cstr(self.payload))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "NotificationResponse message")
        pid = reader.int32()
        channel = reader.cstring()
        payload = reader.cstring()
        reader.finish()
        return cls(pid, channel, payload)


# --- COPY and function calls -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CopyResponse:
    """Start of a COPY: overall format (0 text, 1 binary) and per-column formats."""

    TAG: ClassVar[str]
    format: int
    column_formats: tuple[int, ...]

    def encode(self) -> bytes:
        body = bytes((self.format,)) + int16_list(self.column_formats)
        return frame(self.TAG.encode("ascii"), body)

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, f"{cls.__name__} message")
        fmt = reader.int8()
        column_formats = reader.int16_list()
        reader.finish()
        return cls(fmt, column_formats)


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    TAG: ClassVar[str] = "G"


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    TAG: ClassVar[str] = "H"


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    TAG: ClassVar[str] = "W"


@dataclass(frozen=True, slots=True)
class CopyData:
    """COPY TO STDOUT data sent by the server (frontend.CopyData is the other direction)."""

    TAG: ClassVar[str] = "d"
    data: bytes

    def encode(self) -> bytes:
        return frame(b"d", self.data)

    @classmethod
    def decode(cls, body: bytes) -> Self:
        return cls(bytes(body))


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    TAG: ClassVar[str] = "V"
    value: bytes | None

    def encode(self) -> bytes:
        return frame(b"V", value(self.value))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "FunctionCallResponse message")
        result = reader.value()
        reader.finish()
        return cls(result)


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    """The newest minor version the server supports and the options it did not recognize."""

    TAG: ClassVar[str] = "v"
    newest_minor: int
    unsupported: tuple[str, ...]

    def encode(self) -> bytes:
        names = b"".join(cstr(name) for name in self.unsupported)
        body = INT32.pack(self.newest_minor) + INT32.pack(len(self.unsupported)) + names
        return frame(b"v", body)

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, "NegotiateProtocolVersion message")
        newest_minor = reader.int32()
        count = reader.int32()
        if count < 0:
            raise reader.error(f"negative option count {count}")
        names: list[str] = []
        for _ in range(count):
            names.append(reader.cstring())
        reader.finish()
        return cls(newest_minor, tuple(names))


BackendMessage = (
    Authentication
    | ParameterStatus
    | BackendKeyData
    | ReadyForQuery
    | ErrorResponse
    | NoticeResponse
    | CommandComplete
    | EmptyQueryResponse
    | RowDescription
    | DataRow
    | ParseComplete
    | BindComplete
    | CloseComplete
    | NoData
    | PortalSuspended
    | ParameterDescription
    | NotificationResponse
    | CopyInResponse
    | CopyOutResponse
    | CopyBothResponse
    | CopyData
    | CopyDone
    | FunctionCallResponse
    | NegotiateProtocolVersion
)

_DECODERS: dict[str, type[BackendMessage]] = {
    cls.TAG: cls
    for cls in (
        ParameterStatus,
        BackendKeyData,
        ReadyForQuery,
        ErrorResponse,
        NoticeResponse,
        CommandComplete,
        EmptyQueryResponse,
        RowDescription,
        DataRow,
        ParseComplete,
        BindComplete,
        CloseComplete,
        NoData,
        PortalSuspended,
        ParameterDescription,
        NotificationResponse,
        CopyInResponse,
        CopyOutResponse,
        CopyBothResponse,
        CopyData,
        CopyDone,
        FunctionCallResponse,
        NegotiateProtocolVersion,
    )
}


def decode_backend(tag: str, body: bytes) -> BackendMessage:
    """Decode a server message by tag ('R' by its authentication code)."""
    if tag == "R":
        return decode_auth(body)
    cls = _DECODERS.get(tag)
    if cls is None:
        raise ProtocolError(f"unknown backend message type {tag!r}")
    return cls.decode(body)


def text_rows(columns: Sequence[str], rows: Iterable[Sequence[object]], tag: str) -> bytes:
    """RowDescription (all text columns) + one DataRow per row + CommandComplete(tag).

    ``None`` becomes NULL, anything else ``str(value)``. Used by the admin console.
    """
    width = len(columns)
    parts = [RowDescription(tuple(FieldDescription(name) for name in columns)).encode()]
    for row in rows:
        if len(row) != width:
            raise ValueError(f"row has {len(row)} values for {width} columns")
        cells = tuple(None if v is None else str(v).encode("utf-8", "surrogateescape") for v in row)
        parts.append(DataRow(cells).encode())
    parts.append(CommandComplete(tag).encode())
    return b"".join(parts)
