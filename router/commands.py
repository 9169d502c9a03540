"""pgrouter's own commands over the extended protocol.

Owns: recognizing ``SET / SHOW / RESET pgrouter.<name>`` sent as Parse / Bind / Describe /
Execute (what psycopg, asyncpg and JDBC do for every statement), remembering which
statement and portal names hold such a command, and the replies the proxy gives in the
server's place: ParseComplete, BindComplete, ParameterDescription and RowDescription or
NoData, then the command's result at Execute.
Must not touch: what the commands do (Forwarder.command does that), sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from protocol import backend as be
from protocol import frontend as fe
from router.hints import Command, maybe_command, pgrouter_command
from router.prepared import bind_statement, split_parse

_PARSE_COMPLETE: Final = be.ParseComplete().encode()
_BIND_COMPLETE: Final = be.BindComplete().encode()
_CLOSE_COMPLETE: Final = be.CloseComplete().encode()
_NO_DATA: Final = be.NoData().encode()
_NO_PARAMETERS: Final = be.ParameterDescription(()).encode()

# Runs a command; returns its reply without ReadyForQuery (CommandComplete, DataRow...).
Runner = Callable[[Command], bytes]


class CommandMessages:
    """Statement and portal names bound to pgrouter commands, for one client."""

    def __init__(self) -> None:
        self.statements: dict[str, Command] = {}
        self.portals: dict[str, Command] = {}

    def active(self) -> bool:
        return bool(self.statements or self.portals)

    def reply(self, tag: str, raw: bytes, run: Runner) -> bytes | None:
        """The proxy's reply when this message belongs to a pgrouter command; None when
        it goes to the server (and forgets any command held under the same name)."""
        body = raw[5:]
        if tag == "P":
            name, _ = split_parse(body)
            command = None
            if maybe_command(body):
                command = pgrouter_command(fe.Parse.decode(body).query)
            if command is None:
                self.statements.pop(name, None)
                return None
            self.statements[name] = command
            return _PARSE_COMPLETE
        if not self.active():
            return None
        if tag == "B":
            portal_cstr, statement, _ = bind_statement(body)
            portal = portal_cstr[:-1].decode("utf-8", "surrogateescape")
            command = self.statements.get(statement)
            if command is None:
                self.portals.pop(portal, None)
                return None
            self.portals[portal] = command
            return _BIND_COMPLETE
        kind = chr(body[0]) if body else ""
        name = body[1:-1].decode("utf-8", "surrogateescape")
        if tag == "D":
            held = self.statements if kind == "S" else self.portals
            command = held.get(name)
            if command is None:
                return None
            description = _describe(command)
            return _NO_PARAMETERS + description if kind == "S" else description
        if tag == "E":
            portal = fe.Execute.decode(body).portal
            command = self.portals.get(portal)
            return None if command is None else run(command)
        if tag == "C":
            held = self.statements if kind == "S" else self.portals
            if held.pop(name, None) is None:
                return None
            return _CLOSE_COMPLETE
        return None


def _describe(command: Command) -> bytes:
    if command.verb != "SHOW":
        return _NO_DATA
    return be.RowDescription((be.FieldDescription(f"pgrouter.{command.name}"),)).encode()
