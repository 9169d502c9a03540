"""Byte-vector and round-trip tests for protocol.frontend (client-sent messages)."""

from __future__ import annotations

import pytest

from protocol import backend
from protocol.errors import ProtocolError
from protocol.framing import FrameReader
from protocol.frontend import (
    Bind,
    Close,
    CopyData,
    CopyDone,
    CopyFail,
    Describe,
    Execute,
    Flush,
    FrontendMessage,
    FunctionCall,
    Parse,
    PasswordMessage,
    Query,
    SASLInitialResponse,
    SASLResponse,
    Sync,
    Terminate,
    decode_frontend,
)

# (message, its exact encoding)
VECTORS: list[tuple[FrontendMessage, bytes]] = [
    (Query("SELECT 1"), b"Q\x00\x00\x00\x0dSELECT 1\x00"),
    (
        Parse("s1", "SELECT $1", (23,)),
        b"P\x00\x00\x00\x17s1\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17",
    ),
    (
        Bind("", "s1", (1,), (b"\x00\x00\x00\x2a", None), (0,)),
        b"B\x00\x00\x00\x1e\x00s1\x00\x00\x01\x00\x01\x00\x02\x00\x00\x00\x04\x00\x00\x00\x2a"
        b"\xff\xff\xff\xff\x00\x01\x00\x00",
    ),
    (Describe("P", ""), b"D\x00\x00\x00\x06P\x00"),
    (Execute("", 0), b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"),
    (Execute("c1", 100), b"E\x00\x00\x00\x0bc1\x00\x00\x00\x00\x64"),
    (Close("S", "s1"), b"C\x00\x00\x00\x08Ss1\x00"),
    (Sync(), b"S\x00\x00\x00\x04"),
    (Flush(), b"H\x00\x00\x00\x04"),
    (Terminate(), b"X\x00\x00\x00\x04"),
    (CopyData(b"1\t2\n"), b"d\x00\x00\x00\x081\t2\n"),
    (CopyDone(), b"c\x00\x00\x00\x04"),
    (CopyFail("oops"), b"f\x00\x00\x00\x09oops\x00"),
    (
        FunctionCall(1598, (0,), (b"7",), 0),
        b"F\x00\x00\x00\x15\x00\x00\x06\x3e\x00\x01\x00\x00\x00\x01\x00\x00\x00\x017\x00\x00",
    ),
]

PASSWORD_VECTORS: list[tuple[FrontendMessage, bytes]] = [
    (PasswordMessage("secret"), b"p\x00\x00\x00\x0bsecret\x00"),
    (
        SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc"),
        b"p\x00\x00\x00\x21SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc",
    ),
    (
        SASLInitialResponse("SCRAM-SHA-256", None),
        b"p\x00\x00\x00\x16SCRAM-SHA-256\x00\xff\xff\xff\xff",
    ),
    (SASLResponse(b"c=biws,r=x,p=y"), b"p\x00\x00\x00\x12c=biws,r=x,p=y"),
]

# Every message type, with awkward values, for round trips.
EXAMPLES: list[FrontendMessage] = [
    Query(""),
    Query("SELECT 'é', '\udcff'"),  # invalid UTF-8 byte 0xff survives via surrogateescape
    Parse("", "SELECT 1"),
    Parse("stmt", "SELECT $1, $2", (0, 4294967295)),
    Bind("p", "s", (), (), ()),
    Bind("", "", (0, 1), (b"", None, b"\x00\xff"), (1, 0, 1)),
    Describe("S", "stmt"),
    Describe("P", "portal"),
    Execute("", -1),
    Execute("portal", 2147483647),
    Close("P", ""),
    Close("S", "stmt"),
    Sync(),
    Flush(),
    Terminate(),
    CopyData(b""),
    CopyData(bytes(range(256))),
    CopyDone(),
    CopyFail(""),
    FunctionCall(4294967295, (), (), 1),
    FunctionCall(1, (1, 0), (None, b"x"), 0),
]

PASSWORD_EXAMPLES: list[FrontendMessage] = [
    PasswordMessage(""),
    PasswordMessage("md5" + "0" * 32),
    SASLInitialResponse("SCRAM-SHA-256", b""),
    SASLInitialResponse("SCRAM-SHA-256", None),
    SASLResponse(b""),
    SASLResponse(b"\x00\xff"),
]


def split(frame: bytes) -> tuple[str, bytes]:
    [(tag, body)] = FrameReader().feed(frame)
    return tag, body


@pytest.mark.parametrize(("message", "frame"), VECTORS, ids=lambda v: type(v).__name__)
def test_vectors_encode_and_decode(message: FrontendMessage, frame: bytes) -> None:
    assert message.encode() == frame
    tag, body = split(frame)
    assert decode_frontend(tag, body) == message


@pytest.mark.parametrize(("message", "frame"), PASSWORD_VECTORS, ids=lambda v: type(v).__name__)
def test_password_vectors(message: FrontendMessage, frame: bytes) -> None:
    assert message.encode() == frame
    tag, body = split(frame)
    assert tag == "p"
    assert type(message).decode(body) == message


@pytest.mark.parametrize("message", EXAMPLES, ids=repr)
def test_round_trip(message: FrontendMessage) -> None:
    tag, body = split(message.encode())
    assert tag == type(message).TAG
    decoded = decode_frontend(tag, body)
    assert decoded == message
    assert decoded.encode() == message.encode()


@pytest.mark.parametrize("message", PASSWORD_EXAMPLES, ids=repr)
def test_password_family_round_trip(message: FrontendMessage) -> None:
    tag, body = split(message.encode())
    assert tag == "p"
    assert type(message).decode(body) == message


def test_every_message_type_is_covered() -> None:
    covered = {type(m) for m in EXAMPLES + PASSWORD_EXAMPLES}
    assert covered == set(FrontendMessage.__args__)


def test_extended_pipeline_one_byte_at_a_time_with_trailing_data() -> None:
    messages = [m for m, _ in VECTORS[1:5]] + [Sync()]
    stream = b"".join(m.encode() for m in messages) + b"Q\x00\x00"
    reader = FrameReader()
    frames = [f for i in range(len(stream)) for f in reader.feed(stream[i : i + 1])]
    assert [decode_frontend(tag, body) for tag, body in frames] == messages
    assert reader.pending() == 3


def test_invalid_utf8_round_trips_bytes_exactly() -> None:
    frame = b"Q\x00\x00\x00\x0cSELECT\xff\x00"
    query = decode_frontend(*split(frame))
    assert isinstance(query, Query)
    assert query.encode() == frame


def test_bind_with_more_than_32767_parameters() -> None:
    # PostgreSQL reads the Int16 counts unsigned, so up to 65535 parameters are valid.
    params = tuple(b"1" for _ in range(40000))
    bind = Bind("", "", (0,), params, ())
    assert decode_frontend(*split(bind.encode())) == bind


def test_copy_data_directions_are_distinct_types() -> None:
    assert CopyData(b"x").encode() == backend.CopyData(b"x").encode()
    assert decode_frontend("d", b"x") == CopyData(b"x")
    assert not isinstance(decode_frontend("d", b"x"), backend.CopyData)
    assert not isinstance(decode_frontend("c", b""), backend.CopyDone)


MALFORMED = [
    ("Q", b"SELECT 1", "missing its NUL terminator"),
    ("Q", b"SELECT 1\x00x", "trailing"),
    ("Q", b"", "missing its NUL terminator"),
    ("P", b"s\x00SELECT 1\x00", "truncated Int16"),
    ("P", b"s\x00SELECT 1\x00\x00\x02\x00\x00\x00\x17", "truncated list of 2 Int32"),
    ("P", b"s\x00SELECT 1\x00\x00\x00\x00", "trailing"),
    ("B", b"\x00s\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00", "negative value length -2"),
    ("B", b"\x00s\x00\x00\x00\x00\x01\x00\x00\x00\x05ab\x00\x00", "truncated 5-byte field"),
    ("B", b"\x00s\x00\x00\x01\x00", "truncated list of 1 Int16"),
    ("B", b"\x00s\x00\x00\x00\x00\x00", "truncated Int16"),
    ("B", b"\x00s\x00\xff\xff", "truncated list of 65535 Int16"),
    ("D", b"X\x00", "kind must be 'S'"),
    ("D", b"", "truncated Byte1"),
    ("D", b"S", "missing its NUL terminator"),
    ("C", b"Q\x00", "kind must be 'S'"),
    ("E", b"\x00\x00\x00", "truncated Int32"),
    ("E", b"\x00\x00\x00\x00\x00\x00", "trailing"),
    ("S", b"\x00", "trailing"),
    ("H", b"x", "trailing"),
    ("X", b"x", "trailing"),
    ("c", b"x", "trailing"),
    ("f", b"oops", "missing its NUL terminator"),
    ("F", b"\x00\x00\x06\x3e\x00\x00\x00\x00", "truncated Int16"),
    ("F", b"\x00\x00\x06\x3e\x00\x00\x00\x01\x80\x00\x00\x00\x00\x00", "negative value length"),
]


@pytest.mark.parametrize(("tag", "body", "problem"), MALFORMED)
def test_malformed_bodies_raise_protocol_error(tag: str, body: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        decode_frontend(tag, body)


def test_malformed_password_family() -> None:
    with pytest.raises(ProtocolError, match="missing its NUL terminator"):
        PasswordMessage.decode(b"secret")
    with pytest.raises(ProtocolError, match="trailing"):
        PasswordMessage.decode(b"secret\x00x")
    with pytest.raises(ProtocolError, match="truncated 11-byte field"):
        SASLInitialResponse.decode(b"SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,")
    with pytest.raises(ProtocolError, match="truncated Int32"):
        SASLInitialResponse.decode(b"SCRAM-SHA-256\x00")
    with pytest.raises(ProtocolError, match="negative value length"):
        SASLInitialResponse.decode(b"SCRAM-SHA-256\x00\xff\xff\xff\xfe")


def test_unknown_tag() -> None:
    with pytest.raises(ProtocolError, match="unknown frontend message type 'z'"):
        decode_frontend("z", b"")


def test_password_tag_needs_context() -> None:
    with pytest.raises(ProtocolError, match="PasswordMessage"):
        decode_frontend("p", b"secret\x00")


def test_encode_refuses_values_that_would_corrupt_framing() -> None:
    with pytest.raises(ValueError, match="NUL"):
        Query("SELECT 1\x00; DROP TABLE t").encode()
    with pytest.raises(ValueError, match="kind"):
        Describe("X", "").encode()
