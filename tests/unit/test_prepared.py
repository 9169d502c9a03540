"""router.prepared: shared server-side statement names, per-server LRU, name rewriting."""

from __future__ import annotations

import re

import pytest

from protocol import frontend as fe
from protocol.errors import ProtocolError
from router.prepared import (
    ServerStatements,
    Statement,
    bind_name,
    bind_statement,
    close_statement,
    describe_statement,
    rename_bind,
    server_name_for,
    split_parse,
    with_body,
)

# ---------------------------------------------------------------- server names


def test_server_name_is_stable_and_shaped() -> None:
    name = server_name_for("SELECT $1", (23,))
    assert name == server_name_for("SELECT $1", (23,))
    assert re.fullmatch(r"pgr_[0-9a-f]{20}", name)


def test_server_name_differs_with_text_and_types() -> None:
    names = {
        server_name_for("SELECT $1", ()),
        server_name_for("SELECT $1", (23,)),
        server_name_for("SELECT $1", (25,)),
        server_name_for("SELECT $1, $2", (1, 2)),
        server_name_for("SELECT $1, $2", (12,)),
        server_name_for("SELECT $1 ", (23,)),
        server_name_for("select $1", (23,)),
    }
    assert len(names) == 7


def test_server_name_accepts_undecodable_text() -> None:
    # Query text decoded with surrogateescape must still hash.
    text = b"SELECT '\xff'".decode("utf-8", "surrogateescape")
    assert server_name_for(text, ()) != server_name_for("SELECT '?'", ())


def test_statement_parse_frame_uses_server_name() -> None:
    statement = Statement("SELECT $1", (23,), "pgr_abc")
    assert statement.parse_frame() == fe.Parse("pgr_abc", "SELECT $1", (23,)).encode()


# ---------------------------------------------------------------- ServerStatements


def test_add_within_limit_evicts_nothing() -> None:
    held = ServerStatements(3)
    assert held.add("a") == []
    assert held.add("b") == []
    assert held.add("c") == []
    assert len(held) == 3
    assert "a" in held and "b" in held and "c" in held
    assert "d" not in held


def test_add_past_limit_evicts_least_recently_used() -> None:
    held = ServerStatements(2)
    held.add("a")
    held.add("b")
    assert held.add("c") == ["a"]
    assert "a" not in held and len(held) == 2
    assert held.add("d") == ["b"]


def test_touch_protects_from_eviction() -> None:
    held = ServerStatements(2)
    held.add("a")
    held.add("b")
    held.touch("a")
    assert held.add("c") == ["b"]
    assert "a" in held


def test_adding_a_known_name_refreshes_it_without_eviction() -> None:
    held = ServerStatements(2)
    held.add("a")
    held.add("b")
    assert held.add("a") == []
    assert len(held) == 2
    assert held.add("c") == ["b"]


def test_lower_limit_evicts_several_in_order() -> None:
    held = ServerStatements(3)
    for name in "abc":
        held.add(name)
    held.limit = 1
    assert held.add("d") == ["a", "b", "c"]
    assert len(held) == 1 and "d" in held


def test_discard_and_clear() -> None:
    held = ServerStatements(3)
    held.add("a")
    held.add("b")
    held.discard("a")
    held.discard("missing")
    assert "a" not in held and len(held) == 1
    held.clear()
    assert len(held) == 0 and "b" not in held


# ---------------------------------------------------------------- message bodies


def test_split_parse() -> None:
    raw = fe.Parse("s1", "SELECT $1", (23,)).encode()
    name, rest = split_parse(raw[5:])
    assert name == "s1"
    assert rest == b"SELECT $1\x00\x00\x01\x00\x00\x00\x17"
    assert split_parse(fe.Parse("", "SELECT 1").encode()[5:])[0] == ""


BINDS = [
    fe.Bind("", "s1", (1,), (b"\x00\x00\x00\x2a", None), (0,)),
    fe.Bind("portal", "s1", (), (b"abc",), ()),
    fe.Bind("", "", (), (), ()),
    fe.Bind("p", "stmt with spaces", (0, 1), (None, b""), (1, 1, 0)),
]


@pytest.mark.parametrize("bind", BINDS, ids=lambda b: f"{b.portal!r}/{b.statement!r}")
def test_bind_statement_splits_portal_name_rest(bind: fe.Bind) -> None:
    body = bind.encode()[5:]
    portal, name, rest = bind_statement(body)
    assert portal == bind.portal.encode() + b"\0"
    assert name == bind.statement
    assert portal + name.encode() + b"\0" + rest == body


@pytest.mark.parametrize("bind", BINDS, ids=lambda b: f"{b.portal!r}/{b.statement!r}")
def test_bind_name_reads_the_statement_name_from_the_whole_message(bind: fe.Bind) -> None:
    assert bind_name(bind.encode()) == bind.statement


@pytest.mark.parametrize("bind", BINDS, ids=lambda b: f"{b.portal!r}/{b.statement!r}")
def test_rename_bind_equals_encoding_with_new_name(bind: fe.Bind) -> None:
    renamed = rename_bind(bind.encode()[5:], "pgr_0123456789abcdef0123")
    expected = fe.Bind(
        bind.portal,
        "pgr_0123456789abcdef0123",
        bind.param_formats,
        bind.params,
        bind.result_formats,
    )
    assert renamed == expected.encode()
    assert fe.Bind.decode(renamed[5:]) == expected


def test_bind_statement_byte_vector() -> None:
    body = b"p\x00s1\x00\x00\x00\x00\x00\x00\x00"
    assert bind_statement(body) == (b"p\x00", "s1", b"\x00\x00\x00\x00\x00\x00")
    assert rename_bind(body, "x") == b"B\x00\x00\x00\x0ep\x00x\x00\x00\x00\x00\x00\x00\x00"


@pytest.mark.parametrize("body", [b"", b"portal", b"portal\x00stmt"])
def test_bind_without_terminators_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        bind_statement(body)
    with pytest.raises(ProtocolError):
        bind_name(b"B" + (len(body) + 4).to_bytes(4, "big") + body)


def test_parse_without_terminator_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        split_parse(b"s1")


@pytest.mark.parametrize("name", ["pgr_0123456789abcdef0123", "", "x"])
def test_describe_and_close_statement_match_frontend_encoding(name: str) -> None:
    assert describe_statement(name) == fe.Describe("S", name).encode()
    assert close_statement(name) == fe.Close("S", name).encode()


def test_with_body_frames() -> None:
    assert with_body(b"D", b"Sx\x00") == b"D\x00\x00\x00\x07Sx\x00"
    assert with_body(b"S", b"") == fe.Sync().encode()
