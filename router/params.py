"""Session parameters: what a client expects of a server connection, and getting there.

Owns: turning a StartupMessage (and its ``options``) into the run-time parameters the
client expects, and the one statement that brings a server connection in line with a
client before it is handed over.
Must not touch: sockets; which server a client gets.

Server connections are opened with only ``user`` and ``database``. Two kinds of
parameters are then kept per client and applied when needed:

- reported ones (client_encoding, DateStyle, TimeZone, application_name, ...): the server
  announces their values with ParameterStatus, so the proxy compares values;
- the rest (a startup ``-c statement_timeout=5s``, a tracked ``SET search_path ...``):
  each server connection remembers how they were applied on it (``applied``), so a
  connection gets exactly the client's SETs, and those of a previous client are RESET.
"""

from __future__ import annotations

from typing import Final

from protocol.startup import StartupMessage
from router.sessionstate import REPORTED

# Startup keys that are not run-time parameters.
_NOT_PARAMETERS: Final = frozenset({"user", "database", "options", "replication"})
# Prefixes consumed by the protocol or by pgrouter itself, never sent to a server.
_RESERVED_PREFIXES: Final = ("_pq_.", "pgrouter.")


def startup_parameters(startup: StartupMessage) -> dict[str, str]:
    """The parameters a client wants applied, startup keys and ``-c`` options alike."""
    wanted: dict[str, str] = {}
    for name, value in startup.params.items():
        if name not in _NOT_PARAMETERS and not name.startswith(_RESERVED_PREFIXES):
            wanted[name] = value
    for name, value in startup.options():
        if not name.startswith(_RESERVED_PREFIXES):
            wanted[name] = value
    return wanted


def split_wanted(startup: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(reported parameters by their name, others as ``{lowercase name: "=value"}``)."""
    reported: dict[str, str] = {}
    applied: dict[str, str] = {}
    for name, value in startup.items():
        if name.lower() in REPORTED:
            reported[name] = value
        else:
            applied[name.lower()] = "=" + value
    return reported, applied


def _normalize(name: str, value: str) -> str:
    if name == "client_encoding":  # 'utf-8', 'UTF8' and 'utf8' are one encoding
        return value.replace("-", "").replace("_", "").upper()
    return value


def literal(value: str) -> str:
    """A string literal that means the same whatever standard_conforming_strings is."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def sync_query(
    reported: dict[str, str],
    applied: dict[str, str],
    server_params: dict[str, str],
    server_applied: dict[str, str],
) -> str | None:
    """One simple-query string that makes the server match; None when it already does."""
    current = {name.lower(): value for name, value in server_params.items()}
    calls: list[str] = []
    for name, value in reported.items():
        key = name.lower()
        have = current.get(key)
        if have is None or _normalize(key, have) != _normalize(key, value):
            calls.append(f"pg_catalog.set_config({literal(name)}, {literal(value)}, false)")
    statements: list[str] = []
    for name, how in applied.items():
        if server_applied.get(name) == how:
            continue
        if how.startswith("="):
            calls.append(f"pg_catalog.set_config({literal(name)}, {literal(how[1:])}, false)")
        else:
            statements.append(how)
    statements += [f'RESET "{name}"' for name in server_applied if name not in applied]
    if calls:
        statements.insert(0, "SELECT " + ", ".join(calls))
    # A newline before each ';': a client's SET text may end in a -- comment.
    return "\n; ".join(statements) if statements else None
