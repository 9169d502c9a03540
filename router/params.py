"""Session parameters: what a client asked for at startup, and bringing a server in line.

Owns: turning a StartupMessage (and its ``options``) into the run-time parameters the
client expects, and the one statement that applies the ones a server connection lacks.
Must not touch: sockets; which server a client gets.

Server connections are opened with only ``user`` and ``database``; a client's
``application_name``, ``client_encoding``, ``DateStyle``, ``-c statement_timeout=...`` and
the like are applied with ``set_config`` when the connection is handed to it, and checked
against the values the server already reports so nothing is set twice.
"""

from __future__ import annotations

from protocol.startup import StartupMessage

# Startup keys that are not run-time parameters.
_NOT_PARAMETERS = frozenset({"user", "database", "options", "replication"})
# Prefixes consumed by the protocol or by pgrouter itself, never sent to a server.
_RESERVED_PREFIXES = ("_pq_.", "pgrouter.")


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


def _normalize(name: str, value: str) -> str:
    if name == "client_encoding":  # 'utf-8', 'UTF8' and 'utf8' are one encoding
        return value.replace("-", "").replace("_", "").upper()
    return value


def missing_parameters(wanted: dict[str, str], server: dict[str, str]) -> dict[str, str]:
    """The entries of ``wanted`` the server does not already report with that value."""
    current = {name.lower(): value for name, value in server.items()}
    missing: dict[str, str] = {}
    for name, value in wanted.items():
        key = name.lower()
        have = current.get(key)
        if have is None or _normalize(key, have) != _normalize(key, value):
            missing[name] = value
    return missing


def sync_statement(
    wanted: dict[str, str], server: dict[str, str]
) -> tuple[str, tuple[str | None, ...]] | None:
    """A parameterized ``SELECT set_config(...)`` applying what is missing, or None."""
    missing = missing_parameters(wanted, server)
    if not missing:
        return None
    calls = ", ".join(
        f"pg_catalog.set_config(${2 * i + 1}, ${2 * i + 2}, false)" for i in range(len(missing))
    )
    values: list[str | None] = []
    for name, value in missing.items():
        values += [name, value]
    return f"SELECT {calls}", tuple(values)
