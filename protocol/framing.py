"""Message framing: splitting a byte stream into PostgreSQL v3 messages.

Owns: finding message boundaries, enforcing the per-message size limit.
Must not touch: sockets, asyncio, message semantics (frontend.py / backend.py decode bodies).

Three readers, one per kind of stream:

- ``StartupReader``: the untagged packets a client sends first (StartupMessage,
  SSLRequest, GSSENCRequest, CancelRequest): ``int32 length`` then the body.
- ``FrameReader``: tagged messages (``byte tag, int32 length, body``), returned whole.
  Used for client traffic, which the proxy inspects message by message, and for the
  login phase of server connections.
- ``BackendScanner``: tagged messages relayed from a server to a client. Only the tags
  it is told to inspect are copied out; the bodies of everything else (DataRow,
  RowDescription, CopyData...) are skipped by length without copying, so the caller can
  forward the received chunk untouched.

All three accept data in arbitrary pieces, one byte at a time included.
"""

from __future__ import annotations

from struct import Struct
from typing import Final

from protocol.errors import MessageTooLarge, ProtocolError

_INT32: Final = Struct("!i")
_HEADER: Final = Struct("!ci")

DEFAULT_MAX_MESSAGE_SIZE: Final = 256 * 1024 * 1024
# Message tags as one-character strings, by byte: compiled code indexes a tuple where a
# call of chr() is a look-up in builtins every time.
TAGS: Final = tuple(chr(byte) for byte in range(256))
# A startup packet carries a handful of parameters; PostgreSQL itself caps it at 10000.
MAX_STARTUP_PACKET: Final = 10000


# Codes of the packets after which the client may send another untagged packet.
_ENCRYPTION_REQUESTS: Final = frozenset((80877103, 80877104))  # SSLRequest, GSSENCRequest


class StartupReader:
    """Reads untagged startup-phase packets. Returns each packet's body (without length).

    Any packet other than an SSLRequest / GSSENCRequest (a StartupMessage, a
    CancelRequest) ends the untagged phase: the reader then returns no more packets and
    keeps whatever follows (tagged messages) for ``take_rest``.
    """

    __slots__ = ("_buf", "done")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        packets: list[bytes] = []
        while not self.done and len(self._buf) >= 4:
            (length,) = _INT32.unpack_from(self._buf, 0)
            if length < 8 or length > MAX_STARTUP_PACKET:
                raise ProtocolError(f"invalid startup packet length {length}")
            if len(self._buf) < length:
                break
            (code,) = _INT32.unpack_from(self._buf, 4)
            self.done = code not in _ENCRYPTION_REQUESTS
            packets.append(bytes(self._buf[4:length]))
            del self._buf[:length]
        return packets

    def take_rest(self) -> bytes:
        """Bytes received after the last whole packet (e.g. pipelined after a startup)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


def int32_at(data: bytes, pos: int) -> int:
    """The signed big-endian Int32 at ``data[pos:pos + 4]`` (the caller checked the length).
    Indexing, not ``Struct.unpack_from``: compiled, it is a few machine operations."""
    value = (data[pos] << 24) | (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]
    return value - 0x100000000 if value & 0x80000000 else value


class FrameReader:
    """Reads tagged messages whole. Returns ``(tag, body)`` pairs; ``tag`` is one ASCII char."""

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        """Whole messages as ``(tag, body)``."""
        return self._take(data, 5)

    def feed_raw(self, data: bytes) -> list[tuple[str, bytes]]:
        """Whole messages as ``(tag, frame)``: the frame keeps its tag and length."""
        return self._take(data, 0)

    def _take(self, data: bytes, skip: int) -> list[tuple[str, bytes]]:
        buf = self._buf
        if buf:  # a message began in an earlier chunk
            buf += data
            data = bytes(buf)
            buf.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        frames: list[tuple[str, bytes]] = []
        pos = 0
        end = len(data)
        while end - pos >= 5:
            length = int32_at(data, pos + 1)
            if length < 4 or length > self.max_size:
                self._bad_length(data[pos], length)
            stop = pos + 1 + length
            if stop > end:
                break
            # A frame that is the whole chunk is the chunk itself: no copy.
            frames.append((TAGS[data[pos]], data[pos + skip : stop]))
            pos = stop
        if pos < end:
            buf += data[pos:]
        return frames

    def _bad_length(self, tag: int, length: int) -> None:
        if length < 4:
            raise ProtocolError(f"invalid length {length} for message {chr(tag)!r}")
        raise MessageTooLarge(chr(tag), length, self.max_size)

    def pending(self) -> int:
        """Bytes held that do not yet form a whole message."""
        return len(self._buf)

    def take_rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


_INSPECT: Final = 1
_MARK: Final = 2


def _kinds(inspect: frozenset[int], mark: frozenset[int]) -> bytes:
    """A table by tag byte: _INSPECT, _MARK or 0 (indexing bytes is cheaper than a set)."""
    return bytes(_INSPECT if t in inspect else _MARK if t in mark else 0 for t in range(256))


class BackendScanner:
    """Walks server-to-client traffic, copying out only the messages it must inspect.

    ``feed(chunk)`` returns ``(tag, body, start, end)`` for each message of an ``inspect``
    or ``mark`` type that completes in ``chunk``; ``start`` and ``end`` are its offsets in
    ``chunk`` (``start`` is negative when the message began in an earlier chunk), so a
    caller can split the chunk at message boundaries. Inspected
    messages come with their body; marked ones with ``b""`` (their bodies, like those of
    all other messages, are skipped by count and never copied). After each ``feed``,
    ``boundary`` is the offset just past the last message that completed in the chunk
    (-1 if none did).
    """

    __slots__ = (
        "_body",
        "_fed",
        "_header",
        "_inspect",
        "_inspect_text",
        "_kinds",
        "_mark",
        "_marked",
        "_need",
        "_skip",
        "_start_at",
        "_tag",
        "boundary",
        "max_size",
    )

    def __init__(
        self, inspect: str, max_size: int = DEFAULT_MAX_MESSAGE_SIZE, mark: str = ""
    ) -> None:
        self._inspect_text = inspect
        self._inspect = frozenset(inspect.encode("ascii"))
        self._mark = frozenset(mark.encode("ascii"))
        self._kinds = _kinds(self._inspect, self._mark)
        self.max_size = max_size
        self._skip = 0  # bytes of an uninspected body still to pass over
        self._need = 0  # bytes of an inspected body still to collect
        self._tag = 0
        self._marked = False
        self._start_at = 0  # stream offset where the current message began
        self._fed = 0  # bytes fed so far
        self._body = bytearray()
        self._header = bytearray()  # a header split across chunks
        self.boundary = -1

    def at_boundary(self) -> bool:
        """True when the bytes fed so far end exactly at a message boundary."""
        return not (self._skip or self._need or self._header)

    def set_inspect(self, inspect: str) -> None:
        """Change the inspected types; takes effect from the next message header."""
        if inspect != self._inspect_text:  # called per chunk, almost always unchanged
            self._inspect_text = inspect
            self._inspect = frozenset(inspect.encode("ascii"))
            self._kinds = _kinds(self._inspect, self._mark)

    def feed(self, chunk: bytes) -> list[tuple[str, bytes, int, int]]:
        out: list[tuple[str, bytes, int, int]] = []
        pos = 0
        end = len(chunk)
        boundary = -1
        inspect = self._inspect
        mark = self._mark
        kinds = self._kinds
        base = self._fed  # stream offset of chunk[0]
        self._fed += end
        if not (self._skip or self._need or self._header):
            # The chunk starts at a message boundary (the usual case): walk its whole
            # messages in one tight loop; the general loop below takes any partial one.
            max_size = self.max_size
            while end - pos >= 5:
                length = int32_at(chunk, pos + 1)
                stop = pos + 1 + length
                if stop > end or length < 4 or length > max_size:
                    break
                tag = chunk[pos]
                kind = kinds[tag]
                if kind == _INSPECT:
                    out.append((TAGS[tag], chunk[pos + 5 : stop], pos, stop))
                elif kind == _MARK:
                    out.append((TAGS[tag], b"", pos, stop))
                pos = boundary = stop
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                if not self._skip:
                    boundary = pos
                    if self._marked:
                        out.append((TAGS[self._tag], b"", self._start_at - base, pos))
                continue
            if self._need:
                step = min(self._need, end - pos)
                self._body += chunk[pos : pos + step]
                self._need -= step
                pos += step
                if not self._need:
                    boundary = pos
                    body = bytes(self._body)
                    out.append((TAGS[self._tag], body, self._start_at - base, pos))
                    self._body.clear()
                continue
            if self._header or end - pos < 5:
                if not self._header:
                    self._start_at = base + pos
                take = min(5 - len(self._header), end - pos)
                self._header += chunk[pos : pos + take]
                pos += take
                if len(self._header) < 5:
                    continue
                tag = self._header[0]
                (length,) = _INT32.unpack_from(self._header, 1)
                self._header.clear()
            else:
                self._start_at = base + pos
                tag = chunk[pos]
                (length,) = _INT32.unpack_from(chunk, pos + 1)
                pos += 5
            self._start(tag, length)
            if not self._need and not self._skip:  # a message with an empty body
                boundary = pos
                if tag in inspect or tag in mark:
                    out.append((TAGS[tag], b"", self._start_at - base, pos))
        self.boundary = boundary
        return out

    def _start(self, tag: int, length: int) -> None:
        if length < 4:
            raise ProtocolError(f"invalid length {length} for message {chr(tag)!r}")
        if length > self.max_size:
            raise MessageTooLarge(chr(tag), length, self.max_size)
        self._tag = tag
        if tag in self._inspect:
            self._need = length - 4
        else:
            self._skip = length - 4
            self._marked = tag in self._mark
