"""pgrouter's words inside SQL: statement comments and ``pgrouter.*`` commands.

Owns: reading ``/* pgrouter:primary */``, ``/* pgrouter:replica */``,
``/* pgrouter:min_lsn=0/3000060 */`` and ``/* pgrouter:tag=reports */`` comments (and
removing them, since they are consumed by the proxy), and recognizing the
``SET / SHOW / RESET pgrouter.<name>`` statements the proxy answers itself.
Must not touch: what those words then do (forward.py, director.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from router.lsn import parse_lsn

_COMMENT: Final = re.compile(r"/\*\s*pgrouter:([^*]*?)\s*\*/", re.IGNORECASE)
_PGROUTER_SET: Final = re.compile(
    r"^\s*SET\s+(?:SESSION\s+)?pgrouter\.(\w+)\s*(?:=|TO)\s*'?([^';]*?)'?\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_PGROUTER_SHOW: Final = re.compile(r"^\s*SHOW\s+pgrouter\.(\w+)\s*;?\s*$", re.IGNORECASE)
_PGROUTER_RESET: Final = re.compile(r"^\s*RESET\s+pgrouter\.(\w+)\s*;?\s*$", re.IGNORECASE)


def strip_comments(sql: str) -> str:
    """``sql`` without its pgrouter comments, whatever they say (nothing is parsed)."""
    return _COMMENT.sub("", sql)


def without_comments(sql: str, low: str | None = None) -> str:
    """``sql`` as the server gets it, its ``/* pgrouter:... */`` comments consumed by the
    proxy; ``sql`` itself when it has none (``low``: ``sql.lower()``, when at hand)."""
    return strip_comments(sql) if "pgrouter:" in (sql.lower() if low is None else low) else sql


@dataclass(frozen=True, slots=True)
class Comment:
    """What a ``/* pgrouter:... */`` comment asked for."""

    hint: str | None = None
    min_lsn: int | None = None
    tags: frozenset[str] = frozenset()


NO_COMMENT: Final = Comment()


def read_comments(sql: str, low: str | None = None) -> tuple[str, Comment]:
    """(sql without pgrouter comments, what they asked); ``low``: ``sql.lower()`` when the
    caller has it. Raises InvalidLsn."""
    if "pgrouter:" not in (sql.lower() if low is None else low):
        return sql, NO_COMMENT
    hint: str | None = None
    min_lsn: int | None = None
    tags: set[str] = set()
    for match in _COMMENT.finditer(sql):
        for item in re.split(r"[\s,]+", match.group(1).strip()):
            key, _, value = item.partition("=")
            key = key.lower()
            if key in ("primary", "replica"):
                hint = key
            elif key == "min_lsn":
                min_lsn = max(min_lsn or 0, parse_lsn(value))
            elif key == "tag" and value:
                tags.add(value)
    return _COMMENT.sub("", sql), Comment(hint, min_lsn, frozenset(tags))


@dataclass(frozen=True, slots=True)
class Command:
    """A ``SET / SHOW / RESET pgrouter.<name>`` statement, answered by the proxy."""

    verb: str  # SET, SHOW, RESET
    name: str
    value: str = ""


def maybe_command(raw: bytes) -> bool:
    """Cheap test on raw message bytes: could they hold a ``pgrouter.`` command?"""
    return raw.lower().find(b"pgrouter.") >= 0  # not ``in``: see Forwarder.translate


def maybe_comment(raw: bytes) -> bool:
    """Cheap test on raw message bytes: could they hold a ``pgrouter:`` comment?"""
    return raw.lower().find(b"pgrouter:") >= 0


def pgrouter_command(sql: str) -> Command | None:
    if "pgrouter." not in sql.lower():
        return None
    for verb, pattern in (("SET", _PGROUTER_SET), ("SHOW", _PGROUTER_SHOW)):
        match = pattern.match(sql)
        if match:
            value = match.group(2).strip() if verb == "SET" else ""
            return Command(verb, match.group(1).lower(), value)
    match = _PGROUTER_RESET.match(sql)
    return Command("RESET", match.group(1).lower()) if match else None
