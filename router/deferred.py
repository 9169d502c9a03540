"""Deferred BEGIN: a bare BEGIN answered by the proxy until the next unit shows where the
transaction belongs.

Owns: recognizing a bare ``BEGIN`` / ``BEGIN WORK`` / ``BEGIN TRANSACTION`` / ``START
TRANSACTION`` sent as a simple Query of its own (no transaction modes and no pgrouter
comment, so nothing about it can fail at the server); the replies the proxy gives in the
server's place while it is deferred; the unit the router plans (the BEGIN in front of the
next unit); and the BEGIN sent in front of that unit to the chosen server, its success
replies swallowed.
Must not touch: the choice of server (the Director decides on the planned unit), pools,
sockets, the transaction once it is on a server. dispatch.py calls in when it answers a
unit locally, when it links a server, and for each reply of a held replica read;
client.py when it plans a unit.

Theory of operation. Routing a bare BEGIN by itself would send every transaction to the
writer, so a read-only one declared by its first statement could never use a replica:
``BEGIN`` then ``SET TRANSACTION READ ONLY`` as separate messages, as psql users send them
and code on drivers that send BEGIN by themselves (psycopg, SQLAlchemy, Django). So:

    no server, status I --bare BEGIN--> DEFERRED (client shown CommandComplete, Z 'T')
    DEFERRED --COMMIT/END/ROLLBACK/ABORT--> answered here (Z 'I'); nothing ran anywhere
    DEFERRED --any other unit--> planned as BEGIN + unit: ``SET TRANSACTION READ ONLY``
        makes it a read-only transaction (a replica, as ``BEGIN READ ONLY``), anything
        else a transaction (the writer); the BEGIN is sent first on the chosen server
    DEFERRED, a unit rejected by the proxy (Z 'E') --> FAILED: like PostgreSQL, 25P02
        for everything until COMMIT/ROLLBACK, which end it here (tag ROLLBACK, Z 'I')

While the first unit's answer is held for a possible retry (a replica read), the
deferral is kept: a retry on another server sends the BEGIN again. Once that answer is
released (or when nothing is held) it is dropped: the BEGIN is on the server for good.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from protocol import backend as be
from protocol import sqlstate
from router.lexer import strip_leading
from router.tracker import SWALLOW, Request, ResponseTracker

Frame = tuple[str, bytes]

# Checked on the raw message first: most units are not transaction control at all.
_MAYBE_BEGIN: Final = re.compile(rb"begin|start", re.IGNORECASE)
_MAYBE_END: Final = re.compile(rb"commit|end|rollback|abort", re.IGNORECASE)
_SPACE: Final = b" \t\r\n\f\v"
_BARE_BEGIN: Final = re.compile(
    r"(BEGIN(?:\s+(?:WORK|TRANSACTION))?|START\s+TRANSACTION)\s*;?\s*", re.IGNORECASE
)
_BARE_END: Final = re.compile(
    r"(COMMIT|END|ROLLBACK|ABORT)(?:\s+(?:WORK|TRANSACTION))?\s*;?\s*", re.IGNORECASE
)
_END_TAGS: Final = {
    "COMMIT": "COMMIT",
    "END": "COMMIT",
    "ROLLBACK": "ROLLBACK",
    "ABORT": "ROLLBACK",
}
_ABORTED: Final = "current transaction is aborted, commands ignored until end of transaction block"


class DeferredBegin:
    """A bare BEGIN the client was told succeeded, not yet on a server for good."""

    __slots__ = ("query", "request")

    def __init__(self, query: bytes) -> None:
        self.query = query  # the client's Query message, sent as it came
        self.request: Request | None = None  # its request on the server it was sent to

    def inject(self, tracker: ResponseTracker) -> bytes:
        """Queue the BEGIN on ``tracker`` with its replies swallowed (an error would
        still reach the client); the bytes to send ahead of the unit."""
        self.request = Request("Q", SWALLOW)
        tracker.expect(self.request)
        return self.query

    def answering(self, tracker: ResponseTracker) -> bool:
        """Whether the server's next message answers the injected BEGIN."""
        return self.request is not None and tracker.head is self.request


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """The proxy's reply to a unit, and the state it leaves."""

    reply: bytes
    deferred: DeferredBegin | None  # the deferred BEGIN after the reply (None: none)
    status: str  # the transaction status the reply showed the client


def answer(
    unit: list[Frame], deferred: DeferredBegin | None, status: str, *, may_defer: bool
) -> LocalAnswer | None:
    """The reply to the leading ``unit`` when the proxy gives it; None when the unit
    goes to a server. ``status`` is the one the client last saw; ``may_defer``: this
    client's reads are routed in transaction mode (see the module docstring)."""
    if deferred is None:
        if not may_defer or status != "I":
            return None
        tag = begin_tag(unit)
        if tag is None:
            return None
        return LocalAnswer(_done(tag, "T"), DeferredBegin(unit[0][1]), "T")
    end = end_tag(unit)
    if status == "E":
        if end is not None:
            return LocalAnswer(_done("ROLLBACK", "I"), None, "I")
        return LocalAnswer(_aborted(), deferred, "E")
    if end is not None:
        return LocalAnswer(_done(end, "I"), None, "I")
    return None


def planned_unit(deferred: DeferredBegin | None, unit: list[Frame]) -> list[Frame]:
    """What the router plans for ``unit``: behind a deferred BEGIN, the BEGIN with it, so
    the pair routes as one ``BEGIN ...; SET TRANSACTION READ ONLY`` or ``BEGIN; UPDATE``
    would."""
    return unit if deferred is None else [("Q", deferred.query), *unit]


def begin_tag(unit: list[Frame]) -> str | None:
    """The command tag of a bare BEGIN sent alone as a simple Query; None otherwise."""
    text = _lone_query(unit, _MAYBE_BEGIN, b"bBsS/-")
    if text is None or "pgrouter:" in text.lower():
        return None
    match = _BARE_BEGIN.fullmatch(strip_leading(text))
    if match is None:
        return None
    return "START TRANSACTION" if match.group(1)[:1] in "Ss" else "BEGIN"


def end_tag(unit: list[Frame]) -> str | None:
    """COMMIT or ROLLBACK for a bare COMMIT / END / ROLLBACK / ABORT sent alone as a
    simple Query (not AND CHAIN, not TO SAVEPOINT, not PREPARED); None otherwise."""
    text = _lone_query(unit, _MAYBE_END, b"cCeErRaA/-")
    match = None if text is None else _BARE_END.fullmatch(strip_leading(text))
    return None if match is None else _END_TAGS[match.group(1).upper()]


def _lone_query(unit: list[Frame], maybe: re.Pattern[bytes], firsts: bytes) -> str | None:
    """The text of a unit that is one simple Query whose first character is in ``firsts``
    (a letter of the keywords sought, or the start of a comment) and that mentions one
    of them; None otherwise. The first-character test spares the search most units."""
    if len(unit) != 1 or unit[0][0] != "Q":
        return None
    raw = unit[0][1]
    for index in range(5, len(raw)):
        byte = raw[index]
        if byte not in _SPACE:
            if byte not in firsts:
                return None
            break
    if not maybe.search(raw):
        return None
    return raw[5:-1].decode("utf-8", "surrogateescape")


def _done(tag: str, status: str) -> bytes:
    return be.CommandComplete(tag).encode() + be.ReadyForQuery(status).encode()


def _aborted() -> bytes:
    """What PostgreSQL answers a unit in a failed transaction (one error: the server
    skips the rest of the unit)."""
    error = be.ErrorResponse.build("ERROR", sqlstate.IN_FAILED_SQL_TRANSACTION, _ABORTED)
    return error.encode() + be.ReadyForQuery("E").encode()
