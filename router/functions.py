"""Functions for the classifier: which calls a statement makes, and which of them make it
primary-bound.

Owns: the catalog snapshot of user functions (``FunctionCatalog``), the builtin lists
(functions that write, take locks, change session state, or only work on a primary, and
volatile builtins that are still pure reads), the verdict for one called name, and
finding called names, as written, in a sqlglot tree and in lexer-cleaned code.
Must not touch: parsing, caching, routing. The snapshot is immutable; the proxy refreshes
it from the primary's pg_proc and swaps it in with ``Classifier.set_catalog``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

# Builtins (and common extensions) that write, lock, change session state, or fail or
# answer differently on a hot standby. Matched by exact name ...
WRITE_FUNCTIONS: Final = frozenset(
    {
        # sequences: currval/lastval are reads, but only on the connection that ran nextval
        "nextval",
        "setval",
        "currval",
        "lastval",
        # session state and notifications
        "set_config",  # even set_config(..., true): transaction-local, still a side effect
        "setseed",
        "pg_notify",
        "pg_export_snapshot",
        # transaction ids: assigning one needs a primary
        "txid_current",
        "txid_current_if_assigned",
        "pg_current_xact_id",
        "pg_current_xact_id_if_assigned",
        # server administration
        "pg_cancel_backend",
        "pg_terminate_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_log_backend_memory_contexts",
        "pg_import_system_collations",
        "pg_is_in_recovery",  # asked through the proxy, the primary's answer is the truth
        "pg_walfile_name",
        "pg_walfile_name_offset",
        "pg_logical_emit_message",
        "pg_replication_slot_advance",
        "pg_drop_replication_slot",
        "pg_truncate_visibility_map",
        "gin_clean_pending_list",
        "pg_stat_statements_reset",
        "postgres_fdw_disconnect",
        "postgres_fdw_disconnect_all",
        # large objects without the lo_ prefix
        "loread",
        "lowrite",
        # run arbitrary SQL text (invisible to the classifier)
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
    }
)

# ... or by prefix.
WRITE_PREFIXES: Final = (
    "pg_advisory_",  # pg_advisory_lock*, pg_advisory_unlock*, pg_advisory_xact_lock*
    "pg_try_advisory_",
    "lo_",  # lo_import, lo_export, lo_create, lo_creat, lo_unlink, lo_open, lo_put, ...
    "dblink",  # dblink, dblink_exec, dblink_connect*, ...
    "pg_stat_reset",  # pg_stat_reset, pg_stat_reset_shared, pg_stat_reset_single_*, ...
    "pg_current_wal_",  # "recovery is in progress" on a standby
    "pg_switch_",
    "pg_create_",  # pg_create_restore_point, pg_create_*_replication_slot
    "pg_copy_",  # pg_copy_*_replication_slot
    "pg_logical_slot_",  # consumes (get) or pins (peek) a slot
    "pg_replication_origin_",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_backup_",
    "pg_wal_replay_",
    "pg_file_",  # adminpack
    "brin_summarize",
    "brin_desummarize",
)

# Volatile builtins that are still pure reads: the answer may differ per call, but
# running them on a replica changes nothing anywhere.
PURE_VOLATILE: Final = frozenset(
    {
        "random",
        "random_normal",
        "clock_timestamp",
        "timeofday",
        "now",
        "statement_timestamp",
        "transaction_timestamp",
        "gen_random_uuid",
        "uuidv4",
        "uuidv7",
        "uuid_generate_v1",
        "uuid_generate_v1mc",
        "uuid_generate_v3",
        "uuid_generate_v4",
        "uuid_generate_v5",
        "gen_random_bytes",
        "gen_salt",
        "pg_sleep",
        "pg_sleep_for",
        "pg_sleep_until",
        "pg_current_snapshot",
        "txid_current_snapshot",
    }
)


@dataclass(frozen=True)
class FunctionCatalog:
    """A snapshot of what the primary and the configuration say about functions.

    Names are lower-case, unqualified (``my_fn``) and/or schema-qualified
    (``public.my_fn``); a call matches an entry in either form.
    """

    volatile: frozenset[str] = frozenset()  # user functions marked VOLATILE in pg_proc
    write_functions: frozenset[str] = frozenset()  # config: always writes
    read_functions: frozenset[str] = frozenset()  # config: always reads (overrides the rest)
    version: int = 0
    # Unqualified names of the qualified entries: an unqualified call may resolve to any
    # of them through search_path, so it counts as a call of each.
    _bare_volatile: frozenset[str] = field(init=False, repr=False, compare=False)
    _bare_write: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_bare_volatile", _bare(self.volatile))
        object.__setattr__(self, "_bare_write", _bare(self.write_functions))

    def volatile_call(self, name: str, qualified: str | None) -> bool:
        if qualified is None:
            return name in self.volatile or name in self._bare_volatile
        return name in self.volatile or qualified in self.volatile

    def write_call(self, name: str, qualified: str | None) -> bool:
        if qualified is None:
            return name in self.write_functions or name in self._bare_write
        return name in self.write_functions or qualified in self.write_functions


def _bare(names: frozenset[str]) -> frozenset[str]:
    return frozenset(n.rpartition(".")[2] for n in names if "." in n)


def is_builtin_write(name: str) -> bool:
    return name in WRITE_FUNCTIONS or name.startswith(WRITE_PREFIXES)


def function_reason(name: str, schema: str | None, catalog: FunctionCatalog) -> str | None:
    """Why calling ``schema.name`` (``schema`` None when unqualified) makes a statement a
    write, or None when the call is a read. Names must be lower-case."""
    qualified = f"{schema}.{name}" if schema else None
    shown = qualified or name
    if name in catalog.read_functions or qualified in catalog.read_functions:
        return None
    if catalog.write_call(name, qualified) or is_builtin_write(name):
        return f"write-function:{shown}"
    if name in PURE_VOLATILE and schema in (None, "pg_catalog"):
        return None
    if catalog.volatile_call(name, qualified):
        return f"volatile-function:{shown}"
    return None


def attribute_call_reason(name: str, catalog: FunctionCatalog) -> str | None:
    """``t.fn`` is PostgreSQL's field-selection spelling of ``fn(t)``: a column reference
    named like a catalogued volatile or write function may be a call."""
    if name in catalog.read_functions:
        return None
    if catalog.write_call(name, None):
        return f"write-function:{name}"
    if catalog.volatile_call(name, None):
        return f"volatile-function:{name}"
    return None


_IDENT: Final = r"[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*"
_LEXICAL_CALL: Final = re.compile(rf"(?:({_IDENT})\s*\.\s*)?({_IDENT})\s*\(")
_NAME_THEN_PAREN: Final = re.compile(rf'"?({_IDENT})"?\s*\(')


def lexical_calls(code: str) -> Iterator[tuple[str, str | None]]:
    """(name, schema) of every ``name(`` / ``schema.name(`` in ``code`` (text with
    comments, literals and quoted identifiers blanked by router.lexer.code_only). Also
    yields keywords and type names followed by a parenthesis; callers only look names up."""
    for m in _LEXICAL_CALL.finditer(code):
        yield m.group(2).lower(), (m.group(1) or "").lower() or None
