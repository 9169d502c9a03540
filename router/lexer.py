"""SQL lexing: just enough to find statements and their leading keywords.

Owns: splitting a query string into statements and reading their first keywords, with
PostgreSQL's rules for comments (``--``, nested ``/* */``), quoted identifiers, string
literals (standard, ``E''`` escapes) and dollar quotes (``$tag$ ... $tag$``), so a keyword
inside a literal or comment is never mistaken for one in the statement.
Must not touch: deciding what a statement means (sessionstate.py, the classifier).
"""

from __future__ import annotations

import re
from typing import Final

_DOLLAR_TAG: Final = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")
_WORD: Final = re.compile(r"[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*")


def _skip_block_comment(sql: str, i: int) -> int:
    """``i`` points at ``/*``; returns the index after the matching ``*/`` (nesting counts)."""
    depth = 0
    n = len(sql)
    while i < n:
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def _skip_quoted(sql: str, i: int, quote: str, backslash: bool) -> int:
    """``i`` points at the opening quote; returns the index after the closing one."""
    i += 1
    n = len(sql)
    while i < n:
        c = sql[i]
        if backslash and c == "\\":
            i += 2
            continue
        if c == quote:
            if i + 1 < n and sql[i + 1] == quote:  # doubled quote
                i += 2
                continue
            return i + 1
        i += 1
    return n


def skip_token(sql: str, i: int) -> int:
    """If a comment, literal or quoted identifier starts at ``i``, the index after it;
    otherwise ``i`` unchanged."""
    c = sql[i]
    if c == "-" and sql.startswith("--", i):
        end = sql.find("\n", i)
        return len(sql) if end < 0 else end + 1
    if c == "/" and sql.startswith("/*", i):
        return _skip_block_comment(sql, i)
    if c == "'":
        escaped = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _is_word_char(sql[i - 2]))
        return _skip_quoted(sql, i, "'", escaped)
    if c == '"':
        return _skip_quoted(sql, i, '"', False)
    if c == "$" and (i == 0 or not _is_word_char(sql[i - 1])):
        match = _DOLLAR_TAG.match(sql, i)
        if match:
            close = sql.find(match.group(0), match.end())
            return len(sql) if close < 0 else close + len(match.group(0))
    return i


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_" or c == "$"


def is_single(sql: str) -> bool:
    """Cheap: ``sql`` has no semicolon except one at its very end (so it is one statement,
    whatever its literals hold); False means "maybe several", ask split_statements."""
    count = sql.count(";")
    return count == 0 or (count == 1 and sql.rstrip().endswith(";"))


def split_statements(sql: str) -> list[str]:
    """The statements of a query string, without their terminating semicolons;
    empty statements are dropped."""
    parts: list[str] = []
    start = 0
    i = 0
    n = len(sql)
    depth = 0
    while i < n:
        j = skip_token(sql, i)
        if j != i:
            i = j
            continue
        c = sql[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth = max(0, depth - 1)
        elif c == ";" and depth == 0:
            parts.append(sql[start:i])
            start = i + 1
        i += 1
    parts.append(sql[start:])
    return [p for p in parts if strip_leading(p)]


def strip_leading(sql: str, *, parens: bool = False) -> str:
    """``sql`` without leading white space and comments (and ``(`` when ``parens``)."""
    i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c.isspace() or (parens and c == "("):
            i += 1
            continue
        if c in "-/":
            j = skip_token(sql, i)
            if j != i:
                i = j
                continue
        break
    return sql[i:]


def leading_words(sql: str, count: int = 3) -> list[str]:
    """The first ``count`` bare words of a statement, upper-cased; stops at anything
    that is not a word (a literal, an operator, a parenthesis)."""
    words: list[str] = []
    rest = strip_leading(sql, parens=True)
    while len(words) < count:
        match = _WORD.match(rest)
        if not match:
            break
        words.append(match.group(0).upper())
        rest = strip_leading(rest[match.end() :])
    return words


def first_keyword(sql: str) -> str:
    words = leading_words(sql, 1)
    return words[0] if words else ""


def code_only(sql: str) -> str:
    """``sql`` with comments and literals blanked out, for searching for function names."""
    out: list[str] = []
    i = 0
    n = len(sql)
    start = 0
    while i < n:
        j = skip_token(sql, i)
        if j != i:
            out.append(sql[start:i])
            out.append(" ")
            i = start = j
            continue
        i += 1
    out.append(sql[start:])
    return "".join(out)
