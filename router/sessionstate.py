"""Session state: which statements leave state behind that outlives their transaction.

Owns: the decision, per query string, whether it pins the client to its server
connection (LISTEN, session advisory locks, SQL-level PREPARE, temporary objects,
cursors WITH HOLD, SET of parameters pgrouter does not track, ...), changes a tracked
parameter (SET/RESET of search_path, statement_timeout, ...; replayed on whichever server
the client gets next), or discards server-side state (DISCARD ALL, DEALLOCATE ALL).
Must not touch: sockets, routing; the result is a value, cached by query text.

Parameters the server reports itself with ParameterStatus (client_encoding, DateStyle,
TimeZone, application_name, standard_conforming_strings, IntervalStyle) need no parsing:
the proxy follows those messages. The others in ``TRACKED`` are remembered from the SET
statement's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from router.lexer import (
    code_only,
    first_keyword,
    is_single,
    leading_words,
    split_statements,
    strip_leading,
)

# Parameters kept per client and applied to whichever server connection it gets.
REPORTED: Final = frozenset(
    {
        "client_encoding",
        "datestyle",
        "intervalstyle",
        "timezone",
        "application_name",
        "standard_conforming_strings",
        "default_transaction_read_only",
    }
)
TEXT_TRACKED: Final = frozenset(
    {"search_path", "statement_timeout", "lock_timeout", "extra_float_digits", "bytea_output"}
)
TRACKED: Final = REPORTED | TEXT_TRACKED

_SESSION_FUNCTIONS: Final = re.compile(
    r"\b(pg_(?:try_)?advisory_lock(?:_shared)?|set_config|dblink_connect\w*|lo_open)\s*\(",
    re.IGNORECASE,
)
_SET_CONFIG_LOCAL: Final = re.compile(r"set_config\s*\([^()]*,\s*true\s*\)", re.IGNORECASE)
_SET_VALUE: Final = re.compile(r"^\s*(?:TO\b|=)\s*(.*?)\s*$", re.IGNORECASE | re.DOTALL)
_SET_NAME: Final = re.compile(r"^\s*SET\s+(?:SESSION\s+)?([A-Za-z_][\w.]*)", re.IGNORECASE)
_FAST_SAFE: Final = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES", "TABLE"})
_TEMP_WORDS: Final = frozenset({"TEMP", "TEMPORARY"})
_INTO_TEMP: Final = re.compile(r"\bINTO\s+(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Effect:
    """What a query string does to session state. Empty when it does nothing lasting."""

    pin: str | None = None  # why the client must keep its server connection
    sets: tuple[tuple[str, str | None], ...] = ()  # (param, SET text | None for RESET)
    reset_all: bool = False  # RESET ALL / DISCARD ALL: tracked values back to defaults
    discards_statements: bool = False  # DISCARD ALL / DEALLOCATE ALL on the server
    deallocate: tuple[str, ...] = field(default=())  # DEALLOCATE <name> (a protocol name?)

    def __bool__(self) -> bool:
        return bool(
            self.pin or self.sets or self.reset_all or self.discards_statements or self.deallocate
        )


NO_EFFECT: Final = Effect()


_EFFECTS: Final[dict[str, Effect]] = {}  # by query text; emptied when full (texts repeat or not)
_EFFECTS_MAX: Final = 8192


def session_effect(sql: str, low: str | None = None) -> Effect:
    """The combined effect of every statement in ``sql`` (``low``: ``sql.lower()``, when
    the caller has it already)."""
    if _plainly_none(sql, sql.lower() if low is None else low):  # the common case
        return NO_EFFECT
    effect = _EFFECTS.get(sql)
    if effect is None:
        effect = _statements_effect(sql)
        if len(_EFFECTS) >= _EFFECTS_MAX:
            _EFFECTS.clear()
        _EFFECTS[sql] = effect
    return effect


def _plainly_none(sql: str, low: str) -> bool:
    """A single SELECT / INSERT / UPDATE / DELETE / WITH / VALUES / TABLE that calls no
    session function and makes no temporary table: no effect, for certain. False means
    "ask the lexer". No regex and no cache: texts with new literals each time (pgbench,
    ORMs without bind parameters) would only churn one."""
    word = _leading_word(sql)
    if word not in _FAST_SAFE or not is_single(sql):
        return False
    if "(" in low and _mentions_session_function(low):
        return False  # maybe a session function call: the lexer decides
    return word != "SELECT" or "into" not in low


def _mentions_session_function(low: str) -> bool:
    """Whether lower-cased ``low`` holds a word of the names _SESSION_FUNCTIONS matches:
    plain substring tests, far cheaper than a case-blind regex."""
    return "advisory" in low or "set_config" in low or "lo_open" in low or "dblink" in low


def _leading_word(sql: str) -> str:
    """The statement's first word upper-cased when it starts the text (after white space
    only) and is at most 6 letters long; "" otherwise (a comment, a parenthesis...)."""
    n = len(sql)
    i = 0
    while i < n and _is_space(ord(sql[i])):
        i += 1
    j = i
    while j < n and j - i <= 6 and _is_ascii_letter(ord(sql[j])):
        j += 1
    if j - i > 6 or j == i:
        return ""
    if j < n:  # not a letter: a digit, _ or $ (or a non-ASCII letter) makes an identifier
        code = ord(sql[j])
        if 48 <= code <= 57 or code == 95 or code == 36 or (code > 127 and sql[j].isalnum()):
            return ""  # a longer identifier, not a keyword
    word = sql[i:j]
    return word if word in _FAST_SAFE else word.upper()


# Character codes, not one-character strings: compiled, these are integer compares (a set
# lookup or a str method call costs a call each).
def _is_ascii_letter(code: int) -> bool:
    return 97 <= code <= 122 or 65 <= code <= 90


def _is_space(code: int) -> bool:
    """The white space SQL allows between tokens: space, \\t \\n \\v \\f \\r (9 to 13)."""
    return code == 32 or 9 <= code <= 13


@lru_cache(maxsize=4096)
def _statements_effect(sql: str) -> Effect:
    pin: str | None = None
    sets: list[tuple[str, str | None]] = []
    reset_all = discards = False
    deallocate: list[str] = []
    for statement in split_statements(sql):
        effect = _statement_effect(statement)
        pin = pin or effect.pin
        sets += effect.sets
        reset_all = reset_all or effect.reset_all
        discards = discards or effect.discards_statements
        deallocate += effect.deallocate
    if not (pin or sets or reset_all or discards or deallocate):
        return NO_EFFECT
    return Effect(pin, tuple(sets), reset_all, discards, tuple(deallocate))


def _has_session_function(sql: str) -> bool:
    if not _mentions_session_function(sql.lower()):
        return False
    code = code_only(sql)
    return bool(_SESSION_FUNCTIONS.search(code)) and not _only_local_set_config(code)


def _only_local_set_config(code: str) -> bool:
    """True when the only session function is ``set_config(..., true)`` (transaction-local)."""
    names = {m.group(1).lower() for m in _SESSION_FUNCTIONS.finditer(code)}
    if names != {"set_config"}:
        return False
    return len(_SET_CONFIG_LOCAL.findall(code)) == len(_SESSION_FUNCTIONS.findall(code))


def _statement_effect(statement: str) -> Effect:
    words = leading_words(statement, 4)
    first = words[0] if words else ""
    if first == "SET":
        return _set_effect(statement, words)
    if first == "RESET":
        if len(words) > 1 and words[1] == "ALL":
            return Effect(reset_all=True)
        name = words[1].lower() if len(words) > 1 else ""
        return Effect(sets=((name, None),)) if name in TRACKED else NO_EFFECT
    if first == "LISTEN":
        return Effect(pin="LISTEN")
    if first == "PREPARE":
        return Effect(pin="PREPARE (SQL-level prepared statement)")
    if first == "LOAD":
        return Effect(pin="LOAD")
    if first == "DECLARE" and "WITH HOLD" in " ".join(code_only(statement).upper().split()):
        return Effect(pin="cursor WITH HOLD")
    if (first == "CREATE" and _creates_temporary(words)) or _selects_into_temp(statement):
        return Effect(pin="temporary object")
    if first == "DISCARD" and len(words) > 1 and words[1] == "ALL":
        return Effect(reset_all=True, discards_statements=True)
    if first == "DEALLOCATE":
        rest = [w for w in words[1:] if w != "PREPARE"]
        if rest and rest[0] == "ALL":
            return Effect(discards_statements=True)
        target = _deallocate_name(statement)
        return Effect(deallocate=(target,)) if target else NO_EFFECT
    if _has_session_function(statement):
        return Effect(pin="session-level function (advisory lock, set_config, ...)")
    return NO_EFFECT


def _creates_temporary(words: list[str]) -> bool:
    if words[1:3] == ["OR", "REPLACE"]:  # CREATE OR REPLACE TEMP VIEW
        words = [words[0], *words[3:]]
    if len(words) > 1 and words[1] in _TEMP_WORDS:
        return True
    return len(words) > 2 and words[1] in ("GLOBAL", "LOCAL") and words[2] in _TEMP_WORDS


def _selects_into_temp(statement: str) -> bool:
    """SELECT ... INTO TEMP t: a temporary table, like CREATE TEMP TABLE AS."""
    if "into" not in statement.lower() or first_keyword(statement) != "SELECT":
        return False
    return bool(_INTO_TEMP.search(code_only(statement)))


def _deallocate_name(statement: str) -> str | None:
    match = re.match(
        r'^\s*DEALLOCATE\s+(?:PREPARE\s+)?("(?:[^"]|"")+"|[A-Za-z_][\w$]*)\s*$',
        strip_leading(statement),
        re.IGNORECASE,
    )
    if not match:
        return None
    name = match.group(1)
    return name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()


def _set_effect(statement: str, words: list[str]) -> Effect:
    second = words[1] if len(words) > 1 else ""
    if second == "LOCAL" or second == "TRANSACTION" or second == "CONSTRAINTS":
        return NO_EFFECT
    if second == "SESSION" and len(words) > 2:
        if words[2] in ("AUTHORIZATION", "CHARACTERISTICS"):
            return Effect(pin=f"SET SESSION {words[2]}")
        words = [words[0], *words[2:]]  # SET SESSION x is SET x
        second = words[1]
    if second == "ROLE":
        return Effect(pin="SET ROLE")
    if second == "TIME" and len(words) > 2 and words[2] == "ZONE":
        return Effect(sets=(("timezone", None if _is_default(statement) else statement),))
    if second == "NAMES":
        return Effect(sets=(("client_encoding", statement),))
    if second == "SCHEMA":
        return Effect(sets=(("search_path", statement),))
    match = _SET_NAME.match(strip_leading(statement))
    name = match.group(1).lower() if match else ""
    if name.startswith("pgrouter."):
        return NO_EFFECT  # consumed by pgrouter itself
    if name in TRACKED:
        return Effect(sets=((name, None if _is_default(statement) else statement.strip()),))
    return Effect(pin=f"SET {name or '?'}")


def _is_default(statement: str) -> bool:
    return bool(re.search(r"(?:\bTO\b|=)\s*DEFAULT\s*$", statement.strip(), re.IGNORECASE))
