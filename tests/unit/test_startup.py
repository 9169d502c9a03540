"""Byte-vector tests for protocol.startup (untagged startup-phase packets)."""

from __future__ import annotations

import pytest

from protocol.errors import ProtocolError
from protocol.framing import StartupReader
from protocol.startup import (
    SSL_ALLOWED,
    SSL_DENIED,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    StartupPacket,
    UnsupportedProtocol,
    decode_startup,
)

STARTUP_BOB = b"\x00\x00\x00\x12\x00\x03\x00\x00user\x00bob\x00\x00"
STARTUP_BOB_APP = b"\x00\x00\x00\x1f\x00\x03\x00\x00user\x00bob\x00database\x00app\x00\x00"
SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
GSSENC_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x30"
CANCEL_REQUEST = b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\x12\x34\x56\x78"

VECTORS: list[tuple[StartupPacket, bytes]] = [
    (StartupMessage({"user": "bob"}), STARTUP_BOB),
    (StartupMessage({"user": "bob", "database": "app"}), STARTUP_BOB_APP),
    (SSLRequest(), SSL_REQUEST),
    (GSSENCRequest(), GSSENC_REQUEST),
    (CancelRequest(12345, 0x12345678), CANCEL_REQUEST),
]


@pytest.mark.parametrize(("packet", "data"), VECTORS, ids=lambda v: type(v).__name__)
def test_vectors(packet: StartupPacket, data: bytes) -> None:
    assert packet.encode() == data
    assert decode_startup(data[4:]) == packet


@pytest.mark.parametrize(("packet", "data"), VECTORS, ids=lambda v: type(v).__name__)
def test_vectors_one_byte_at_a_time_with_trailing_data(packet: StartupPacket, data: bytes) -> None:
    reader = StartupReader()
    stream = data + b"Q\x00"
    bodies = [b for i in range(len(stream)) for b in reader.feed(stream[i : i + 1])]
    assert [decode_startup(body) for body in bodies] == [packet]
    if not isinstance(packet, SSLRequest | GSSENCRequest):
        assert reader.take_rest() == b"Q\x00"


ROUND_TRIP = [
    StartupMessage({"user": "u"}),
    StartupMessage(
        {
            "user": "ünïcode",
            "database": "db",
            "application_name": "",
            "options": "-c geqo=off",
            "_pq_.ext": "1",
            "raw": "\udcff",
        }
    ),
    StartupMessage({"user": "u"}, version=196610),
    CancelRequest(-1, -2147483648),
    CancelRequest(2147483647, 0),
    SSLRequest(),
    GSSENCRequest(),
]


@pytest.mark.parametrize("packet", ROUND_TRIP, ids=repr)
def test_round_trip(packet: StartupPacket) -> None:
    [body] = StartupReader().feed(packet.encode())
    assert decode_startup(body) == packet


def test_minor_version_is_recorded() -> None:
    message = decode_startup(b"\x00\x03\x00\x02user\x00bob\x00\x00")
    assert isinstance(message, StartupMessage)
    assert message.version == 196610


@pytest.mark.parametrize(
    ("version", "shown"),
    [
        (b"\x00\x02\x00\x00", "2.0"),
        (b"\x00\x04\x00\x00", "4.0"),
        (b"\x04\xd2\x16\x31", "1234.5681"),
    ],
)
def test_unsupported_protocol(version: bytes, shown: str) -> None:
    with pytest.raises(UnsupportedProtocol, match=f"unsupported frontend protocol {shown}"):
        decode_startup(version + b"user\x00bob\x00\x00")
    assert issubclass(UnsupportedProtocol, ProtocolError)


def test_user_and_database() -> None:
    assert StartupMessage({"user": "bob"}).database == "bob"
    assert StartupMessage({"user": "bob", "database": ""}).database == "bob"
    message = StartupMessage({"user": "bob", "database": "app"})
    assert (message.user, message.database) == ("bob", "app")


def test_last_duplicate_parameter_wins() -> None:
    message = decode_startup(b"\x00\x03\x00\x00user\x00a\x00user\x00b\x00\x00")
    assert isinstance(message, StartupMessage)
    assert message.user == "b"


MALFORMED = [
    (b"\x00\x03\x00\x00database\x00app\x00\x00", "no PostgreSQL user name specified"),
    (b"\x00\x03\x00\x00user\x00\x00\x00", "no PostgreSQL user name specified"),
    (b"\x00\x03\x00\x00\x00", "no PostgreSQL user name specified"),
    (b"\x00\x03\x00\x00user\x00bob\x00", "missing its NUL terminator"),
    (b"\x00\x03\x00\x00user\x00bob", "expected terminator as last byte"),
    (b"\x00\x03\x00\x00user\x00", "missing its NUL terminator"),
    (b"\x00\x03\x00\x00user\x00bob\x00\x00x\x00", "2 unexpected trailing"),
    (b"\x00\x03\x00", "truncated Int32"),
    (b"\x04\xd2\x16\x2f\x00", "trailing"),
    (b"\x04\xd2\x16\x30\x00", "trailing"),
    (b"\x04\xd2\x16\x2e\x00\x00\x30\x39", "truncated Int32"),
    (b"\x04\xd2\x16\x2e\x00\x00\x30\x39\x12\x34\x56\x78\x00", "trailing"),
]


@pytest.mark.parametrize(("body", "problem"), MALFORMED)
def test_malformed(body: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        decode_startup(body)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("", []),
        ("-c geqo=off", [("geqo", "off")]),
        ("-cgeqo=off --work-mem=64MB", [("geqo", "off"), ("work_mem", "64MB")]),
        ("  -c\ta=1 \n -c  b=2  ", [("a", "1"), ("b", "2")]),
        ("-c search_path=a\\ b", [("search_path", "a b")]),
        ("-c x=a\\\\b", [("x", "a\\b")]),
        ("-c x=a=b", [("x", "a=b")]),
        ("-c x=", [("x", "")]),
        ("-c pgrouter.min_lsn=0/3000060", [("pgrouter.min_lsn", "0/3000060")]),
        ("-c statement-timeout=5s", [("statement_timeout", "5s")]),
        ("-c x=trailing\\", [("x", "trailing\\")]),
    ],
)
def test_options(options: str, expected: list[tuple[str, str]]) -> None:
    assert StartupMessage({"user": "u", "options": options}).options() == expected


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ("-c", "requires an argument"),
        ("-c geqo", "requires a value"),
        ("--geqo", "requires a value"),
        ("-c =off", "requires a value"),
        ("-B 100", "unsupported startup option '-B'"),
        ("geqo=off", "unsupported startup option"),
    ],
)
def test_options_errors(options: str, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        StartupMessage({"user": "u", "options": options}).options()


def test_ssl_answers() -> None:
    assert (SSL_ALLOWED, SSL_DENIED) == (b"S", b"N")
