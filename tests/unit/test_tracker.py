"""router.tracker: which server reply answers which request, and what the client sees.

Each test queues the requests a client (or the proxy) sent, feeds the server's reply tags
one by one, and asserts the exact sequence the client receives: forwarded tags plus the
synthetic replies the tracker emits in their place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from protocol import backend as be
from router.tracker import PASS, SWALLOW, SYNTH, Request, ResponseTracker

PARSE_COMPLETE = be.ParseComplete().encode()
CLOSE_COMPLETE = be.CloseComplete().encode()
DEALLOCATED = be.CommandComplete("DEALLOCATE").encode() + be.ReadyForQuery("I").encode()


def tags_of(data: bytes) -> list[str]:
    """The tags of the whole messages in ``data``."""
    tags = []
    i = 0
    while i < len(data):
        tags.append(chr(data[i]))
        i += 1 + int.from_bytes(data[i + 1 : i + 5], "big")
    assert i == len(data), "synthetic replies must be whole messages"
    return tags


def client_sees(tracker: ResponseTracker, server_tags: Iterable[str]) -> list[str]:
    """Feed server reply tags; the tags the client receives, synthetic ones included."""
    seen: list[str] = []
    for tag in server_tags:
        forward, due = tracker.received(tag)
        if forward:
            seen.append(tag)
        seen += tags_of(due)
    return seen


def queue(tracker: ResponseTracker, kinds: str) -> None:
    for kind in kinds:
        assert tracker.expect(Request(kind)) == b""


class Calls:
    """Records callback invocations by label, in order."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def __call__(self, label: str) -> Callable[[], None]:
        return lambda: self.log.append(label)


# ---------------------------------------------------------------- simple Query


def test_simple_query_rows_then_ready() -> None:
    tracker = ResponseTracker()
    queue(tracker, "Q")
    assert client_sees(tracker, "TDDC") == ["T", "D", "D", "C"]
    assert not tracker.idle
    assert client_sees(tracker, "Z") == ["Z"]
    assert tracker.idle


def test_multi_statement_query_error_in_middle_does_not_end_it() -> None:
    calls = Calls()
    tracker = ResponseTracker()
    tracker.expect(Request("Q", on_error=calls("q")))
    assert client_sees(tracker, ["T", "D", "C", "E"]) == ["T", "D", "C", "E"]
    assert calls.log == ["q"]
    assert len(tracker) == 1 and tracker.syncs == 1  # E does not end a Query, Z does
    assert client_sees(tracker, "Z") == ["Z"]
    assert tracker.idle and tracker.syncs == 0


def test_empty_query_response_does_not_end_simple_query() -> None:
    tracker = ResponseTracker()
    queue(tracker, "Q")
    assert client_sees(tracker, "I") == ["I"]
    assert not tracker.idle
    assert client_sees(tracker, "Z") == ["Z"]
    assert tracker.idle


def test_pipelined_queries_each_end_with_their_ready() -> None:
    tracker = ResponseTracker()
    queue(tracker, "QQ")
    assert tracker.syncs == 2
    assert client_sees(tracker, "CZ") == ["C", "Z"]
    assert len(tracker) == 1 and tracker.syncs == 1
    assert client_sees(tracker, "CZ") == ["C", "Z"]
    assert tracker.idle and tracker.syncs == 0


def test_copy_in_inside_simple_query() -> None:
    tracker = ResponseTracker()
    queue(tracker, "Q")
    assert client_sees(tracker, "GCZ") == ["G", "C", "Z"]
    assert tracker.idle


def test_error_answering_query_after_failed_pipeline_keeps_the_sync() -> None:
    # ErrorResponse for a Sync (e.g. a deferred constraint failing at commit): Z ends it.
    tracker = ResponseTracker()
    queue(tracker, "S")
    assert client_sees(tracker, "E") == ["E"]
    assert len(tracker) == 1
    assert client_sees(tracker, "Z") == ["Z"]
    assert tracker.idle


# ---------------------------------------------------------------- extended protocol


def test_parse_bind_describe_execute_sync_exact_sequence() -> None:
    tracker = ResponseTracker()
    queue(tracker, "PBDES")
    lengths = []
    seen = []
    for tag in ["1", "2", "T", "D", "D", "C", "Z"]:
        seen += client_sees(tracker, [tag])
        lengths.append(len(tracker))
    assert seen == ["1", "2", "T", "D", "D", "C", "Z"]
    assert lengths == [4, 3, 2, 2, 2, 1, 0]
    assert tracker.idle


def test_describe_statement_parameter_description_then_row_description() -> None:
    tracker = ResponseTracker()
    queue(tracker, "D")
    assert client_sees(tracker, "t") == ["t"]
    assert len(tracker) == 1  # 't' does not complete a Describe
    assert client_sees(tracker, "T") == ["T"]
    assert tracker.idle


def test_describe_statement_without_result_ends_with_no_data() -> None:
    tracker = ResponseTracker()
    queue(tracker, "DS")
    assert client_sees(tracker, "tnZ") == ["t", "n", "Z"]
    assert tracker.idle


def test_execute_ends_with_command_complete_empty_query_or_suspended() -> None:
    for end in "CIs":
        tracker = ResponseTracker()
        queue(tracker, "ES")
        assert client_sees(tracker, ["D", end]) == ["D", end]
        assert len(tracker) == 1, end
        assert client_sees(tracker, "Z") == ["Z"]
        assert tracker.idle


def test_close_completes_with_close_complete() -> None:
    tracker = ResponseTracker()
    queue(tracker, "CS")
    assert client_sees(tracker, "3") == ["3"]
    assert len(tracker) == 1
    assert client_sees(tracker, "Z") == ["Z"]


def test_function_call_ends_with_ready() -> None:
    tracker = ResponseTracker()
    queue(tracker, "F")
    assert tracker.syncs == 1
    assert client_sees(tracker, "V") == ["V"]
    assert not tracker.idle
    assert client_sees(tracker, "Z") == ["Z"]
    assert tracker.idle and tracker.syncs == 0


def test_copy_in_inside_execute() -> None:
    tracker = ResponseTracker()
    queue(tracker, "PBES")
    assert client_sees(tracker, "12G") == ["1", "2", "G"]
    assert len(tracker) == 2  # Execute still owed: the client sends CopyData now
    assert client_sees(tracker, "CZ") == ["C", "Z"]
    assert tracker.idle


def test_copy_out_inside_execute() -> None:
    tracker = ResponseTracker()
    queue(tracker, "BES")
    assert client_sees(tracker, ["2", "H", "d", "d", "c", "C", "Z"]) == [
        "2",
        "H",
        "d",
        "d",
        "c",
        "C",
        "Z",
    ]
    assert tracker.idle


# ---------------------------------------------------------------- errors in a pipeline


def test_error_in_pipeline_drops_requests_up_to_sync() -> None:
    calls = Calls()
    tracker = ResponseTracker()
    tracker.expect(Request("P", on_error=calls("P1")))
    tracker.expect(Request("B", on_error=calls("B1")))
    tracker.expect(Request("E", on_error=calls("E1")))
    tracker.expect(Request("P", SYNTH, PARSE_COMPLETE, on_error=calls("P2")))
    tracker.expect(Request("B", on_error=calls("B2")))
    tracker.expect(Request("E", on_error=calls("E2")))
    tracker.expect(Request("S", on_error=calls("S")))
    assert client_sees(tracker, "1") == ["1"]
    assert client_sees(tracker, "E") == ["E"]  # the synthetic '1' of P2 is dropped
    assert calls.log == ["B1", "E1", "P2", "B2", "E2"]
    assert len(tracker) == 1 and tracker.syncs == 1
    assert client_sees(tracker, "Z") == ["Z"]
    assert tracker.idle


def test_error_in_first_batch_leaves_the_next_batch_intact() -> None:
    tracker = ResponseTracker()
    queue(tracker, "PBESPBES")
    assert client_sees(tracker, "EZ") == ["E", "Z"]
    assert len(tracker) == 4
    assert client_sees(tracker, ["1", "2", "C", "Z"]) == ["1", "2", "C", "Z"]
    assert tracker.idle


def test_error_without_sync_queued_drops_everything_owed() -> None:
    # Parse/Bind/Execute/Flush: the Sync has not been sent yet.
    tracker = ResponseTracker()
    queue(tracker, "PBE")
    assert client_sees(tracker, "1E") == ["1", "E"]
    assert tracker.idle
    queue(tracker, "S")
    assert client_sees(tracker, "Z") == ["Z"]
    assert tracker.idle


def test_error_drops_queued_simple_query_too() -> None:
    # The server ignores every message, Query included, until Sync.
    tracker = ResponseTracker()
    queue(tracker, "PQS")
    assert client_sees(tracker, "E") == ["E"]
    assert len(tracker) == 1 and tracker.syncs == 1


def test_error_drops_swallowed_requests_and_their_count() -> None:
    tracker = ResponseTracker()
    queue(tracker, "B")
    tracker.expect(Request("C", SWALLOW))
    tracker.expect(Request("P", SWALLOW))
    queue(tracker, "S")
    assert tracker.swallows == 2
    assert client_sees(tracker, "EZ") == ["E", "Z"]
    assert tracker.swallows == 0 and tracker.idle


# ---------------------------------------------------------------- swallowed replies


def test_injected_parse_reply_is_swallowed() -> None:
    tracker = ResponseTracker()
    tracker.expect(Request("P", SWALLOW))
    queue(tracker, "BES")
    assert tracker.swallows == 1
    assert client_sees(tracker, ["1", "2", "D", "C", "Z"]) == ["2", "D", "C", "Z"]
    assert tracker.swallows == 0 and tracker.idle


def test_error_from_injected_parse_is_forwarded() -> None:
    calls = Calls()
    tracker = ResponseTracker()
    tracker.expect(Request("P", SWALLOW, on_error=calls("P"), on_ok=calls("ok")))
    tracker.expect(Request("B", on_error=calls("B")))
    tracker.expect(Request("E", on_error=calls("E")))
    tracker.expect(Request("S"))
    assert client_sees(tracker, "EZ") == ["E", "Z"]
    assert calls.log == ["P", "B", "E"]
    assert tracker.swallows == 0 and tracker.idle


def test_injected_close_then_parse_both_swallowed() -> None:
    tracker = ResponseTracker()
    tracker.expect(Request("C", SWALLOW))
    tracker.expect(Request("P", SWALLOW))
    queue(tracker, "BES")
    assert client_sees(tracker, ["3", "1", "2", "C", "Z"]) == ["2", "C", "Z"]


def test_async_messages_forwarded_while_swallowing() -> None:
    tracker = ResponseTracker()
    tracker.expect(Request("P", SWALLOW))
    queue(tracker, "S")
    assert client_sees(tracker, ["N", "A", "S", "1", "Z"]) == ["N", "A", "S", "Z"]


# ---------------------------------------------------------------- synthetic replies


def test_synthetic_reply_due_at_once_when_nothing_is_owed() -> None:
    tracker = ResponseTracker()
    assert tracker.expect(Request("P", SYNTH, PARSE_COMPLETE)) == PARSE_COMPLETE
    assert tracker.idle and len(tracker) == 0


def test_synthetic_reply_follows_the_reply_before_it() -> None:
    tracker = ResponseTracker()
    queue(tracker, "P")
    assert tracker.expect(Request("P", SYNTH, PARSE_COMPLETE)) == b""
    queue(tracker, "BS")
    forward, due = tracker.received("1")
    assert (forward, due) == (True, PARSE_COMPLETE)
    assert client_sees(tracker, "2Z") == ["2", "Z"]
    assert tracker.idle


def test_consecutive_synthetic_replies_emitted_together_in_order() -> None:
    tracker = ResponseTracker()
    queue(tracker, "Q")
    tracker.expect(Request("P", SYNTH, PARSE_COMPLETE))
    tracker.expect(Request("C", SYNTH, CLOSE_COMPLETE))
    tracker.expect(Request("Q", SYNTH, DEALLOCATED))
    assert tracker.syncs == 2  # the synthetic Query still counts until emitted
    forward, due = tracker.received("Z")
    assert forward
    assert due == PARSE_COMPLETE + CLOSE_COMPLETE + DEALLOCATED
    assert tracker.idle and tracker.syncs == 0


def test_synthetic_reply_after_swallowed_one() -> None:
    tracker = ResponseTracker()
    tracker.expect(Request("P", SWALLOW))
    tracker.expect(Request("C", SYNTH, CLOSE_COMPLETE))
    queue(tracker, "S")
    assert client_sees(tracker, "1Z") == ["3", "Z"]


def test_synthetic_reply_waits_behind_async_message() -> None:
    tracker = ResponseTracker()
    queue(tracker, "P")
    tracker.expect(Request("P", SYNTH, PARSE_COMPLETE))
    assert tracker.received("N") == (True, b"")
    assert tracker.received("1") == (True, PARSE_COMPLETE)


# ---------------------------------------------------------------- asynchronous messages


def test_async_messages_forwarded_mid_request_without_completing_it() -> None:
    tracker = ResponseTracker()
    queue(tracker, "Q")
    assert client_sees(tracker, ["T", "N", "D", "A", "S", "C"]) == ["T", "N", "D", "A", "S", "C"]
    assert len(tracker) == 1
    assert client_sees(tracker, "Z") == ["Z"]


def test_messages_when_nothing_owed_are_forwarded() -> None:
    tracker = ResponseTracker()
    for tag in "NASEZ":
        assert tracker.received(tag) == (True, b"")
    assert tracker.idle


# ---------------------------------------------------------------- counters and callbacks


def test_counters_follow_the_queue() -> None:
    tracker = ResponseTracker()
    assert tracker.idle and tracker.syncs == 0 and tracker.swallows == 0
    tracker.expect(Request("P", SWALLOW))
    queue(tracker, "BES")
    queue(tracker, "Q")
    queue(tracker, "F")
    assert (len(tracker), tracker.syncs, tracker.swallows) == (6, 3, 1)
    client_sees(tracker, "1")
    assert (len(tracker), tracker.syncs, tracker.swallows) == (5, 3, 0)
    client_sees(tracker, "2CZ")
    assert (len(tracker), tracker.syncs, tracker.swallows) == (2, 2, 0)
    client_sees(tracker, "CZVZ")
    assert (len(tracker), tracker.syncs, tracker.swallows) == (0, 0, 0)
    assert tracker.idle


def test_immediate_synthetic_reply_is_not_counted() -> None:
    tracker = ResponseTracker()
    tracker.expect(Request("Q", SYNTH, DEALLOCATED))
    assert tracker.syncs == 0 and tracker.idle


def test_clear_forgets_everything() -> None:
    tracker = ResponseTracker()
    tracker.expect(Request("P", SWALLOW))
    queue(tracker, "BESQ")
    tracker.clear()
    assert tracker.idle and tracker.syncs == 0 and tracker.swallows == 0
    assert tracker.received("1") == (True, b"")


def test_on_ok_called_on_success_only() -> None:
    calls = Calls()
    tracker = ResponseTracker()
    tracker.expect(Request("P", PASS, on_error=calls("err1"), on_ok=calls("ok1")))
    tracker.expect(Request("S"))
    tracker.expect(Request("P", PASS, on_error=calls("err2"), on_ok=calls("ok2")))
    tracker.expect(Request("S"))
    client_sees(tracker, "1Z")
    assert calls.log == ["ok1"]
    client_sees(tracker, "EZ")
    assert calls.log == ["ok1", "err2"]


def test_on_ok_of_swallowed_parse_called_when_swallowed() -> None:
    calls = Calls()
    tracker = ResponseTracker()
    tracker.expect(Request("P", SWALLOW, on_error=calls("err"), on_ok=calls("ok")))
    assert tracker.received("1") == (False, b"")
    assert calls.log == ["ok"]


def test_query_that_errored_is_not_reported_ok() -> None:
    # A Query whose statement failed is aborted (its implicit transaction rolled back):
    # it must get on_error and never on_ok, as Parse does.
    calls = Calls()
    tracker = ResponseTracker()
    tracker.expect(Request("Q", on_error=calls("err"), on_ok=calls("ok")))
    client_sees(tracker, "EZ")
    assert calls.log == ["err"]


def test_request_repr_names_kind_and_action() -> None:
    assert repr(Request("P", SWALLOW)) == "Request('P', SWALLOW)"
    assert repr(Request("S")) == "Request('S', PASS)"


def test_requests_sent_after_an_error_before_their_sync_are_never_answered() -> None:
    """Regression: the client's Sync came after the server's error. The server ignored
    the requests in between, so the proxy's own follow-up query after that Sync must not
    be matched with replies meant for someone else (its row reached the client)."""
    tracker = ResponseTracker()
    for kind in "PBDE":
        tracker.expect(Request(kind))
    assert tracker.received("1") == (True, b"")
    assert tracker.received("E") == (True, b"")  # Bind failed: skip until Sync
    assert tracker.idle
    dropped: list[str] = []
    for kind in "PBDE":  # sent before the client's Sync, after the error: ignored
        tracker.expect(Request(kind, on_error=lambda k=kind: dropped.append(k)))
    assert dropped == ["P", "B", "D", "E"]
    assert tracker.expect(Request("P", SYNTH, b"1-synthetic")) == b""  # never sent
    tracker.expect(Request("S", hold_ready=True))
    rows: list[bytes] = []
    tracker.expect(
        Request("Q", SWALLOW, on_row=rows.append, finish=lambda status: b"PS", own=True)
    )
    assert tracker.received("Z", b"I") == (False, b"")  # the client's, withheld
    assert tracker.received("T") == (False, b"")
    assert tracker.received("D", b"row") == (False, b"")
    assert tracker.received("C") == (False, b"")
    assert tracker.received("Z", b"I") == (False, b"PSZ\x00\x00\x00\x05I")
    assert rows == [b"row"] and tracker.idle


def test_a_held_ready_with_its_own_finish_reports_the_status_and_sends_nothing_else() -> None:
    """capture_write_lsn off: the unit ending a write is its own capture; its finish
    learns the withheld status, and the client sees the ReadyForQuery unchanged."""
    statuses: list[str] = []

    def finish(status: str) -> bytes:
        statuses.append(status)
        return b""

    tracker = ResponseTracker()
    tracker.expect(Request("B"))
    tracker.expect(Request("E"))
    tracker.expect(Request("S"))
    assert tracker.hold_last_ready(finish=finish)
    assert not tracker.hold_last_ready(finish=finish)  # already held
    assert tracker.swallows == 1
    assert [tracker.received(tag) for tag in "2C"] == [(True, b""), (True, b"")]
    assert tracker.received("Z", b"I") == (False, b"Z\x00\x00\x00\x05I")
    assert statuses == ["I"]
    assert tracker.idle and tracker.swallows == 0
