"""Primitive field codecs shared by frontend.py, backend.py and startup.py.

Owns: reading and writing the protocol's primitive types (Int8/16/32, NUL-terminated
strings, length-prefixed values) and turning every malformed body into ``ProtocolError``.
Must not touch: message semantics, framing of streams (framing.py), sockets, asyncio.

Strings are UTF-8 with ``errors="surrogateescape"``, so any byte string round-trips
through ``str``. Counts written as Int16 are read unsigned, as PostgreSQL's server reads
them (``pq_getmsgint(msg, 2)``), so a Bind with up to 65535 parameters passes.
"""

from __future__ import annotations

from struct import Struct
from typing import Final

from protocol.errors import ProtocolError

ENCODING: Final = "utf-8"
ERRORS: Final = "surrogateescape"

INT16: Final = Struct("!h")
UINT16: Final = Struct("!H")
INT32: Final = Struct("!i")
UINT32: Final = Struct("!I")
_HEADER: Final = Struct("!ci")


def frame(tag: bytes, body: bytes) -> bytes:
    """A whole tagged message: tag, Int32 length (itself included), body."""
    return _HEADER.pack(tag, len(body) + 4) + body


def cstr(text: str) -> bytes:
    """A NUL-terminated string. A NUL inside would corrupt the framing, so it is refused."""
    data = text.encode(ENCODING, ERRORS)
    if data.find(b"\x00") >= 0:  # not ``in``, which tries the argument as an int first
        raise ValueError(f"string {text!r} contains a NUL byte")
    return data + b"\x00"


def value(data: bytes | None) -> bytes:
    """An Int32 length (-1 for NULL) followed by the bytes."""
    if data is None:
        return b"\xff\xff\xff\xff"
    return INT32.pack(len(data)) + data


def int16_list(values: tuple[int, ...]) -> bytes:
    """An Int16 count followed by that many Int16 values."""
    return UINT16.pack(len(values)) + b"".join(INT16.pack(v) for v in values)


class BodyReader:
    """Consumes one message body front to back; every short read is a ``ProtocolError``."""

    __slots__ = ("_body", "_pos", "_what")

    def __init__(self, body: bytes, what: str) -> None:
        self._body = body
        self._pos = 0
        self._what = what

    def error(self, problem: str) -> ProtocolError:
        return ProtocolError(f"invalid {self._what}: {problem}")

    def _need(self, size: int, field: str) -> int:
        pos = self._pos
        if len(self._body) - pos < size:
            raise self.error(f"truncated {field}")
        self._pos = pos + size
        return pos

    def int8(self) -> int:
        return self._body[self._need(1, "Int8")]

    def char(self) -> str:
        return chr(self._body[self._need(1, "Byte1")])

    def int16(self) -> int:
        return int(INT16.unpack_from(self._body, self._need(2, "Int16"))[0])

    def uint16(self) -> int:
        return int(UINT16.unpack_from(self._body, self._need(2, "Int16"))[0])

    def int32(self) -> int:
        return int(INT32.unpack_from(self._body, self._need(4, "Int32"))[0])

    def uint32(self) -> int:
        return int(UINT32.unpack_from(self._body, self._need(4, "Int32"))[0])

    def take(self, size: int) -> bytes:
        pos = self._need(size, f"{size}-byte field")
        return self._body[pos : pos + size]

    def rest(self) -> bytes:
        data = self._body[self._pos :]
        self._pos = len(self._body)
        return data

    def cstring(self) -> str:
        pos = self._pos
        end = self._body.find(b"\x00", pos)
        if end < 0:
            raise self.error("string is missing its NUL terminator")
        self._pos = end + 1
        return self._body[pos:end].decode(ENCODING, ERRORS)

    def value(self) -> bytes | None:
        """An Int32 length (-1 for NULL) followed by that many bytes."""
        length = self.int32()
        if length == -1:
            return None
        if length < 0:
            raise self.error(f"negative value length {length}")
        return self.take(length)

    def int16_list(self) -> tuple[int, ...]:
        count = self.uint16()
        pos = self._need(2 * count, f"list of {count} Int16")
        return Struct(f"!{count}h").unpack_from(self._body, pos)

    def uint32_list(self) -> tuple[int, ...]:
        count = self.uint16()
        pos = self._need(4 * count, f"list of {count} Int32")
        return Struct(f"!{count}I").unpack_from(self._body, pos)

    def values(self) -> tuple[bytes | None, ...]:
        count = self.uint16()
        return tuple([self.value() for _ in range(count)])

    def finish(self) -> None:
        extra = len(self._body) - self._pos
        if extra:
            raise self.error(f"{extra} unexpected trailing byte(s)")
