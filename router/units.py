"""Units of work: what one routing decision covers, and what the router knows of it.

Owns: splitting a client's queued messages into units (a simple Query; or extended-
protocol messages up to and including Sync, which PostgreSQL runs as one implicit
transaction; a FunctionCall) and summarizing a unit for the router: its kind is ``read``
only when every statement in it is a read, or it opens a read-only transaction.
Must not touch: sockets, pools, the choice of backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from router.classifier import Classification, Classifier, Kind
from router.director import Unit
from router.hints import NO_COMMENT, Comment, read_comments
from router.lexer import is_single, leading_words, split_statements
from router.prepared import bind_name, parse_facts

Frame = tuple[str, bytes]


def split_units(frames: list[Frame]) -> tuple[list[list[Frame]], list[Frame]]:
    """(complete units, the incomplete tail).

    Units are slices of ``frames``, not lists built frame by frame: compiled, a frame
    read from a list is a ``tuple[str, bytes]`` unboxed into C values, and appending it
    to another list boxes it into a new tuple; a slice copies the references."""
    units: list[list[Frame]] = []
    start = 0
    for index in range(len(frames)):
        if ends_unit(frames[index][0]):
            units.append(frames[start : index + 1])
            start = index + 1
    return units, frames[start:]


def ends_unit(tag: str) -> bool:
    """A Query, Sync or FunctionCall: the message that ends a unit (and is answered by a
    ReadyForQuery). Compared as a character code: see Forwarder.translate."""
    code = ord(tag)
    return code == ord("Q") or code == ord("S") or code == ord("F")


def needs_answer(frames: list[Frame]) -> bool:
    """A client waits for replies once it sent a Query, Sync, FunctionCall or Flush."""
    if frames and frames[-1][0] in "QSFH":  # the usual case: a unit's end comes last
        return True
    return any(tag in "QSFH" for tag, _ in frames)


class Planner:
    """Summarizes units for the router; named statements keep their classification."""

    def __init__(
        self,
        classifier: Classifier,
        statement_text: Callable[[str], str | None],
        query_text: Callable[[bytes], tuple[str, str]] | None = None,
    ) -> None:
        self._classifier = classifier
        self._statement_text = statement_text  # client statement name -> its query text
        # A Query frame -> (text, lower-cased text); the client's Forwarder remembers the
        # last one, so the routing and the forwarding of a Query decode it once.
        self._query_text = query_text or _decoded

    def plan(self, unit: list[Frame], *, read_only_session: bool = False) -> Unit:
        """Raises InvalidLsn for a malformed ``min_lsn`` in a comment."""
        if len(unit) == 1 and unit[0][0] == "Q":  # a simple Query: the common case, direct
            query, lowered = self._query_text(unit[0][1])
            text, comment = read_comments(query, lowered)
            result = self._classifier.classify(text)
            kind, reason = _overall([result], read_only_session)
            read = result.is_read
            shapes = (result.fingerprint or self._classifier.fingerprint(text),) if read else ()
            return Unit(
                kind,
                reason,
                result.tables,
                result.functions,
                comment.tags,
                comment.hint,
                comment.min_lsn,
                shapes,
            )
        kinds: list[Classification] = []
        tables: set[str] = set()
        functions: set[str] = set()
        fingerprints: list[str] = []
        comment = NO_COMMENT
        unnamed: str | None = None
        named: dict[str, str] = {}  # statements parsed earlier in this same unit
        for tag, raw in unit:
            sql: str | None = None
            low: str | None = None
            if tag == "Q":
                sql, low = self._query_text(raw)
            elif tag == "P":
                facts = parse_facts(raw)
                sql, low = facts.parse.query, facts.low
                if facts.parse.name:
                    named[facts.parse.name] = sql
                else:
                    unnamed = sql
            elif tag == "B":
                name = bind_name(raw)
                if name in named if name else unnamed is not None:
                    continue  # parsed in this same unit: summarized at its Parse
                sql = self._statement_text(name) if name else None
                if sql is None:  # a statement this client never prepared here
                    kinds.append(_UNKNOWN)
                    continue
            elif tag == "F":
                kinds.append(_FUNCTION_CALL)
                continue
            if sql is None:
                continue
            text, found = read_comments(sql, low)
            comment = _merge(comment, found)
            result = self._classifier.classify(text)
            kinds.append(result)
            tables |= result.tables
            functions |= result.functions
            if result.is_read:  # what a replica's 25006 can teach (see Director.learned_writes)
                fingerprints.append(result.fingerprint or self._classifier.fingerprint(text))
        kind, reason = _overall(kinds, read_only_session)
        return Unit(
            kind,
            reason,
            frozenset(tables),
            frozenset(functions),
            comment.tags,
            comment.hint,
            comment.min_lsn,
            tuple(fingerprints),
        )


def _decoded(raw: bytes) -> tuple[str, str]:
    text = raw[5:-1].decode("utf-8", "surrogateescape")
    return text, text.lower()


def _merge(a: Comment, b: Comment) -> Comment:
    if b is NO_COMMENT or b == NO_COMMENT:
        return a
    lsns = [x for x in (a.min_lsn, b.min_lsn) if x is not None]
    return Comment(b.hint or a.hint, max(lsns) if lsns else None, a.tags | b.tags)


def _overall(kinds: list[Classification], read_only_session: bool) -> tuple[str, str]:
    """A unit is a read only when all of it is; a read-only BEGIN makes it one."""
    if not kinds:
        return "read", "no-statement"
    for result in kinds:
        read_only = result.read_only_begin or read_only_session
        if result.kind is Kind.TRANSACTION and read_only and not result.tx_end:
            return "read", "read-only-transaction"
    for result in kinds:
        if result.kind is not Kind.READ:
            return str(result.kind), result.reason  # Kind is a StrEnum: its value
    return "read", kinds[0].reason


# text_effects' answers by text: a statement sent again and again (prepared, or the same
# text through the extended protocol) is lexed once. Bounded: emptied when full, as
# statements with literals in them are each new.
_EFFECTS: Final[dict[str, tuple[str, bool]]] = {}
_EFFECTS_MAX: Final = 4096


def text_effects(sql: str) -> tuple[str, bool]:
    """(the transaction status ``sql`` leaves behind, or "" when its transaction-control
    statements do not change it; whether one of its statements is COPY, after which the
    server reads copy data and nothing may be pipelined behind it). The status is a
    prediction, never relied on for correctness (see Dispatch)."""
    known = _EFFECTS.get(sql)
    if known is not None:
        return known
    status = ""
    copies = False
    for statement in (sql,) if is_single(sql) else split_statements(sql):
        words = leading_words(statement, 3)
        if not words:
            continue
        if words[0] == "BEGIN" or words[:2] == ["START", "TRANSACTION"]:
            status = "T"
        elif _ends_transaction(words):
            status = "I" if words[-1] != "CHAIN" else "T"
        elif words[0] == "COPY":
            copies = True
    if len(_EFFECTS) >= _EFFECTS_MAX:
        _EFFECTS.clear()
    effects = _EFFECTS[sql] = (status, copies)
    return effects


def _ends_transaction(words: list[str]) -> bool:
    if words[0] in ("COMMIT", "END", "ABORT") or words[:2] == ["PREPARE", "TRANSACTION"]:
        return True
    return words[0] == "ROLLBACK" and "TO" not in words[1:3]


def unit_text(unit: list[Frame], statement_text: Callable[[str], str | None]) -> str:
    """The SQL a unit runs, statements joined, for text_effects."""
    texts: list[str] = []
    for tag, raw in unit:
        if tag == "Q":
            texts.append(raw[5:-1].decode("utf-8", "surrogateescape"))
        elif tag == "P":
            texts.append(parse_facts(raw).parse.query)
        elif tag == "B":
            name = bind_name(raw)
            text = statement_text(name) if name else None
            if text is not None:
                texts.append(text)
    return ";\n".join(texts)


_UNKNOWN: Final = Classification(Kind.UNKNOWN, "unknown-statement", frozenset(), frozenset())
_FUNCTION_CALL: Final = Classification(Kind.WRITE, "function-call", frozenset(), frozenset())
