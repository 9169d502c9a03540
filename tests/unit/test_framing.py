"""Byte-vector tests for protocol.framing: whole, one byte at a time, with trailing data."""

from __future__ import annotations

import tracemalloc

import pytest

from protocol.errors import MessageTooLarge, ProtocolError
from protocol.framing import MAX_STARTUP_PACKET, BackendScanner, FrameReader, StartupReader

SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
STARTUP = b"\x00\x00\x00\x12\x00\x03\x00\x00user\x00bob\x00\x00"

QUERY = b"Q\x00\x00\x00\x0dSELECT 1\x00"
SYNC = b"S\x00\x00\x00\x04"
TERMINATE = b"X\x00\x00\x00\x04"

PARSE_COMPLETE = b"1\x00\x00\x00\x04"
BIND_COMPLETE = b"2\x00\x00\x00\x04"
ROW_DESCRIPTION = (
    b"T\x00\x00\x00\x1a\x00\x01a\x00"
    b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00"
)
DATA_ROW = b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x011"
COMMAND_COMPLETE = b"C\x00\x00\x00\x0dSELECT 1\x00"
READY_IDLE = b"Z\x00\x00\x00\x05I"

SERVER_REPLY = (
    PARSE_COMPLETE + BIND_COMPLETE + ROW_DESCRIPTION + DATA_ROW + DATA_ROW + COMMAND_COMPLETE
) + READY_IDLE


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# --- StartupReader ---------------------------------------------------------------------


def test_startup_reader_whole() -> None:
    reader = StartupReader()
    assert reader.feed(SSL_REQUEST + STARTUP) == [SSL_REQUEST[4:], STARTUP[4:]]
    assert reader.take_rest() == b""


def test_startup_reader_one_byte_at_a_time() -> None:
    reader = StartupReader()
    packets = [p for byte in bytewise(SSL_REQUEST + STARTUP) for p in reader.feed(byte)]
    assert packets == [b"\x04\xd2\x16\x2f", b"\x00\x03\x00\x00user\x00bob\x00\x00"]


def test_startup_reader_keeps_query_pipelined_after_startup_message() -> None:
    # Regression: the bytes after a StartupMessage were parsed as startup packets, so a
    # pipelined Query raised "invalid startup packet length".
    reader = StartupReader()
    assert reader.feed(STARTUP + QUERY) == [STARTUP[4:]]
    assert reader.done
    assert reader.feed(SYNC) == []
    assert reader.take_rest() == QUERY + SYNC
    assert reader.take_rest() == b""


def test_startup_reader_pipelined_one_byte_at_a_time() -> None:
    reader = StartupReader()
    packets = [p for byte in bytewise(STARTUP + QUERY) for p in reader.feed(byte)]
    assert packets == [STARTUP[4:]]
    assert reader.take_rest() == QUERY


def test_startup_reader_continues_after_encryption_request() -> None:
    gssenc = b"\x00\x00\x00\x08\x04\xd2\x16\x30"
    reader = StartupReader()
    assert reader.feed(SSL_REQUEST) == [SSL_REQUEST[4:]]
    assert not reader.done
    assert reader.feed(gssenc + STARTUP[:9]) == [gssenc[4:]]
    assert reader.feed(STARTUP[9:]) == [STARTUP[4:]]
    assert reader.done


def test_startup_reader_cancel_request_ends_the_phase() -> None:
    cancel = b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\x12\x34\x56\x78"
    reader = StartupReader()
    assert reader.feed(cancel + b"garbage") == [cancel[4:]]
    assert reader.take_rest() == b"garbage"


@pytest.mark.parametrize(
    "header", [b"\x00\x00\x00\x07", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x00\x00\x27\x11"]
)
def test_startup_reader_rejects_bad_length_before_the_body(header: bytes) -> None:
    with pytest.raises(ProtocolError, match="invalid startup packet length"):
        StartupReader().feed(header)


def test_startup_reader_accepts_the_largest_packet() -> None:
    body = b"\x00\x03\x00\x00" + b"x" * (MAX_STARTUP_PACKET - 8)
    packet = MAX_STARTUP_PACKET.to_bytes(4, "big") + body
    assert StartupReader().feed(packet) == [body]


# --- FrameReader -----------------------------------------------------------------------

CLIENT_STREAM = QUERY + SYNC + TERMINATE
CLIENT_FRAMES = [("Q", b"SELECT 1\x00"), ("S", b""), ("X", b"")]


def test_frame_reader_whole() -> None:
    reader = FrameReader()
    assert reader.feed(CLIENT_STREAM) == CLIENT_FRAMES
    assert reader.pending() == 0


def test_frame_reader_one_byte_at_a_time() -> None:
    reader = FrameReader()
    frames = [f for byte in bytewise(CLIENT_STREAM) for f in reader.feed(byte)]
    assert frames == CLIENT_FRAMES


def test_frame_reader_every_split_point() -> None:
    for split in range(len(CLIENT_STREAM) + 1):
        reader = FrameReader()
        frames = reader.feed(CLIENT_STREAM[:split]) + reader.feed(CLIENT_STREAM[split:])
        assert frames == CLIENT_FRAMES, split


def test_frame_reader_holds_trailing_partial_message() -> None:
    reader = FrameReader()
    assert reader.feed(QUERY + SYNC[:3]) == [("Q", b"SELECT 1\x00")]
    assert reader.pending() == 3
    assert reader.feed(SYNC[3:]) == [("S", b"")]
    assert reader.pending() == 0


def test_frame_reader_take_rest() -> None:
    reader = FrameReader()
    reader.feed(QUERY[:7])
    assert reader.take_rest() == QUERY[:7]
    assert reader.pending() == 0


def test_frame_reader_feed_raw_returns_whole_frames() -> None:
    reader = FrameReader()
    frames = [f for byte in bytewise(CLIENT_STREAM) for f in reader.feed_raw(byte)]
    assert frames == [("Q", QUERY), ("S", SYNC), ("X", TERMINATE)]


def test_frame_reader_too_large_before_the_body_arrives() -> None:
    reader = FrameReader(max_size=1000)
    with pytest.raises(MessageTooLarge) as info:
        reader.feed(b"Q\x00\x00\x03\xe9")  # 1001, no body yet
    assert (info.value.tag, info.value.size, info.value.limit) == ("Q", 1001, 1000)
    with pytest.raises(MessageTooLarge):
        FrameReader(max_size=1000).feed_raw(b"d\x7f\xff\xff\xff")


def test_frame_reader_accepts_message_at_the_limit() -> None:
    reader = FrameReader(max_size=13)
    assert reader.feed(QUERY) == [("Q", b"SELECT 1\x00")]


@pytest.mark.parametrize("header", [b"Q\x00\x00\x00\x03", b"Q\xff\xff\xff\xff"])
def test_frame_reader_rejects_length_under_four(header: bytes) -> None:
    with pytest.raises(ProtocolError, match="invalid length"):
        FrameReader().feed(header)
    with pytest.raises(ProtocolError, match="invalid length"):
        FrameReader().feed_raw(header)


# --- BackendScanner --------------------------------------------------------------------

EXPECTED_INSPECTED = [
    ("1", b"", 5),
    ("C", b"SELECT 1\x00", len(SERVER_REPLY) - len(READY_IDLE)),
    ("Z", b"I", len(SERVER_REPLY)),
]


def scan(chunks: list[bytes], inspect: str = "1CZ") -> tuple[list[tuple[str, bytes, int]], bool]:
    """Feed ``chunks``; return inspected messages with absolute end offsets, checking
    that each reported start lies exactly where that message begins in the stream."""
    scanner = BackendScanner(inspect)
    found: list[tuple[str, bytes, int]] = []
    offset = 0
    stream = b"".join(chunks)
    for chunk in chunks:
        for tag, body, start, end in scanner.feed(chunk):
            assert 0 < end <= len(chunk)
            begin = offset + start
            assert stream[begin : begin + 1] == tag.encode()
            assert int.from_bytes(stream[begin + 1 : begin + 5], "big") == offset + end - begin - 1
            found.append((tag, body, offset + end))
        offset += len(chunk)
    return found, scanner.at_boundary()


def test_scanner_whole() -> None:
    assert scan([SERVER_REPLY]) == (EXPECTED_INSPECTED, True)


def test_scanner_one_byte_at_a_time() -> None:
    assert scan(bytewise(SERVER_REPLY)) == (EXPECTED_INSPECTED, True)


def test_scanner_every_pair_of_split_points() -> None:
    data = SERVER_REPLY
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            assert scan([data[:i], data[i:j], data[j:]]) == (EXPECTED_INSPECTED, True), (i, j)


def test_scanner_end_splits_chunk_at_message_boundaries() -> None:
    scanner = BackendScanner("Z")
    chunk = SERVER_REPLY + PARSE_COMPLETE
    [(tag, body, start, end)] = scanner.feed(chunk)
    assert (tag, body) == ("Z", b"I")
    assert chunk[start:end] == READY_IDLE
    assert chunk[:end] == SERVER_REPLY
    assert chunk[end:] == PARSE_COMPLETE


def test_scanner_at_boundary_tracks_partial_messages() -> None:
    scanner = BackendScanner("Z")
    scanner.feed(DATA_ROW[:3])  # inside a header
    assert not scanner.at_boundary()
    scanner.feed(DATA_ROW[3:8])  # inside an uninspected body
    assert not scanner.at_boundary()
    scanner.feed(DATA_ROW[8:] + READY_IDLE[:5])  # inspected header, body pending
    assert not scanner.at_boundary()
    assert scanner.feed(READY_IDLE[5:]) == [("Z", b"I", -5, 1)]
    assert scanner.at_boundary()


def test_scanner_marks_tags_without_copying_bodies() -> None:
    scanner = BackendScanner("Z", mark="CT")
    events = scanner.feed(SERVER_REPLY)
    assert [(tag, body) for tag, body, _, _ in events] == [("T", b""), ("C", b""), ("Z", b"I")]
    for tag, _, start, end in events:
        assert SERVER_REPLY[start : start + 1] == tag.encode()
        assert scanner.boundary == len(SERVER_REPLY) and end <= len(SERVER_REPLY)


def test_scanner_inspects_nothing_when_told_nothing() -> None:
    assert scan([SERVER_REPLY], inspect="") == ([], True)


def test_scanner_does_not_copy_uninspected_bodies() -> None:
    big = 8 * 1024 * 1024
    row = b"D" + (big + 4).to_bytes(4, "big") + bytes(big)
    chunk = row + READY_IDLE
    head, tail = chunk[: big // 2], chunk[big // 2 :]
    scanner = BackendScanner("Z")
    tracemalloc.start()
    try:
        first = scanner.feed(head)
        second = scanner.feed(tail)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert first == []
    tail_end = len(chunk) - big // 2
    assert second == [("Z", b"I", tail_end - len(READY_IDLE), tail_end)]
    assert peak < 64 * 1024


def test_scanner_too_large_from_the_header_alone() -> None:
    scanner = BackendScanner("Z", max_size=100)
    scanner.feed(b"D\x00\x00")
    with pytest.raises(MessageTooLarge) as info:
        scanner.feed(b"\x00\x65")  # 101
    assert (info.value.tag, info.value.size) == ("D", 101)


def test_scanner_rejects_length_under_four() -> None:
    with pytest.raises(ProtocolError, match="invalid length 3"):
        BackendScanner("Z").feed(b"Z\x00\x00\x00\x03")
