"""Statement classification: SQL text -> Classification (kind, tables, functions, flags).

Owns: deciding what a query string does, and caching that decision. Stage 1 is a lexical
gate on each statement's first keywords (router.lexer): transaction control, session
state, utility, DDL, DML, COPY, LOCK, CALL and DO are decided by keyword tables and never
reach sqlglot, which parses utility statements loosely. Stage 2 parses SELECT / WITH /
VALUES / TABLE (and what EXPLAIN or COPY (...) TO wraps) with sqlglot's compiled build
and looks for writable CTEs, SELECT INTO, locking clauses and side-effecting functions
(router.functions); a lexical cross-check, with PostgreSQL's rules for literals and
comments, makes sure the parse did not lose any of them. Anything not understood is
UNKNOWN (the caller sends it to the primary) and counted in ``Classifier.fallbacks``.
Must not touch: routing (the classifier never picks a target), sockets, session state.

Theory of operation (cache): results are keyed by ``fingerprint(sql)`` (literals,
parameters and literal lists normalized, comments and white space collapsed) plus the
catalog version, so the parser runs once per statement shape. No decision depends on a
literal's value: where one could (``set_config``'s third argument, ``SET
default_transaction_read_only = 'on'``), the literal is ignored and the answer is the
primary-bound one. A first-level dict keyed by the raw text answers repeats without
fingerprinting. Like the lexer, this assumes standard_conforming_strings=on.
"""

from __future__ import annotations

import enum
import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final

from router.functions import (
    FunctionCatalog,
)
from router.lexer import code_only, leading_words, skip_token, split_statements, strip_leading

__all__ = ["Classification", "Classifier", "FunctionCatalog", "Kind"]

log = logging.getLogger(__name__)

# sqlglot[c] installs sqlglotc, which overlays mypyc-compiled modules (tokenizer core,
# parser, expressions) on the sqlglot package; importing sqlglot picks them up by itself.


class Kind(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    TRANSACTION = "transaction"
    SESSION = "session"
    UTILITY = "utility"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Classification:
    kind: Kind
    reason: str  # short, for metrics and SHOW ROUTE
    tables: frozenset[str] = frozenset()  # lower-case, schema-qualified as written
    functions: frozenset[str] = frozenset()  # lower-case; "public.f" calls list "public.f", "f"
    locking: bool = False  # FOR UPDATE/SHARE anywhere, or LOCK
    writable_cte: bool = False
    select_into: bool = False
    multi_statement: bool = False
    read_only_begin: bool = False  # makes the transaction (or, SET SESSION ..., later ones) RO
    tx_end: bool = False  # COMMIT/END/ROLLBACK/ABORT/PREPARE TRANSACTION
    # The statement's fingerprint when the cache computed it (candidate reads); "" else.
    fingerprint: str = field(default="", compare=False)

    @property
    def is_read(self) -> bool:
        return self.kind is Kind.READ


# --- fingerprint -------------------------------------------------------------------------

# Plain code: words (with their digits and $), punctuation, white space and complete
# quoted identifiers; stops where a string, comment, number or parameter may start.
# Possessive (no backtracking): a quoted identifier ends where the lexer says, never at
# the first quote of a doubled "".
_RUN: Final = re.compile(
    r"(?:[^'\"$\-/.0-9]++|\"(?:[^\"]++|\"\")*+\"|(?<=[A-Za-z0-9_$\x80-\U0010ffff])[0-9$]++"
    r"|-(?!-)|/(?!\*)|\.(?!\d))++"
)
_NUMBER: Final = re.compile(r"\$\d+|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?")
_WHITE: Final = re.compile(r"[ \t\n\r\f\v]+")  # PostgreSQL's white space, not Unicode's
_SPACE: Final = frozenset(" \t\n\r\f\v")
_PREFIX: Final = frozenset("eEbBxXnN")
# Exact equivalents of router.lexer.skip_token for the common cases, which it scans one
# character at a time: '' without E prefix, "", and /* */ without nesting.
_PLAIN_STRING: Final = re.compile(r"'(?:[^']|'')*'?")
_QUOTED_IDENT: Final = re.compile(r'"(?:[^"]|"")*"?')
_FLAT_COMMENT: Final = re.compile(r"/\*(?:[^*/]|\*(?!/)|/(?!\*))*\*/")
_ITEM: Final = r"[-+]?\?"
_TUPLE: Final = rf"\( ?{_ITEM}(?: ?, ?{_ITEM})* ?\)"
# A run of parenthesized lists of placeholders -> "(?)"; quoted identifiers are skipped.
_LITERAL_LISTS: Final = re.compile(rf'("(?:[^"]|"")*"?)|{_TUPLE}(?: ?, ?{_TUPLE})*')


def fingerprint(sql: str) -> str:
    """``sql`` with literals, numbers and ``$n`` parameters as ``?``, literal-only lists
    (IN lists, VALUES rows, arguments) as ``(?)``, comments dropped, white space collapsed
    and unquoted words lower-cased. Literal and comment boundaries are router.lexer's."""
    text = _scanned_fingerprint(sql)
    if "(?" in text or "( ?" in text:
        text = _LITERAL_LISTS.sub(_collapse_list, text)
    return text


def _scanned_fingerprint(sql: str) -> str:
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        m = _RUN.match(sql, i)
        if m:
            _append_code(out, m.group())
            i = m.end()
            if i == n:
                break
        c = sql[i]
        j = _token_end(sql, i) if c in "'\"$-/" else i
        if j != i:
            if c == "'":
                _drop_literal_prefix(out, sql, i)
            if c not in "-/":
                out.append(sql[i:j] if c == '"' else "?")
            elif out and out[-1][-1] != " ":
                out.append(" ")  # a comment separates like white space
            i = j
            continue
        m = _NUMBER.match(sql, i)
        out.append("?" if m else c)
        i = m.end() if m else i + 1
    return "".join(out).strip(" ")


def _append_code(out: list[str], run: str) -> None:
    """Append plain code lower-cased, each stretch of white space as one space; as it is
    when it has quoted identifiers (which must keep their case and spaces)."""
    if '"' in run:
        pass
    elif run.isascii():  # str.split() also splits at \x1c-\x1f: harmless outside literals
        body = " ".join(run.split()).lower()
        lead = " " if run[0] in _SPACE and (not out or out[-1][-1] != " ") else ""
        trail = " " if run[-1] in _SPACE and body else ""
        run = lead + body + trail
    else:
        run = _WHITE.sub(" ", run).lower()
        if run[0] == " " and out and out[-1][-1] == " ":
            run = run[1:]
    if run:
        out.append(run)


def _drop_literal_prefix(out: list[str], sql: str, i: int) -> None:
    """A string literal at ``i`` with a prefix (E'', B'', X'', N'', U&''): the prefix is
    part of the literal, so it goes into the placeholder with it."""
    size = 2 if sql[i - 2 : i] in ("U&", "u&") else 1 if sql[i - 1 : i] in _PREFIX else 0
    before = sql[i - size - 1] if i - size > 0 else " "
    if size and not (before.isalnum() or before in "_$" or before >= "\x80"):
        last = out[-1][:-size] if out else ""
        if last:
            out[-1] = last
        elif out:
            out.pop()


def _token_end(sql: str, i: int) -> int:
    """``router.lexer.skip_token(sql, i)``, faster for the common literals."""
    c = sql[i]
    if c == "'" and (i == 0 or sql[i - 1] not in "eE"):
        return _PLAIN_STRING.match(sql, i).end()  # type: ignore[union-attr]
    if c == '"':
        return _QUOTED_IDENT.match(sql, i).end()  # type: ignore[union-attr]
    if c == "/" and (m := _FLAT_COMMENT.match(sql, i)):
        return m.end()
    return skip_token(sql, i)


def _collapse_list(m: re.Match[str]) -> str:
    return m.group(1) or "(?)"


# --- stage 1: keyword tables -------------------------------------------------------------


def _kw(words: str) -> list[str]:
    return words.split()


_W: Final = Kind.WRITE
_S: Final = Kind.SESSION
_U: Final = Kind.UTILITY
_FIXED: Final[dict[str, Classification]] = {
    **{w: Classification(_W, w.lower()) for w in _kw("INSERT UPDATE DELETE MERGE CALL DO")},
    **{
        w: Classification(_W, "ddl")
        for w in _kw(
            "CREATE ALTER DROP TRUNCATE COMMENT GRANT REVOKE SECURITY REFRESH REASSIGN IMPORT"
        )
    },
    "LOCK": Classification(_W, "lock", locking=True),
    **{
        w: Classification(_S, w.lower())
        for w in _kw(
            "RESET LISTEN UNLISTEN NOTIFY EXECUTE DEALLOCATE DECLARE FETCH MOVE CLOSE DISCARD LOAD"
        )
    },
    **{w: Classification(_U, w.lower()) for w in _kw("SHOW VACUUM ANALYZE CLUSTER REINDEX")},
    "CHECKPOINT": Classification(_U, "checkpoint"),
    "ANALYSE": Classification(_U, "analyze"),
    "SAVEPOINT": Classification(Kind.TRANSACTION, "savepoint"),
    "RELEASE": Classification(Kind.TRANSACTION, "release-savepoint"),
}
_TX: Final = Kind.TRANSACTION
_BEGIN: Final = Classification(_TX, "begin")
_BEGIN_READ_ONLY: Final = Classification(_TX, "begin-read-only", read_only_begin=True)
_UNKNOWN_STATEMENT: Final = Classification(Kind.UNKNOWN, "unknown-statement")
_UNPARSED: Final = Classification(Kind.UNKNOWN, "unparsed")
_EMPTY: Final = Classification(Kind.READ, "empty")
# Statements whose classification may be READ: they take the fingerprint path.
_MAYBE_READ: Final = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "EXPLAIN", "COPY"})
_RANK: Final = {Kind.READ: 0, Kind.TRANSACTION: 1, _U: 2, _S: 3, _W: 4, Kind.UNKNOWN: 5}

_NAME: Final = r'(?:"(?:[^"]|"")+"|[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*)'
_WORD: Final = re.compile(r"[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*")
_QUALIFIED: Final = re.compile(rf"{_NAME}(?:\s*\.\s*{_NAME})*")
_NAME_PART: Final = re.compile(_NAME)
_READ_ONLY: Final = re.compile(r"\bREAD\s+ONLY\b")
_READ_WRITE: Final = re.compile(r"\bREAD\s+WRITE\b")
_AND_CHAIN: Final = re.compile(r"\bAND\s+CHAIN\b")
_SET_RO_PARAM: Final = re.compile(
    r"^\s*SET\s+(?:SESSION\s+|LOCAL\s+)?(DEFAULT_TRANSACTION_READ_ONLY|TRANSACTION_READ_ONLY)"
    r"\s*(?:=|\bTO\b)\s*(ON|TRUE|YES)\s*$"
)

Handler = Callable[[str, list[str], FunctionCatalog], Classification]


def _begin(stmt: str, words: list[str], catalog: FunctionCatalog) -> Classification:
    if words[0] == "START" and words[1:2] != ["TRANSACTION"]:
        return _UNKNOWN_STATEMENT
    return _BEGIN_READ_ONLY if _read_only_modes(stmt) else _BEGIN


def _read_only_modes(stmt: str) -> bool:
    """READ ONLY, and runnable on a standby: a hot standby refuses SERIALIZABLE (0A000),
    so a serializable read-only transaction stays on the primary."""
    code = code_only(stmt).upper()
    return bool(_READ_ONLY.search(code)) and not _READ_WRITE.search(code) and (
        "SERIALIZABLE" not in code
    )


def _commit(stmt: str, words: list[str], catalog: FunctionCatalog) -> Classification:
    if words[1:2] == ["PREPARED"]:
        return Classification(_TX, "commit-prepared")
    if _AND_CHAIN.search(code_only(stmt).upper()):
        return Classification(_TX, "commit-and-chain")
    return Classification(_TX, "commit", tx_end=True)


def _rollback(stmt: str, words: list[str], catalog: FunctionCatalog) -> Classification:
    if words[1:2] == ["PREPARED"]:
        return Classification(_TX, "rollback-prepared")
    if "TO" in words[1:3]:
        return Classification(_TX, "rollback-to-savepoint")
    if _AND_CHAIN.search(code_only(stmt).upper()):
        return Classification(_TX, "rollback-and-chain")
    return Classification(_TX, "rollback", tx_end=True)


def _prepare(stmt: str, words: list[str], catalog: FunctionCatalog) -> Classification:
    if words[1:2] == ["TRANSACTION"]:
        return Classification(_TX, "prepare-transaction", tx_end=True)
    return Classification(_S, "prepare")


def _set(stmt: str, words: list[str], catalog: FunctionCatalog) -> Classification:
    second = words[1] if len(words) > 1 else ""
    if second == "TRANSACTION":
        if _read_only_modes(stmt):
            return Classification(_TX, "set-transaction-read-only", read_only_begin=True)
        return Classification(_TX, "set-transaction")
    if second == "SESSION" and words[2:3] == ["CHARACTERISTICS"]:
        ro = _read_only_modes(stmt)
        return Classification(_S, "set-session-characteristics", read_only_begin=ro)
    param = _SET_RO_PARAM.match(code_only(stmt).upper())
    if param and param.group(1) == "TRANSACTION_READ_ONLY":
        return Classification(_TX, "set-transaction-read-only", read_only_begin=True)
    return Classification(_S, "set", read_only_begin=param is not None)


def _close_paren(text: str, start: int) -> int:
    """``text[start]`` is ``(``: the index after its matching ``)``, or -1."""
    depth = 0
    i, n = start, len(text)
    while i < n:
        j = skip_token(text, i)
        if j != i:
            i = j
            continue
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def _after_keyword(stmt: str) -> str:
    """The statement after its first word, without leading white space and comments."""
    rest = strip_leading(stmt)
    m = _WORD.match(rest)
    return strip_leading(rest[m.end() :] if m else rest)


def _table_name(text: str) -> str:
    parts = (p[1:-1].replace('""', '"') if p[0] == '"' else p for p in _NAME_PART.findall(text))
    return ".".join(parts).lower()


def _copy(stmt: str, words: list[str], catalog: FunctionCatalog) -> Classification:
    rest = _after_keyword(stmt)
    inner: str | None = None
    tables: frozenset[str] = frozenset()
    if rest.startswith("("):
        end = _close_paren(rest, 0)
        if end < 0:
            return _UNPARSED
        inner, rest = rest[1 : end - 1], rest[end:]
    else:
        m = _QUALIFIED.match(rest)
        if not m:
            return _UNPARSED
        tables = frozenset({_table_name(m.group(0))})
        rest = strip_leading(rest[m.end() :])
        if rest.startswith("("):  # column list
            end = _close_paren(rest, 0)
            if end < 0:
                return _UNPARSED
            rest = rest[end:]
    direction = leading_words(rest, 2)
    if direction[:1] == ["FROM"]:
        return Classification(_W, "copy-from", tables)
    if direction[:1] != ["TO"]:
        return _UNPARSED
    if direction[1:] != ["STDOUT"]:  # a server-side file or program: a side effect
        program = direction[1:] == ["PROGRAM"]
        return Classification(_W, "copy-to-program" if program else "copy-to-file", tables)
    if inner is None:
        return Classification(Kind.READ, "copy-to", tables)
    result = _classify_statement(inner, catalog)
    return replace(result, reason="copy-to") if result.is_read else result


_EXPLAINABLE: Final = frozenset(_kw("SELECT WITH VALUES TABLE INSERT UPDATE DELETE MERGE"))
_ANALYZE: Final = re.compile(r"\bANALY[SZ]E\b", re.IGNORECASE)


def _explain(stmt: str, words: list[str], catalog: FunctionCatalog) -> Classification:
    """EXPLAIN only plans (a standby plans INSERT/UPDATE/DELETE/MERGE too); EXPLAIN
    ANALYZE runs the statement, so it is whatever the statement is."""
    rest = _after_keyword(stmt)
    analyze = False
    if rest.startswith("("):
        end = _close_paren(rest, 0)
        if end < 0:
            return _UNPARSED
        analyze = bool(_ANALYZE.search(code_only(rest[1 : end - 1])))  # any value: conservative
        rest = rest[end:]
    else:
        while (m := _WORD.match(rest)) and m.group(0).upper() in ("ANALYZE", "ANALYSE", "VERBOSE"):
            analyze = analyze or m.group(0).upper() != "VERBOSE"
            rest = strip_leading(rest[m.end() :])
    inner_words = leading_words(rest, 4)
    if not inner_words:
        return _UNPARSED
    if not analyze and inner_words[0] in _EXPLAINABLE:
        from router import querytree

        facts = querytree.parse(rest, catalog)
        if facts is None:
            return _UNPARSED
        return Classification(Kind.READ, "explain", frozenset(facts.tables), frozenset(facts.calls))
    inner = _classify_statement(rest, catalog)
    if inner.is_read:
        return replace(inner, reason="explain-analyze" if analyze else "explain")
    if inner.kind is Kind.UNKNOWN:
        return inner
    prefix = "explain-analyze-" if analyze else "explain-"
    return replace(inner, reason=prefix + (inner.kind.value if analyze else inner.reason))


def _query(stmt: str, words: list[str], catalog: FunctionCatalog) -> Classification:
    from router import querytree  # sqlglot loads on the first statement that needs it

    facts = querytree.parse(stmt, catalog)
    if facts is None:
        return _UNPARSED
    reason = (
        facts.root_dml
        or ("writable-cte" if facts.writable_cte else None)
        or ("select-into" if facts.select_into else None)
        or facts.lock
        or facts.function_reason
    )
    return Classification(
        _W if reason else Kind.READ,
        reason or "select",
        frozenset(facts.tables),
        frozenset(facts.calls),
        locking=facts.lock is not None,
        writable_cte=facts.writable_cte,
        select_into=facts.select_into,
    )


_HANDLERS: Final[dict[str, Handler]] = {
    "BEGIN": _begin,
    "START": _begin,
    "COMMIT": _commit,
    "END": _commit,
    "ROLLBACK": _rollback,
    "ABORT": _rollback,
    "PREPARE": _prepare,
    "SET": _set,
    "COPY": _copy,
    "EXPLAIN": _explain,
    **{w: _query for w in ("SELECT", "WITH", "VALUES", "TABLE")},
}


def _classify_statement(stmt: str, catalog: FunctionCatalog) -> Classification:
    words = leading_words(stmt, 4)
    first = words[0] if words else ""
    fixed = _FIXED.get(first)
    if fixed is not None:
        return fixed
    handler = _HANDLERS.get(first)
    return handler(stmt, words, catalog) if handler else _UNKNOWN_STATEMENT


def _classify_text(sql: str, catalog: FunctionCatalog) -> Classification:
    statements = split_statements(sql)
    if not statements:
        return _EMPTY
    results = [_classify_statement(s, catalog) for s in statements]
    if len(results) == 1:
        return results[0]
    top = max(results, key=lambda r: _RANK[r.kind])  # the first of the most primary-bound
    return Classification(
        top.kind,
        top.reason,
        frozenset().union(*(r.tables for r in results)),
        frozenset().union(*(r.functions for r in results)),
        locking=any(r.locking for r in results),
        writable_cte=any(r.writable_cte for r in results),
        select_into=any(r.select_into for r in results),
        multi_statement=True,
        read_only_begin=any(r.read_only_begin for r in results),
        tx_end=any(r.tx_end for r in results),
    )


# --- stage 2: sqlglot --------------------------------------------------------------------

_TEXT_CACHE_MAX_LEN: Final = 8192  # longer texts are cached by fingerprint only
NO_CATALOG: Final = FunctionCatalog()


class Classifier:
    """Classifies query strings against a function catalog snapshot, with a bounded LRU
    keyed by (fingerprint, catalog version) and a bounded first-level dict keyed by text.
    Not thread-safe: one per event loop."""

    def __init__(self, catalog: FunctionCatalog = NO_CATALOG, cache_size: int = 10000) -> None:
        self._catalog = catalog
        self._size = max(0, cache_size)
        self._by_text: dict[str, Classification] = {}
        self._by_fingerprint: OrderedDict[tuple[str, int], Classification] = OrderedDict()
        self._marked: dict[str, str] = {}  # fingerprint -> reason, from mark_write
        self._fingerprints: dict[str, str] = {}  # text -> fingerprint(text), see fingerprint
        self._hits = 0
        self._misses = 0
        self.fallbacks = 0  # statements sent to the primary because not understood

    @property
    def catalog(self) -> FunctionCatalog:
        return self._catalog

    def classify(self, sql: str) -> Classification:
        result = self._by_text.get(sql)
        if result is None:
            result = self._classify_new_text(sql)
        else:
            self._hits += 1
        if result.kind is Kind.UNKNOWN:
            self.fallbacks += 1
        return result

    def fingerprint(self, sql: str) -> str:
        """``fingerprint(sql)``, remembered by text as classifications are: the planner
        asks for it on every unit, and texts repeat."""
        found = self._fingerprints.get(sql)
        if found is None:
            found = fingerprint(sql)
            if self._size and len(sql) <= _TEXT_CACHE_MAX_LEN:
                if len(self._fingerprints) >= self._size:
                    self._fingerprints = {}  # start over, as _remember_text does
                self._fingerprints[sql] = found
        return found

    def set_catalog(self, catalog: FunctionCatalog) -> None:
        """Swap the snapshot; results computed with the old one are dropped."""
        if catalog == self._catalog:
            return
        self._catalog = catalog
        self._by_text = {}
        self._by_fingerprint.clear()

    def mark_write(self, sql: str, reason: str = "read-only-error") -> None:
        """Remember that ``sql``'s shape writes after all (a replica answered 25006): from
        now on it and every statement with its fingerprint are WRITE with ``reason``."""
        key = fingerprint(sql)
        self._marked[key] = reason
        if len(self._marked) > max(self._size, 1):
            del self._marked[next(iter(self._marked))]
        self._by_text = {}
        self._by_fingerprint.pop((key, self._catalog.version), None)

    def cache_info(self) -> tuple[int, int, int]:
        """(hits, misses, entries) of the fingerprint cache; a hit in either level counts."""
        return self._hits, self._misses, len(self._by_fingerprint)

    def _classify_new_text(self, sql: str) -> Classification:
        word = _first_word(sql) if ";" not in sql else ""
        if word and word not in _MAYBE_READ:
            # One statement that stage 1 decides (never a read): nothing to share by shape.
            self._misses += 1
            result = _classify_statement(sql, self._catalog)
            self._remember_text(sql, result)
            return result
        key = (fingerprint(sql), self._catalog.version)
        cached = self._by_fingerprint.get(key)
        if cached is None:
            self._misses += 1
            result = replace(_classify_text(sql, self._catalog), fingerprint=key[0])
            marked = self._marked.get(key[0])
            if marked and result.is_read:
                result = replace(result, kind=Kind.WRITE, reason=marked)
            if self._size:
                self._by_fingerprint[key] = result
                if len(self._by_fingerprint) > self._size:
                    self._by_fingerprint.popitem(last=False)
        else:
            result = cached
            self._hits += 1
            self._by_fingerprint.move_to_end(key)
        self._remember_text(sql, result)
        return result

    def _remember_text(self, sql: str, result: Classification) -> None:
        if not self._size or len(sql) > _TEXT_CACHE_MAX_LEN:
            return
        if len(self._by_text) >= self._size:
            # Start over: cheaper than LRU upkeep on every hit; the fingerprint level
            # still has the shapes, so only the fingerprinting is repeated.
            self._by_text = {}
        self._by_text[sql] = result


_FIRST_WORD: Final = re.compile(r"[\s(]*+([A-Za-z_]+)")


def _first_word(sql: str) -> str:
    """The first keyword, upper-cased ("" if unsure). Only picks the cache path: the
    classification itself always goes through router.lexer."""
    m = _FIRST_WORD.match(sql)
    if m is None or sql[m.end() : m.end() + 1] not in ("", " ", "\n", "\t", "\r"):
        return ""
    return m.group(1).upper()
