"""Deferred BEGIN (router/deferred.py): a bare BEGIN answered by the proxy, sent later in
front of the unit that shows where the transaction belongs.

The tests drive the module's functions with message bytes and assert the exact reply
sequences (``['C:BEGIN', 'Z:T']``: tags, with each CommandComplete's tag and each
ReadyForQuery's status spelled out) and what a ResponseTracker lets through.
"""

from __future__ import annotations

import pytest

from protocol import backend as be
from protocol import frontend as fe
from router.deferred import answer, begin_tag, end_tag, planned_unit
from router.tracker import Request, ResponseTracker

Frame = tuple[str, bytes]


def messages(data: bytes) -> list[Frame]:
    """(tag, body) of each whole message in ``data``."""
    out = []
    i = 0
    while i < len(data):
        length = int.from_bytes(data[i + 1 : i + 5], "big")
        out.append((chr(data[i]), data[i + 5 : i + 1 + length]))
        i += 1 + length
    assert i == len(data), "replies must be whole messages"
    return out


def tags(data: bytes) -> list[str]:
    return [tag for tag, _ in messages(data)]


def shown(data: bytes) -> list[str]:
    """Tags, with each ReadyForQuery's status and each CommandComplete's tag spelled
    out: ``['C:BEGIN', 'Z:T']``."""
    out = []
    for tag, body in messages(data):
        if tag == "Z":
            out.append(f"Z:{chr(body[0])}")
        elif tag == "C":
            out.append(f"C:{be.CommandComplete.decode(body).tag}")
        elif tag == "E":
            out.append(f"E:{be.ErrorResponse.decode(body).sqlstate}")
        else:
            out.append(tag)
    return out


def queries(data: bytes) -> list[str]:
    """What a server was sent: each Query's SQL, each Parse's SQL as ``P:sql``, other
    messages by tag."""
    out = []
    for tag, body in messages(data):
        if tag == "Q":
            out.append(fe.Query.decode(body).sql)
        elif tag == "P":
            out.append("P:" + fe.Parse.decode(body).query)
        else:
            out.append(tag)
    return out


def query(sql: str) -> list[Frame]:
    return [("Q", fe.Query(sql).encode())]


def extended(sql: str) -> bytes:
    """Parse/Bind/Describe/Execute/Sync of an unnamed statement, as psycopg sends it."""
    return (
        fe.Parse("", sql).encode()
        + fe.Bind("", "", (), (), ()).encode()
        + fe.Describe("P", "").encode()
        + fe.Execute("").encode()
        + fe.Sync().encode()
    )


def done(tag: str, status: str) -> bytes:
    return be.CommandComplete(tag).encode() + be.ReadyForQuery(status).encode()


def row(*values: bytes) -> bytes:
    fields = tuple(be.FieldDescription(f"c{i}") for i in range(len(values)))
    return be.RowDescription(fields).encode() + be.DataRow(values).encode()


# --------------------------------------------------------------------------- the module


@pytest.mark.parametrize(
    ("sql", "tag"),
    [
        ("BEGIN", "BEGIN"),
        ("begin;", "BEGIN"),
        ("BEGIN WORK", "BEGIN"),
        ("begin transaction ;", "BEGIN"),
        ("/* app */ START\n TRANSACTION", "START TRANSACTION"),
        ("-- why\nBEGIN", "BEGIN"),
        # Transaction modes could fail at the server, or decide the route: not deferred.
        ("BEGIN READ ONLY", None),
        ("START TRANSACTION READ ONLY", None),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE", None),
        ("BEGIN READ WRITE", None),
        ("BEGIN; SELECT 1", None),
        ("BEGIN 'x'", None),
        ("BEGIN -- trailing", None),
        ("/* pgrouter:primary */ BEGIN", None),
        ("START", None),
        ("SELECT 'BEGIN'", None),
    ],
)
def test_only_a_bare_begin_alone_in_a_query_is_deferred(sql: str, tag: str | None) -> None:
    assert begin_tag(query(sql)) == tag


def test_a_begin_in_the_extended_protocol_is_not_deferred() -> None:
    assert begin_tag(messages(fe.Parse("", "BEGIN").encode() + fe.Sync().encode())) is None
    assert begin_tag(messages(fe.Query("BEGIN").encode() * 2)) is None


@pytest.mark.parametrize(
    ("sql", "tag"),
    [
        ("COMMIT", "COMMIT"),
        ("end;", "COMMIT"),
        ("COMMIT WORK", "COMMIT"),
        ("ROLLBACK", "ROLLBACK"),
        ("abort transaction", "ROLLBACK"),
        ("COMMIT AND CHAIN", None),
        ("ROLLBACK TO SAVEPOINT a", None),
        ("ROLLBACK PREPARED 'x'", None),
        ("PREPARE TRANSACTION 'x'", None),
        ("COMMIT; SELECT 1", None),
    ],
)
def test_bare_transaction_ends(sql: str, tag: str | None) -> None:
    assert end_tag(query(sql)) == tag


def test_local_begin_replies_command_complete_and_ready_in_transaction() -> None:
    local = answer(query("BEGIN"), None, "I", may_defer=True)
    assert local is not None and local.deferred is not None
    assert shown(local.reply) == ["C:BEGIN", "Z:T"]
    assert local.status == "T"
    start = answer(query("START TRANSACTION"), None, "I", may_defer=True)
    assert start is not None and shown(start.reply) == ["C:START TRANSACTION", "Z:T"]


def test_begin_is_not_deferred_unless_allowed_and_idle() -> None:
    assert answer(query("BEGIN"), None, "I", may_defer=False) is None
    assert answer(query("BEGIN"), None, "T", may_defer=True) is None
    assert answer(query("SELECT 1"), None, "I", may_defer=True) is None


def test_commit_or_rollback_after_a_deferred_begin_is_answered_locally() -> None:
    begun = answer(query("BEGIN"), None, "I", may_defer=True)
    assert begun is not None
    for sql, tag in [("COMMIT", "COMMIT"), ("END", "COMMIT"), ("ROLLBACK", "ROLLBACK")]:
        local = answer(query(sql), begun.deferred, "T", may_defer=True)
        assert local is not None and local.deferred is None
        assert shown(local.reply) == [f"C:{tag}", "Z:I"]
        assert local.status == "I"


def test_other_units_after_a_deferred_begin_go_to_a_server() -> None:
    begun = answer(query("BEGIN"), None, "I", may_defer=True)
    assert begun is not None
    for sql in ["SET TRANSACTION READ ONLY", "SELECT 1", "UPDATE t SET v = 1", "BEGIN"]:
        assert answer(query(sql), begun.deferred, "T", may_defer=True) is None


def test_a_failed_deferred_transaction_answers_25p02_until_it_ends() -> None:
    begun = answer(query("BEGIN"), None, "I", may_defer=True)
    assert begun is not None
    local = answer(query("SELECT 1"), begun.deferred, "E", may_defer=True)
    assert local is not None and local.deferred is begun.deferred
    assert shown(local.reply) == ["E:25P02", "Z:E"]
    local = answer(messages(extended("SELECT 1")), begun.deferred, "E", may_defer=True)
    assert local is not None and shown(local.reply) == ["E:25P02", "Z:E"]
    # PostgreSQL ends a failed transaction with ROLLBACK, whether asked to commit or not.
    local = answer(query("COMMIT"), begun.deferred, "E", may_defer=True)
    assert local is not None and local.deferred is None
    assert shown(local.reply) == ["C:ROLLBACK", "Z:I"]


def test_the_next_unit_is_planned_behind_the_begin() -> None:
    begun = answer(query("BEGIN"), None, "I", may_defer=True)
    assert begun is not None and begun.deferred is not None
    unit = query("SET TRANSACTION READ ONLY")
    assert planned_unit(None, unit) == unit
    assert planned_unit(begun.deferred, unit) == query("BEGIN") + unit


def test_injected_begin_goes_first_and_only_its_success_is_swallowed() -> None:
    begun = answer(query("BEGIN"), None, "I", may_defer=True)
    assert begun is not None and begun.deferred is not None
    tracker = ResponseTracker()
    sent = begun.deferred.inject(tracker)
    assert queries(sent) == ["BEGIN"]
    assert begun.deferred.answering(tracker)
    tracker.expect(Request("Q"))  # the unit sent behind it
    seen = []
    for tag in "CZTDCZ":
        forward, due = tracker.received(tag, b"T" if tag == "Z" else b"")
        assert due == b""
        if forward:
            seen.append(tag)
        elif tag == "Z":
            assert not begun.deferred.answering(tracker)  # the BEGIN is answered
    assert seen == ["T", "D", "C", "Z"]
    assert tracker.idle


def test_an_error_to_the_injected_begin_still_reaches_the_client() -> None:
    begun = answer(query("BEGIN"), None, "I", may_defer=True)
    assert begun is not None and begun.deferred is not None
    tracker = ResponseTracker()
    begun.deferred.inject(tracker)
    assert tracker.received("E") == (True, b"")
    assert tracker.received("Z", b"I") == (False, b"")
