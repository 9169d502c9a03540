"""Response tracking: which server message answers which request.

Owns: the queue of requests sent to a server connection and not yet fully answered, and
for each server message the verdict: forward it to the client, or swallow it (the answer
to a Parse or Close the proxy injected), and which synthetic replies to send the client
in its place (the ParseComplete / CloseComplete for a statement the server already had).
Must not touch: bytes on sockets (the caller slices chunks by the verdicts), pools.

Theory of operation. Each request the server will answer is queued in send order with
an action. A server message belongs to the request at the head of the queue; the message
that completes a request pops it:

    Parse -> '1'   Bind -> '2'   Close -> '3'   Describe -> 'T' or 'n' (after 't')
    Execute -> 'C', 'I' or 's'   Sync, Query, FunctionCall -> 'Z'

An ErrorResponse completes an extended-protocol request and the server then skips every
request up to the next Sync, so those are popped unanswered (their synthetic replies are
dropped too, as the server would send nothing); when that Sync has not been sent
yet, requests expected until it are dropped the same way as they come. After every
message, synthetic requests that have reached the head are emitted. Asynchronous
messages (NoticeResponse, NotificationResponse, ParameterStatus) belong to no request and
are always forwarded.
The queue is empty exactly when the server owes the client nothing: the moment a
connection may be released.

Capture: the proxy may pipeline a statement of its own behind a client's request (the
write-LSN query). The client's request is queued with ``hold_ready``: its ReadyForQuery
is withheld. The proxy's statement is a SWALLOW request with ``on_row`` (its DataRows)
and ``finish`` (called with the withheld ReadyForQuery's status; returns bytes to send
the client); the withheld ReadyForQuery follows those bytes, so the client sees them
before it may go on. That request is a FunctionCall (its result, a FunctionCallResponse,
goes to ``on_row`` as a DataRow would), a Query, or a Sync standing for every message
sent before it: all their replies are swallowed alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from protocol.framing import TAGS

# The tag that completes a request of each kind (Describe and Execute have several).
_COMPLETES: Final = {
    "P": "1",
    "B": "2",
    "C": "3",
    "D": "Tn",
    "E": "CIs",
    "S": "Z",
    "Q": "Z",
    "F": "Z",
}
# Every server tag the tracker needs to see (besides the asynchronous ones); COPY
# responses (G, H, W) too, so a held replica read is released when a COPY starts.
TRACKED_TAGS: Final = "123tTnCIsZEVGHW"

PASS: Final = 0  # the server answers; forward the answer
SWALLOW: Final = 1  # the proxy injected it; drop its success reply (errors still go through)
SYNTH: Final = 2  # the server was not asked; send ``reply`` to the client in its turn


class Request:
    __slots__ = (
        "action",
        "completes",
        "finish",
        "hold_ready",
        "kind",
        "on_error",
        "on_ok",
        "on_row",
        "own",
        "plain",
        "reply",
        "sync",
    )

    def __init__(
        self,
        kind: str,
        action: int = PASS,
        reply: bytes = b"",
        on_error: Callable[[], None] | None = None,
        on_ok: Callable[[], None] | None = None,
        *,
        hold_ready: bool = False,
        on_row: Callable[[bytes], None] | None = None,
        finish: Callable[[str], bytes] | None = None,
        own: bool = False,
    ) -> None:
        self.kind = kind
        self.completes = _COMPLETES[kind]  # the tags that complete it
        self.sync = kind in "SQF"  # answered by a ReadyForQuery
        self.plain = False  # one of PLAIN's shared requests: nothing to call or withhold
        self.action = action
        self.reply = reply
        self.on_error = on_error
        self.on_ok = on_ok
        self.hold_ready = hold_ready
        self.on_row = on_row
        self.finish = finish
        self.own = own  # the proxy's own statement: nothing of its answer reaches the client

    def __repr__(self) -> str:
        return f"Request({self.kind!r}, {('PASS', 'SWALLOW', 'SYNTH')[self.action]})"


# Requests that only wait for their answer carry no state: one shared instance per kind
# (the tracker never changes a plain request; ``hold_last_ready`` replaces it).
PLAIN: Final[dict[str, Request]] = {kind: Request(kind) for kind in _COMPLETES}
for _plain in PLAIN.values():
    _plain.plain = True
PLAIN_QUERY: Final = PLAIN["Q"]
# A plain request whose ReadyForQuery is withheld for the capture behind it: shared too.
HELD_PLAIN: Final[dict[str, Request]] = {kind: Request(kind, hold_ready=True) for kind in "SQF"}


class ResponseTracker:
    __slots__ = ("_held_ready", "_queue", "_skipping", "captures", "swallows", "syncs")

    def __init__(self) -> None:
        # A list, not a deque: a handful of entries at most, and compiled code works on a
        # list directly where every deque operation is a method call.
        self._queue: list[Request] = []
        self.syncs = 0  # queued Sync / Query / FunctionCall: ReadyForQuery still owed
        self.swallows = 0  # queued requests some of whose replies will not be forwarded
        self.captures = 0  # queued requests that want their DataRows
        self._held_ready = b""  # a withheld ReadyForQuery (see hold_ready)
        # After an extended-protocol error the server ignores everything up to a Sync;
        # True while that Sync has not been sent yet.
        self._skipping = False

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def holding_ready(self) -> bool:
        """A ReadyForQuery is withheld until the proxy's own statement answers."""
        return bool(self._held_ready)

    @property
    def idle(self) -> bool:
        """Nothing is owed: the server has answered everything it was sent."""
        return not self._queue

    @property
    def head(self) -> Request | None:
        """The request the server's next message answers; None when nothing is owed."""
        return self._queue[0] if self._queue else None

    def expect(self, request: Request) -> bytes:
        """Queue ``request``; returns synthetic replies that are due right away."""
        if self._skipping:
            if request.kind != "S":  # the server will ignore it: no answer, no reply
                if request.on_error is not None:
                    request.on_error()
                return b""
            self._skipping = False
        if request.action == SYNTH and not self._queue:
            return request.reply
        self._queue.append(request)
        if request.sync:
            self.syncs += 1
        if request.action == SWALLOW or request.hold_ready:
            self.swallows += 1
        if request.on_row is not None:
            self.captures += 1
        return b""

    def _count(self, request: Request, step: int) -> None:
        if request.sync:
            self.syncs += step
        if request.action == SWALLOW or request.hold_ready:
            self.swallows += step
        if request.on_row is not None:
            self.captures += step

    def received(self, tag: str, body: bytes = b"") -> tuple[bool, bytes]:
        """Account for one server message: (forward it?, synthetic replies due after it).
        ``body`` is needed for ReadyForQuery and, while capturing, DataRow."""
        queue = self._queue
        if not queue:
            return True, b""
        # Tags compared as character codes: compiled, ``ord("D")`` is a constant and each
        # test an integer compare (a failed string compare calls memcmp).
        code = ord(tag)
        if code == ord("N") or code == ord("A") or code == ord("S"):
            return True, b""  # a notice, notification or parameter: no request's answer
        head = queue[0]
        forward = True
        if code == ord("D") or code == ord("V"):  # a row, or a FunctionCall's result
            if head.on_row is not None:
                head.on_row(body)
            return head.action != SWALLOW, b""
        if code == ord("E"):
            forward = not head.own
            if head.on_error is not None:
                head.on_error()
            if head.sync:  # ended by the ReadyForQuery to come, not as a success
                if head.on_ok is not None:
                    head.on_ok = None
            else:  # the server now skips everything up to Sync
                self._pop()
                while queue and queue[0].kind != "S":
                    dropped = self._pop()
                    if dropped.on_error is not None:
                        dropped.on_error()
                self._skipping = not queue  # that Sync is still to come
        elif tag in head.completes:
            if head.plain:  # the common case: nothing to call or withhold
                queue.pop(0)
                if head.sync:
                    self.syncs -= 1
                if queue and queue[0].action == SYNTH:
                    return True, self._due()
                return True, b""
            forward = head.action != SWALLOW
            if head.on_ok is not None:
                head.on_ok()
            self._pop()
            if code == ord("Z") and head.hold_ready:
                forward = False
                self._held_ready = b"Z\x00\x00\x00\x05" + body[:1]
            if head.finish is not None:
                held, self._held_ready = self._held_ready, b""
                extra = head.finish(TAGS[held[5]] if held else "")
                return forward, extra + held + self._due()
        elif head.action == SWALLOW:
            forward = False
        if queue and queue[0].action == SYNTH:
            return forward, self._due()
        return forward, b""

    def _pop(self) -> Request:
        request = self._queue.pop(0)
        self._count(request, -1)
        return request

    def _due(self) -> bytes:
        queue = self._queue
        if not queue or queue[0].action != SYNTH:
            return b""
        replies = []
        while queue and queue[0].action == SYNTH:
            replies.append(self._pop().reply)
        return b"".join(replies)

    def hold_last_ready(self, finish: Callable[[str], bytes] | None = None) -> bool:
        """Withhold the ReadyForQuery of the last queued request (a Sync, Query or
        FunctionCall the server will answer); False when there is no such request. With
        ``finish``, that request is its own capture: ``finish`` gets the withheld status
        when it comes, and what it returns goes before the ReadyForQuery."""
        if not self._queue:
            return False
        last = self._queue[-1]
        if last.kind not in "SQF" or last.action != PASS or last.hold_ready:
            return False
        self.swallows += 1
        if last.plain and finish is None:
            self._queue[-1] = HELD_PLAIN[last.kind]
            return True
        held = Request(last.kind, on_error=last.on_error, on_ok=last.on_ok, hold_ready=True)
        held.on_row, held.own = last.on_row, last.own
        held.finish = finish if finish is not None else last.finish
        self._queue[-1] = held  # a plain request is shared: replaced, never changed
        return True

    def clear(self) -> None:
        self._queue.clear()
        self._skipping = False
        self.syncs = self.swallows = self.captures = 0
        self._held_ready = b""
