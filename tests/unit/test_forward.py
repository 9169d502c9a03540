"""router.forward: a client's messages made right for the server connection it holds.

A real ServerConnection is built but never connected: translate() only touches its
tracker, statement set, applied parameters and the client link, which records what the
proxy sends the client itself (synthetic replies).
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from protocol import backend as be
from protocol import frontend as fe
from router.backends import Backend
from router.errors import ClientProtocolViolation
from router.forward import Forwarder, Terminate
from router.prepared import close_statement, describe_statement, server_name_for
from router.server import ServerConnection

PARSE_COMPLETE = be.ParseComplete().encode()
CLOSE_COMPLETE = be.CloseComplete().encode()
QUERY = "SELECT $1::int"
TYPES = (23,)
PGR = server_name_for(QUERY, TYPES)


class Link:
    """Stands in for the client session: records what the proxy sends the client."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)


def make_server(max_prepared: int = 100) -> tuple[ServerConnection, Link]:
    backend = Backend("primary", "primary", "127.0.0.1", 5432, "app")
    server = ServerConnection(backend, "app", 1 << 20, max_prepared)
    link = Link()
    server.client = link  # type: ignore[assignment]
    return server, link


class Pins:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)


def frames(*messages: object) -> list[tuple[str, bytes]]:
    return [(m.TAG, m.encode()) for m in messages]  # type: ignore[attr-defined]


def reply(server: ServerConnection, tags: Iterable[str]) -> list[str]:
    """Feed server reply tags to the tracker; the tags the client sees."""
    seen: list[str] = []
    for tag in tags:
        forward, due = server.tracker.received(tag)
        if forward:
            seen.append(tag)
        i = 0
        while i < len(due):
            seen.append(chr(due[i]))
            i += 1 + int.from_bytes(due[i + 1 : i + 5], "big")
    return seen


def bind(statement: str, portal: str = "") -> fe.Bind:
    return fe.Bind(portal, statement, (), (b"1",), ())


def query(sql: str) -> list[tuple[str, bytes]]:
    return frames(fe.Query(sql))


def run_query(fwd: Forwarder, server: ServerConnection, sql: str, status: str = "I") -> None:
    """Send a simple query, answer it with CommandComplete and ReadyForQuery(status)."""
    fwd.translate(query(sql), server)
    reply(server, "CZ")
    fwd.ready(status)


def extended(
    fwd: Forwarder, server: ServerConnection, sql: str, answer: str, status: str = "I"
) -> None:
    """Unnamed Parse/Bind/Execute/Sync of ``sql``, answered with ``answer`` tags and a
    ReadyForQuery(``status``)."""
    fwd.translate(
        frames(fe.Parse("", sql), fe.Bind("", "", (), (), ()), fe.Execute(""), fe.Sync()),
        server,
    )
    reply(server, answer + "Z")
    fwd.ready(status)


# ---------------------------------------------------------------- session mode


def test_session_mode_passes_bytes_untouched_and_queues_replies() -> None:
    server, link = make_server()
    fwd = Forwarder(False, Pins())
    messages = frames(
        fe.Parse("s1", QUERY, TYPES),
        bind("s1"),
        fe.Describe("P", ""),
        fe.Execute(""),
        fe.Close("S", "s1"),
        fe.Sync(),
    )
    out = fwd.translate(messages, server)
    assert out == b"".join(raw for _, raw in messages)
    assert len(server.tracker) == 6 and server.tracker.syncs == 1
    assert fwd.statements == {} and len(server.statements) == 0
    assert link.sent == []
    assert reply(server, ["1", "2", "T", "D", "C", "3", "Z"]) == ["1", "2", "T", "D", "C", "3", "Z"]
    assert server.tracker.idle


def test_session_mode_query_is_not_inspected() -> None:
    server, _ = make_server()
    pins = Pins()
    fwd = Forwarder(False, pins)
    raw = fe.Query("LISTEN x; SET search_path = a").encode()
    assert fwd.translate([("Q", raw)], server) == raw
    assert fwd.pin_reason is None and pins.reasons == []
    assert server.tracker.syncs == 1


def test_messages_without_replies_are_not_queued() -> None:
    for multiplexed in (False, True):
        server, _ = make_server()
        fwd = Forwarder(multiplexed, Pins())
        messages = frames(fe.Flush(), fe.CopyData(b"1\n"), fe.CopyDone(), fe.CopyFail("x"))
        assert fwd.translate(messages, server) == b"".join(raw for _, raw in messages)
        assert server.tracker.idle


def test_function_call_owes_ready() -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    raw = fe.FunctionCall(1598, (), (), 0).encode()
    assert fwd.translate([("F", raw)], server) == raw
    assert server.tracker.syncs == 1


# ---------------------------------------------------------------- transaction mode: statements


def test_named_parse_renamed_to_server_name() -> None:
    server, link = make_server()
    fwd = Forwarder(True, Pins())
    out = fwd.translate(frames(fe.Parse("s1", QUERY, TYPES)), server)
    assert out == fe.Parse(PGR, QUERY, TYPES).encode()
    assert PGR in server.statements
    assert fwd.statements["s1"].server_name == PGR
    assert len(server.tracker) == 1 and link.sent == []
    assert PGR not in fwd.parsed  # only once the server said ParseComplete
    assert reply(server, "1") == ["1"]
    assert PGR in fwd.parsed


def test_failed_parse_forgotten_by_server_set() -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    fwd.translate(frames(fe.Parse("s1", QUERY, TYPES), fe.Sync()), server)
    assert reply(server, "EZ") == ["E", "Z"]
    assert PGR not in server.statements
    assert PGR not in fwd.parsed


def test_second_client_same_server_gets_synthetic_parse_complete() -> None:
    server, link = make_server()
    shared: set[str] = set()
    first = Forwarder(True, Pins(), shared)
    first.translate(frames(fe.Parse("s1", QUERY, TYPES), fe.Sync()), server)
    reply(server, "1Z")
    second = Forwarder(True, Pins(), shared)
    out = second.translate(frames(fe.Parse("other", QUERY, TYPES)), server)
    assert out == b""
    assert link.sent == [PARSE_COMPLETE]
    assert second.statements["other"].server_name == PGR
    assert server.tracker.idle


def test_synthetic_parse_complete_waits_for_earlier_replies() -> None:
    server, link = make_server()
    fwd = Forwarder(True, Pins())
    out = fwd.translate(
        frames(fe.Parse("a", QUERY, TYPES), fe.Parse("b", QUERY, TYPES), fe.Sync()), server
    )
    assert out == fe.Parse(PGR, QUERY, TYPES).encode() + fe.Sync().encode()
    assert link.sent == []
    assert reply(server, "1Z") == ["1", "1", "Z"]


def test_bind_of_statement_server_lacks_injects_swallowed_parse() -> None:
    first, _ = make_server()
    fwd = Forwarder(True, Pins())
    fwd.translate(frames(fe.Parse("s1", QUERY, TYPES), fe.Sync()), first)
    reply(first, "1Z")
    other, _ = make_server()
    out = fwd.translate(frames(bind("s1"), fe.Execute(""), fe.Sync()), other)
    assert out == (
        fe.Parse(PGR, QUERY, TYPES).encode()
        + bind(PGR).encode()
        + fe.Execute("").encode()
        + fe.Sync().encode()
    )
    assert other.tracker.swallows == 1
    assert PGR in other.statements
    assert reply(other, ["1", "2", "D", "C", "Z"]) == ["2", "D", "C", "Z"]


def test_bind_of_statement_server_has_is_only_renamed() -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    fwd.translate(frames(fe.Parse("s1", QUERY, TYPES), fe.Sync()), server)
    reply(server, "1Z")
    out = fwd.translate(frames(bind("s1", "portal"), fe.Sync()), server)
    assert out == bind(PGR, "portal").encode() + fe.Sync().encode()
    assert server.tracker.swallows == 0


def test_describe_named_statement_renamed_portal_untouched() -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    fwd.translate(frames(fe.Parse("s1", QUERY, TYPES), fe.Sync()), server)
    reply(server, "1Z")
    out = fwd.translate(frames(fe.Describe("S", "s1"), fe.Describe("P", "s1")), server)
    assert out == describe_statement(PGR) + fe.Describe("P", "s1").encode()
    assert len(server.tracker) == 2


def test_describe_on_server_lacking_statement_injects_parse() -> None:
    first, _ = make_server()
    fwd = Forwarder(True, Pins())
    fwd.translate(frames(fe.Parse("s1", QUERY, TYPES)), first)
    other, _ = make_server()
    out = fwd.translate(frames(fe.Describe("S", "s1"), fe.Sync()), other)
    assert (
        out == fe.Parse(PGR, QUERY, TYPES).encode() + describe_statement(PGR) + fe.Sync().encode()
    )
    assert reply(other, "1tTZ") == ["t", "T", "Z"]


def test_close_named_statement_answered_synthetically() -> None:
    server, link = make_server()
    fwd = Forwarder(True, Pins())
    fwd.translate(frames(fe.Parse("s1", QUERY, TYPES), fe.Sync()), server)
    reply(server, "1Z")
    assert fwd.translate(frames(fe.Close("S", "s1")), server) == b""
    assert link.sent == [CLOSE_COMPLETE]
    assert "s1" not in fwd.statements
    assert PGR in server.statements  # other clients may share it
    assert server.tracker.idle
    # Unknown to the client now: a Bind passes with its own name, the server answers.
    assert fwd.translate(frames(bind("s1")), server) == bind("s1").encode()


def test_close_portal_and_unnamed_statement_pass() -> None:
    server, link = make_server()
    fwd = Forwarder(True, Pins())
    messages = frames(fe.Close("P", "p1"), fe.Close("S", ""))
    assert fwd.translate(messages, server) == b"".join(raw for _, raw in messages)
    assert len(server.tracker) == 2 and link.sent == []


def test_unnamed_statement_passes_unchanged() -> None:
    server, link = make_server()
    fwd = Forwarder(True, Pins())
    messages = frames(
        fe.Parse("", QUERY, TYPES), bind(""), fe.Describe("S", ""), fe.Execute(""), fe.Sync()
    )
    assert fwd.translate(messages, server) == b"".join(raw for _, raw in messages)
    assert len(server.statements) == 0 and fwd.statements == {}
    assert len(server.tracker) == 5 and link.sent == []


def test_full_server_evicts_least_recent_statement_with_swallowed_close() -> None:
    server, _ = make_server(max_prepared=1)
    fwd = Forwarder(True, Pins())
    other_query = "SELECT 2"
    other = server_name_for(other_query, ())
    out = fwd.translate(
        frames(fe.Parse("a", QUERY, TYPES), fe.Parse("b", other_query), fe.Sync()), server
    )
    assert out == (
        fe.Parse(PGR, QUERY, TYPES).encode()
        + close_statement(PGR)
        + fe.Parse(other, other_query).encode()
        + fe.Sync().encode()
    )
    assert server.tracker.swallows == 1
    assert PGR not in server.statements and other in server.statements
    assert reply(server, "131Z") == ["1", "1", "Z"]


# ---------------------------------------------------------------- pinning and SET tracking


def test_listen_pins_once() -> None:
    server, _ = make_server()
    pins = Pins()
    fwd = Forwarder(True, pins)
    raw = fe.Query("LISTEN x").encode()
    assert fwd.translate([("Q", raw)], server) == raw
    assert fwd.pin_reason == "LISTEN"
    fwd.translate(query("SET ROLE bob"), server)
    assert fwd.pin_reason == "LISTEN"
    assert pins.reasons == ["LISTEN"]
    assert server.tracker.syncs == 2


def test_session_function_in_extended_parse_pins() -> None:
    server, _ = make_server()
    pins = Pins()
    fwd = Forwarder(True, pins)
    fwd.translate(frames(fe.Parse("", "SELECT pg_advisory_lock(1)")), server)
    assert pins.reasons == [fwd.pin_reason] and fwd.pin_reason is not None


def test_set_tracked_only_after_ready_idle() -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    raw = fe.Query("SET search_path = x").encode()
    assert fwd.translate([("Q", raw)], server) == raw
    assert fwd.tracked == {}
    reply(server, "CZ")
    fwd.ready("I")
    assert fwd.tracked == {"search_path": "SET search_path = x"}


def test_set_in_transaction_tracked_at_commit() -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    run_query(fwd, server, "BEGIN", "T")
    run_query(fwd, server, "SET statement_timeout = 5000", "T")
    assert fwd.tracked == {}
    run_query(fwd, server, "COMMIT", "I")
    assert fwd.tracked == {"statement_timeout": "SET statement_timeout = 5000"}


def test_set_discarded_when_query_errored() -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    fwd.translate(query("SET statement_timeout = 'abc'"), server)
    assert reply(server, "EZ") == ["E", "Z"]
    fwd.ready("I")
    assert fwd.tracked == {}
    run_query(fwd, server, "SET statement_timeout = 5")  # the failure does not linger
    assert fwd.tracked == {"statement_timeout": "SET statement_timeout = 5"}


def test_set_discarded_when_transaction_failed() -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    run_query(fwd, server, "BEGIN", "T")
    run_query(fwd, server, "SET search_path = a", "T")
    fwd.translate(query("SELECT 1/0"), server)
    reply(server, "EZ")
    fwd.ready("E")
    run_query(fwd, server, "COMMIT", "I")  # the server answers ROLLBACK
    assert fwd.tracked == {}


@pytest.mark.parametrize("end", ["ROLLBACK", "rollback", "ABORT", "/* x */ ROLLBACK"])
def test_set_discarded_when_transaction_rolled_back(end: str) -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    run_query(fwd, server, "BEGIN", "T")
    run_query(fwd, server, "SET search_path = a", "T")
    run_query(fwd, server, end, "I")
    assert fwd.tracked == {}
    run_query(fwd, server, "SET search_path = b")
    assert fwd.tracked == {"search_path": "SET search_path = b"}


def test_reset_and_default_untrack() -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    run_query(fwd, server, "SET search_path = a; SET statement_timeout = 5")
    assert set(fwd.tracked) == {"search_path", "statement_timeout"}
    run_query(fwd, server, "RESET search_path")
    run_query(fwd, server, "SET statement_timeout TO DEFAULT")
    assert fwd.tracked == {}


def test_reported_parameters_not_text_tracked() -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    run_query(fwd, server, "SET application_name = 'x'; SET TIME ZONE 'UTC'")
    assert fwd.tracked == {} and fwd.pin_reason is None


def test_reset_all_forgets_tracked_and_applied() -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    run_query(fwd, server, "SET search_path = a")
    server.applied = {"search_path": "SET search_path = a"}
    run_query(fwd, server, "RESET ALL")
    assert fwd.tracked == {} and server.applied == {}


def test_discard_all_forgets_statements_everywhere() -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    fwd.translate(frames(fe.Parse("s1", QUERY, TYPES), fe.Sync()), server)
    reply(server, "1Z")
    raw = fe.Query("DISCARD ALL").encode()
    assert fwd.translate([("Q", raw)], server) == raw
    assert fwd.statements == {} and len(server.statements) == 0


# ---------------------------------------------------------------- DEALLOCATE


def test_deallocate_protocol_statement_answered_synthetically() -> None:
    server, link = make_server()
    fwd = Forwarder(True, Pins())
    fwd.translate(frames(fe.Parse("s1", QUERY, TYPES), fe.Sync()), server)
    reply(server, "1Z")
    server.tx_status = "T"
    assert fwd.translate(query("DEALLOCATE s1"), server) == b""
    assert link.sent == [be.CommandComplete("DEALLOCATE").encode() + be.ReadyForQuery("T").encode()]
    assert "s1" not in fwd.statements
    assert server.tracker.idle


def test_deallocate_quoted_protocol_name() -> None:
    server, link = make_server()
    fwd = Forwarder(True, Pins())
    fwd.translate(frames(fe.Parse("My Stmt", QUERY, TYPES), fe.Sync()), server)
    reply(server, "1Z")
    assert fwd.translate(query('DEALLOCATE PREPARE "My Stmt"'), server) == b""
    assert fwd.statements == {}
    assert len(link.sent) == 1


def test_deallocate_of_sql_level_statement_goes_to_server() -> None:
    server, link = make_server()
    fwd = Forwarder(True, Pins())
    raw = fe.Query("DEALLOCATE q").encode()
    assert fwd.translate([("Q", raw)], server) == raw
    assert link.sent == [] and server.tracker.syncs == 1


def test_deallocate_inside_multi_statement_query_goes_to_server() -> None:
    server, link = make_server()
    fwd = Forwarder(True, Pins())
    fwd.translate(frames(fe.Parse("s1", QUERY, TYPES), fe.Sync()), server)
    reply(server, "1Z")
    raw = fe.Query("DEALLOCATE s1; SELECT 1").encode()
    assert fwd.translate([("Q", raw)], server) == raw
    assert link.sent == []


# ---------------------------------------------------------------- answer_locally


def parsed_forwarder(*server_names: str) -> Forwarder:
    return Forwarder(True, Pins(), set(server_names))


def test_answer_locally_parse_sync_of_known_statements() -> None:
    other = server_name_for("SELECT 2", ())
    fwd = parsed_forwarder(PGR, other)
    answer = fwd.answer_locally(
        frames(fe.Parse("a", QUERY, TYPES), fe.Parse("b", "SELECT 2"), fe.Sync())
    )
    assert answer == PARSE_COMPLETE * 2 + be.ReadyForQuery("I").encode()
    assert fwd.statements["a"].server_name == PGR
    assert fwd.statements["b"].server_name == other


@pytest.mark.parametrize(
    "messages",
    [
        [fe.Parse("a", "SELECT 3"), fe.Sync()],  # never parsed
        [fe.Parse("", QUERY, TYPES), fe.Sync()],  # unnamed
        [fe.Parse("a", QUERY, (25,)), fe.Sync()],  # other parameter types
        [fe.Parse("a", QUERY, TYPES)],  # no Sync
        [fe.Sync()],
        [fe.Parse("a", QUERY, TYPES), fe.Flush()],
        [fe.Parse("a", QUERY, TYPES), bind("a"), fe.Sync()],
        [fe.Parse("a", QUERY, TYPES), fe.Describe("S", "a"), fe.Sync()],
    ],
)
def test_answer_locally_needs_a_server(messages: list[object]) -> None:
    fwd = parsed_forwarder(PGR)
    assert fwd.answer_locally(frames(*messages)) is None
    assert fwd.statements == {}


def test_answer_locally_not_for_statements_with_session_effect() -> None:
    sql = "SELECT pg_advisory_lock(1)"
    fwd = parsed_forwarder(server_name_for(sql, ()))
    assert fwd.answer_locally(frames(fe.Parse("a", sql), fe.Sync())) is None


# ---------------------------------------------------------------- bad input and Terminate


@pytest.mark.parametrize("multiplexed", [False, True])
def test_unknown_tag_is_a_protocol_violation(multiplexed: bool) -> None:
    server, _ = make_server()
    fwd = Forwarder(multiplexed, Pins())
    with pytest.raises(ClientProtocolViolation, match="'Z'"):
        fwd.translate([("Z", b"Z\x00\x00\x00\x05I")], server)


@pytest.mark.parametrize("multiplexed", [False, True])
def test_terminate_carries_bytes_before_it(multiplexed: bool) -> None:
    server, _ = make_server()
    fwd = Forwarder(multiplexed, Pins())
    before = fe.Query("SELECT 1").encode()
    with pytest.raises(Terminate) as raised:
        fwd.translate(frames(fe.Query("SELECT 1"), fe.Terminate(), fe.Query("SELECT 2")), server)
    assert raised.value.data == before


def test_terminate_first_carries_nothing() -> None:
    server, _ = make_server()
    with pytest.raises(Terminate) as raised:
        Forwarder(True, Pins()).translate(frames(fe.Terminate()), server)
    assert raised.value.data == b""


def test_terminate_after_renamed_parse_carries_the_renamed_bytes() -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    with pytest.raises(Terminate) as raised:
        fwd.translate(frames(fe.Parse("s1", QUERY, TYPES), fe.Terminate()), server)
    assert raised.value.data == fe.Parse(PGR, QUERY, TYPES).encode()


# ---------------------------------------------------------------- regressions


def test_set_failing_in_extended_protocol_is_not_tracked() -> None:
    # Drivers that send everything with Parse/Bind/Execute (JDBC, Npgsql): a SET that
    # fails at Execute was recorded anyway, and replaying it broke every later attach.
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    extended(fwd, server, "SET statement_timeout = 'abc'", "12E")
    assert fwd.tracked == {}


def test_rollback_sent_with_extended_protocol_discards_sets() -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    extended(fwd, server, "BEGIN", "12C", "T")
    extended(fwd, server, "SET search_path = a", "12C", "T")
    extended(fwd, server, "ROLLBACK", "12C", "I")
    assert fwd.tracked == {}


def test_set_committed_with_extended_protocol_is_tracked() -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    extended(fwd, server, "BEGIN", "12C", "T")
    extended(fwd, server, "SET search_path = a", "12C", "T")
    assert fwd.tracked == {}
    extended(fwd, server, "COMMIT", "12C", "I")
    assert fwd.tracked == {"search_path": "SET search_path = a"}


def test_rollback_at_end_of_same_query_string_discards_sets() -> None:
    server, _ = make_server()
    fwd = Forwarder(True, Pins())
    run_query(fwd, server, "BEGIN; SET search_path = a; ROLLBACK", "I")
    assert fwd.tracked == {}
