"""Query trees: the sqlglot half of the classifier.

Owns: parsing SELECT / WITH / VALUES / TABLE (and the inner statements of EXPLAIN and
COPY) with sqlglot's compiled build, and walking the tree for writable CTEs, SELECT INTO,
locking clauses, called functions and touched tables, cross-checked against the text.
Imported on the first statement that needs it, so a proxy that never routes reads (no
replicas) never loads sqlglot.
Must not touch: the lexical gate and the cache (classifier.py).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import sqlglot.tokens
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect

from router.functions import (
    _NAME_THEN_PAREN,
    FunctionCatalog,
    attribute_call_reason,
    function_reason,
    lexical_calls,
)
from router.lexer import code_only

log = logging.getLogger("pgrouter.classifier")

SQLGLOT_COMPILED: bool = bool(getattr(sqlglot.tokens, "SQLGLOTC_INSTALLED", False))
if not SQLGLOT_COMPILED:
    log.warning("sqlglot's compiled build (sqlglot[c]) is not installed; parsing is slow")
_DIALECT = Dialect.get_or_raise("postgres")
_DML = (exp.Insert, exp.Update, exp.Delete, exp.Merge)
_ROOTS = (exp.Select, getattr(exp, "SetOperation", exp.Union), exp.Subquery, exp.Values, *_DML)
# Statement nodes that have no business inside a query: the parse went wrong.
_FORBIDDEN = tuple(
    getattr(exp, name)
    for name in (
        "Command", "Create", "Drop", "Alter", "TruncateTable", "Copy", "Transaction", "Commit",
        "Rollback", "Set", "Use", "Describe", "Pragma", "Analyze", "Grant", "Revoke", "Refresh",
        "Kill", "Cache", "Uncache", "LoadData", "Show", "Comment", "Execute", "Declare",
    )
    if hasattr(exp, name)
)  # fmt: skip
_LOCK_WORDS = re.compile(r"\bFOR\s+(?:NO\s+KEY\s+)?UPDATE\b|\bFOR\s+(?:KEY\s+)?SHARE\b")
_DML_WORDS = re.compile(r"\b(?:INSERT|UPDATE|DELETE|MERGE)\b")
_INTO_WORD = re.compile(r"\bINTO\b")


@dataclass(slots=True)
class _Facts:
    """What a parsed query does."""

    root_dml: str | None = None  # "insert", ... when the statement itself is DML
    writable_cte: bool = False
    select_into: bool = False
    lock: str | None = None  # "for-update", "for-no-key-update", "for-share", ...
    function_reason: str | None = None
    tables: set[str] = field(default_factory=set)
    calls: set[str] = field(default_factory=set)


def parse(stmt: str, catalog: FunctionCatalog) -> _Facts | None:
    """Facts about one SELECT / WITH / VALUES / TABLE / INSERT / UPDATE / DELETE / MERGE
    statement, or None when sqlglot cannot parse it or the tree is not a query."""
    try:
        trees = _DIALECT.parse(stmt)
    except Exception:  # ParseError, TokenError, and on odd input anything: not understood
        return None
    if len(trees) != 1 or not isinstance(trees[0], _ROOTS):
        return None
    root = trees[0]
    facts = _Facts(root_dml=root.key if isinstance(root, _DML) else None)
    ctes: set[str] = set()
    for node in root.walk():
        if isinstance(node, _FORBIDDEN) or _user_operator(node):
            return None
        if isinstance(node, _DML):
            facts.writable_cte = facts.writable_cte or node is not root
        elif isinstance(node, exp.Lock):
            facts.lock = facts.lock or _lock_reason(node)
        elif isinstance(node, exp.Select):
            facts.select_into = facts.select_into or bool(node.args.get("into"))
        elif isinstance(node, exp.Func):
            _note_call(node, stmt, catalog, facts)
        elif isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            facts.tables.add(".".join(p.name for p in node.parts).lower())
        elif isinstance(node, exp.CTE):
            ctes.add(node.alias_or_name.lower())
        elif isinstance(node, exp.Column) and not facts.function_reason:
            facts.function_reason = attribute_call_reason(node.name.lower(), catalog)
    if not _cross_check(stmt, catalog, facts):
        return None
    facts.tables -= ctes
    return facts


def _user_operator(node: object) -> bool:
    """OPERATOR(schema.op) outside pg_catalog: a user function we cannot see runs it."""
    if not isinstance(node, exp.Operator):
        return False
    return not str(node.args.get("operator", "")).lower().startswith("pg_catalog.")


def _lock_reason(lock: exp.Lock) -> str:
    update, key = bool(lock.args.get("update")), bool(lock.args.get("key"))
    if update:
        return "for-no-key-update" if key else "for-update"
    return "for-key-share" if key else "for-share"


def _note_call(node: exp.Func, stmt: str, catalog: FunctionCatalog, facts: _Facts) -> None:
    call = tree_call(node, stmt)
    if call is None:
        return
    name, schema = call
    facts.calls.add(name)
    if schema:
        facts.calls.add(f"{schema}.{name}")
    facts.function_reason = facts.function_reason or function_reason(name, schema, catalog)


def _cross_check(stmt: str, catalog: FunctionCatalog, facts: _Facts) -> bool:
    """Re-find, with PostgreSQL's lexical rules, what must not be lost: locking clauses,
    data-modifying statements, INTO, and calls of side-effecting functions. False when
    the text has something the tree does not."""
    code = code_only(stmt)
    upper = code.upper()
    if facts.lock is None and _LOCK_WORDS.search(upper):
        return False
    modifies = facts.root_dml is not None or facts.writable_cte
    if not modifies and _DML_WORDS.search(_LOCK_WORDS.sub(" ", upper)):
        return False
    if not (modifies or facts.select_into) and _INTO_WORD.search(upper):
        return False
    for name, schema in lexical_calls(code):
        reason = function_reason(name, schema, catalog)
        if reason:
            facts.calls.add(name)
            facts.function_reason = facts.function_reason or reason
    return True


# --- the cache ---------------------------------------------------------------------------


def tree_call(node: exp.Func, stmt: str) -> tuple[str, str | None] | None:
    """(name, schema) of a call in a sqlglot tree parsed from ``stmt``, lower-case and as
    written (sqlglot turns ``random()`` into ``Rand``: the name comes from the source
    position); None for syntax that is not a call by name (casts, operators, ...)."""
    if isinstance(node, (exp.Cast, exp.Binary)):  # x::t, a ->> 'k', a ? 'k', ...
        return None
    if isinstance(node, exp.Anonymous):
        name = node.name.lower()
    else:
        start = node.meta.get("start")
        if isinstance(start, int):
            m = _NAME_THEN_PAREN.match(stmt, start)
        else:  # special-syntax builtins (string_agg, substring, ...) carry no position
            m = _NAME_THEN_PAREN.match(node.sql(dialect="postgres"))
        if not m:
            return None
        name = m.group(1).lower()
    parent = node.parent
    if isinstance(parent, exp.Dot) and parent.expression is node:
        qualifier = parent.this
        if isinstance(qualifier, exp.Column):
            qualifier = qualifier.parts[-1]
        return name, qualifier.name.lower() or None
    return name, None


