"""Byte-vector and round-trip tests for protocol.backend (server-sent messages)."""

from __future__ import annotations

import pytest

from protocol import frontend
from protocol.backend import (
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationUnsupported,
    BackendKeyData,
    BackendMessage,
    BindComplete,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    EmptyQueryResponse,
    ErrorResponse,
    FieldDescription,
    FunctionCallResponse,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    ParseComplete,
    PortalSuspended,
    ReadyForQuery,
    RowDescription,
    decode_backend,
    text_rows,
)
from protocol.errors import ProtocolError
from protocol.framing import BackendScanner, FrameReader

ROW_DESCRIPTION_A = (
    b"T\x00\x00\x00\x1a\x00\x01a\x00"
    b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00"
)

VECTORS: list[tuple[BackendMessage, bytes]] = [
    (AuthenticationOk(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
    (AuthenticationCleartextPassword(), b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
    (
        AuthenticationMD5Password(b"\x01\x02\x03\x04"),
        b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04",
    ),
    (
        AuthenticationSASL(("SCRAM-SHA-256",)),
        b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00",
    ),
    (AuthenticationSASLContinue(b"r=abc"), b"R\x00\x00\x00\x0d\x00\x00\x00\x0br=abc"),
    (AuthenticationSASLFinal(b"v=xyz"), b"R\x00\x00\x00\x0d\x00\x00\x00\x0cv=xyz"),
    (AuthenticationUnsupported(7), b"R\x00\x00\x00\x08\x00\x00\x00\x07"),
    (ParameterStatus("client_encoding", "UTF8"), b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00"),
    (BackendKeyData(1234, -559038737), b"K\x00\x00\x00\x0c\x00\x00\x04\xd2\xde\xad\xbe\xef"),
    (ReadyForQuery("I"), b"Z\x00\x00\x00\x05I"),
    (ReadyForQuery("T"), b"Z\x00\x00\x00\x05T"),
    (ReadyForQuery("E"), b"Z\x00\x00\x00\x05E"),
    (
        ErrorResponse.build("ERROR", "42601", "syntax error"),
        b"E\x00\x00\x00\x28SERROR\x00VERROR\x00C42601\x00Msyntax error\x00\x00",
    ),
    (NoticeResponse((("S", "NOTICE"),)), b"N\x00\x00\x00\x0dSNOTICE\x00\x00"),
    (CommandComplete("SELECT 1"), b"C\x00\x00\x00\x0dSELECT 1\x00"),
    (EmptyQueryResponse(), b"I\x00\x00\x00\x04"),
    (RowDescription((FieldDescription("a"),)), ROW_DESCRIPTION_A),
    (DataRow((b"1", None)), b"D\x00\x00\x00\x0f\x00\x02\x00\x00\x00\x011\xff\xff\xff\xff"),
    (ParseComplete(), b"1\x00\x00\x00\x04"),
    (BindComplete(), b"2\x00\x00\x00\x04"),
    (CloseComplete(), b"3\x00\x00\x00\x04"),
    (NoData(), b"n\x00\x00\x00\x04"),
    (PortalSuspended(), b"s\x00\x00\x00\x04"),
    (
        ParameterDescription((23, 25)),
        b"t\x00\x00\x00\x0e\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19",
    ),
    (NotificationResponse(42, "ch", "hi"), b"A\x00\x00\x00\x0e\x00\x00\x00\x2ach\x00hi\x00"),
    (CopyInResponse(0, (0, 0)), b"G\x00\x00\x00\x0b\x00\x00\x02\x00\x00\x00\x00"),
    (CopyOutResponse(1, (1,)), b"H\x00\x00\x00\x09\x01\x00\x01\x00\x01"),
    (CopyBothResponse(0, ()), b"W\x00\x00\x00\x07\x00\x00\x00"),
    (CopyData(b"abc"), b"d\x00\x00\x00\x07abc"),
    (CopyDone(), b"c\x00\x00\x00\x04"),
    (FunctionCallResponse(b"42"), b"V\x00\x00\x00\x0a\x00\x00\x00\x0242"),
    (FunctionCallResponse(None), b"V\x00\x00\x00\x08\xff\xff\xff\xff"),
    (
        NegotiateProtocolVersion(0, ("_pq_.foo",)),
        b"v\x00\x00\x00\x15\x00\x00\x00\x00\x00\x00\x00\x01_pq_.foo\x00",
    ),
]

ALL_FIELD_CODES = "SVCMDHPpqWstcdnFLR"

EXAMPLES: list[BackendMessage] = [
    AuthenticationOk(),
    AuthenticationCleartextPassword(),
    AuthenticationMD5Password(b"\xff\x00\xfe\x01"),
    AuthenticationSASL(()),
    AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")),
    AuthenticationSASLContinue(b""),
    AuthenticationSASLFinal(b"v=\x00\xff"),
    AuthenticationUnsupported(2),
    AuthenticationUnsupported(8, b"gss token"),
    ParameterStatus("application_name", ""),
    BackendKeyData(-1, 2147483647),
    BackendKeyData(2147483647, -2147483648),
    ReadyForQuery("E"),
    ErrorResponse(()),
    ErrorResponse(tuple((code, f"value of {code}") for code in ALL_FIELD_CODES)),
    NoticeResponse.build("WARNING", "01000", "careful", detail="d", hint="h"),
    CommandComplete("INSERT 0 1"),
    EmptyQueryResponse(),
    RowDescription(()),
    RowDescription(
        (
            FieldDescription("id", 16385, 1, 23, 4, -1, 1),
            FieldDescription("ñame", 4294967295, -1, 4294967295, -2, 2147483647, 0),
        )
    ),
    DataRow(()),
    DataRow((b"", None, bytes(range(256)))),
    ParseComplete(),
    BindComplete(),
    CloseComplete(),
    NoData(),
    PortalSuspended(),
    ParameterDescription(()),
    ParameterDescription((0, 4294967295)),
    NotificationResponse(-7, "", "\udcff payload"),
    CopyInResponse(1, (1, 1, 1)),
    CopyOutResponse(0, ()),
    CopyBothResponse(0, (0,)),
    CopyData(b""),
    CopyDone(),
    FunctionCallResponse(b""),
    FunctionCallResponse(None),
    NegotiateProtocolVersion(2, ()),
    NegotiateProtocolVersion(0, ("_pq_.a", "_pq_.b")),
]


def split(frame: bytes) -> tuple[str, bytes]:
    [(tag, body)] = FrameReader().feed(frame)
    return tag, body


@pytest.mark.parametrize(("message", "frame"), VECTORS, ids=lambda v: type(v).__name__)
def test_vectors_encode_and_decode(message: BackendMessage, frame: bytes) -> None:
    assert message.encode() == frame
    assert decode_backend(*split(frame)) == message


@pytest.mark.parametrize("message", EXAMPLES, ids=repr)
def test_round_trip(message: BackendMessage) -> None:
    frame = message.encode()
    tag, body = split(frame)
    assert tag == type(message).TAG
    decoded = decode_backend(tag, body)
    assert decoded == message
    assert type(decoded) is type(message)
    assert decoded.encode() == frame


def test_every_message_type_is_covered() -> None:
    assert {type(m) for m in EXAMPLES} == set(BackendMessage.__args__)


def test_reply_one_byte_at_a_time_with_trailing_data() -> None:
    messages = [m for m, _ in VECTORS[13:]]
    stream = b"".join(m.encode() for m in messages) + b"Z\x00\x00\x00"
    reader = FrameReader()
    frames = [f for i in range(len(stream)) for f in reader.feed(stream[i : i + 1])]
    assert [decode_backend(tag, body) for tag, body in frames] == messages
    assert reader.pending() == 4


def test_scanner_output_decodes() -> None:
    reply = (
        ParseComplete().encode()
        + ParameterStatus("TimeZone", "UTC").encode()
        + DataRow((b"x",)).encode()
        + ErrorResponse.build("ERROR", "40001", "conflict").encode()
        + ReadyForQuery("E").encode()
    )
    found = [decode_backend(tag, body) for tag, body, _, _ in BackendScanner("SEZ").feed(reply)]
    assert found == [
        ParameterStatus("TimeZone", "UTC"),
        ErrorResponse.build("ERROR", "40001", "conflict"),
        ReadyForQuery("E"),
    ]


def test_error_fields_and_properties() -> None:
    error = ErrorResponse.build(
        "FATAL", "28P01", 'password authentication failed for user "bob"', hint="check it"
    )
    assert error.fields == (
        ("S", "FATAL"),
        ("V", "FATAL"),
        ("C", "28P01"),
        ("M", 'password authentication failed for user "bob"'),
        ("H", "check it"),
    )
    assert (error.severity, error.sqlstate, error.detail, error.hint) == (
        "FATAL",
        "28P01",
        None,
        "check it",
    )
    assert error.message == 'password authentication failed for user "bob"'
    assert error.get("P") is None


def test_every_field_code_is_kept() -> None:
    fields = tuple((code, f"v{code}") for code in ALL_FIELD_CODES)
    notice = decode_backend(*split(NoticeResponse(fields).encode()))
    assert isinstance(notice, NoticeResponse)
    for code in ALL_FIELD_CODES:
        assert notice.get(code) == f"v{code}"


def test_localized_severity() -> None:
    error = ErrorResponse((("S", "FEHLER"), ("V", "ERROR"), ("C", "XX000"), ("M", "m")))
    assert error.severity == "FEHLER"
    assert error.severity_nonlocalized == "ERROR"
    assert ErrorResponse((("S", "ERROR"),)).severity_nonlocalized == "ERROR"


def test_error_and_notice_are_distinct() -> None:
    fields = (("S", "ERROR"),)
    assert decode_backend("E", b"SERROR\x00\x00") != decode_backend("N", b"SERROR\x00\x00")
    assert ErrorResponse(fields).encode()[:1] == b"E"
    assert NoticeResponse(fields).encode()[:1] == b"N"


def test_copy_data_directions_are_distinct_types() -> None:
    decoded = decode_backend("d", b"row\n")
    assert isinstance(decoded, CopyData)
    assert not isinstance(decoded, frontend.CopyData)


def test_text_rows() -> None:
    blob = text_rows(["a"], [[1], [None]], "SELECT 2")
    assert blob == (
        ROW_DESCRIPTION_A
        + b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x011"
        + b"D\x00\x00\x00\x0a\x00\x01\xff\xff\xff\xff"
        + b"C\x00\x00\x00\x0dSELECT 2\x00"
    )


def test_text_rows_empty_and_mismatched() -> None:
    blob = text_rows(["x", "y"], [], "SHOW")
    tags = [tag for tag, _ in FrameReader().feed(blob)]
    assert tags == ["T", "C"]
    with pytest.raises(ValueError, match="2 values for 1 columns"):
        text_rows(["x"], [(1, 2)], "SHOW")


MALFORMED = [
    ("R", b"", "truncated Int32"),
    ("R", b"\x00\x00\x00", "truncated Int32"),
    ("R", b"\x00\x00\x00\x00\x00", "trailing"),
    ("R", b"\x00\x00\x00\x05\x01\x02\x03", "truncated 4-byte field"),
    ("R", b"\x00\x00\x00\x05\x01\x02\x03\x04\x05", "trailing"),
    ("R", b"\x00\x00\x00\x0aSCRAM-SHA-256\x00", "missing its NUL terminator"),
    ("R", b"\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00x", "trailing"),
    ("S", b"name\x00", "missing its NUL terminator"),
    ("K", b"\x00\x00\x04\xd2", "not 8"),
    ("K", b"\x00\x00\x04\xd2\x00\x00\x00\x01\x00", "not 8"),
    ("Z", b"X", "unknown transaction status 'X'"),
    ("Z", b"", "truncated Byte1"),
    ("Z", b"II", "trailing"),
    ("E", b"SERROR\x00", "truncated Byte1"),
    ("E", b"SERROR", "missing its NUL terminator"),
    ("N", b"\x00\x00", "trailing"),
    ("C", b"SELECT 1", "missing its NUL terminator"),
    ("I", b"\x00", "trailing"),
    ("T", b"\x00\x01a\x00\x00\x00", "truncated 18-byte field"),
    ("T", b"\x00\x02", "missing its NUL terminator"),
    ("D", b"\x00\x01\x00\x00\x00\x05abc", "truncated 5-byte field"),
    ("D", b"\x00\x01\xff\xff\xff\xfe", "negative value length -2"),
    ("D", b"\x00\x00\x00", "trailing"),
    ("D", b"\x00", "truncated Int16"),
    ("1", b"\x00", "trailing"),
    ("t", b"\x00\x02\x00\x00\x00\x17", "truncated list of 2 Int32"),
    ("A", b"\x00\x00\x00\x01ch\x00", "missing its NUL terminator"),
    ("G", b"\x00\x00\x01", "truncated list of 1 Int16"),
    ("H", b"", "truncated Int8"),
    ("c", b"x", "trailing"),
    ("V", b"\x00\x00\x00\x05ab", "truncated 5-byte field"),
    ("v", b"\x00\x00\x00\x00\xff\xff\xff\xff", "negative option count -1"),
    ("v", b"\x00\x00\x00\x00\x00\x00\x00\x02a\x00", "missing its NUL terminator"),
]


@pytest.mark.parametrize(("tag", "body", "problem"), MALFORMED)
def test_malformed_bodies_raise_protocol_error(tag: str, body: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        decode_backend(tag, body)


def test_unknown_tag() -> None:
    with pytest.raises(ProtocolError, match="unknown backend message type 'Q'"):
        decode_backend("Q", b"")


def test_auth_class_rejects_other_code() -> None:
    with pytest.raises(ProtocolError, match="authentication code 3, expected 0"):
        AuthenticationOk.decode(b"\x00\x00\x00\x03")


def test_encode_refuses_invalid_values() -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        AuthenticationMD5Password(b"abc").encode()
    with pytest.raises(ValueError, match="status"):
        ReadyForQuery("X").encode()
    with pytest.raises(ValueError, match="field code"):
        ErrorResponse((("", "x"),)).encode()
