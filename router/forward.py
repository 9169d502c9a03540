"""Forwarding: a client's messages, made right for the server connection it holds now.

Owns: per-client session facts that must follow the client from one server connection to
the next in transaction and statement modes: its named prepared statements, its tracked
SET parameters, why it is pinned; and the translation of each client message into bytes
for the server plus the replies the server will owe (queued on the server's
ResponseTracker).
Must not touch: sockets, pools (the client session calls ``translate`` with the server it
holds and writes the result).

In session mode nothing is translated: names and statements go through untouched and
only the replies owed are recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from protocol import backend as be
from protocol import frontend as fe
from protocol.framing import TAGS
from protocol.sqlstate import (
    CANT_CHANGE_RUNTIME_PARAM,
    INVALID_PARAMETER_VALUE,
    INVALID_TEXT_REPRESENTATION,
    UNDEFINED_OBJECT,
)
from router.commands import CommandMessages
from router.errors import ClientProtocolViolation
from router.hints import Command, maybe_comment, pgrouter_command, without_comments
from router.lexer import first_keyword, split_statements
from router.lsn import InvalidLsn, format_lsn, parse_lsn
from router.prepared import (
    Statement,
    bind_name,
    close_statement,
    describe_statement,
    parse_facts,
    rename_bind,
)
from router.sessionstate import NO_EFFECT, TEXT_TRACKED, Effect, session_effect
from router.tracker import PASS, PLAIN, PLAIN_QUERY, SWALLOW, SYNTH, Request

if TYPE_CHECKING:
    from router.server import ServerConnection

log = logging.getLogger("pgrouter.client")

# Every message type a client may send once logged in ('p' answers a server's auth request).
FRONTEND_TAGS: Final = frozenset("QPBDESHXCdcfFp")
_PARSE_COMPLETE: Final = be.ParseComplete().encode()
_CLOSE_COMPLETE: Final = be.CloseComplete().encode()
_ROLLBACKS: Final = frozenset({"ROLLBACK", "ABORT"})
_MEMO_MAX: Final = 8192  # bytes: the longest Query frame whose text a client remembers


class Terminate(Exception):
    """The client sent Terminate: forward what came before it, then end the session."""

    def __init__(self, data: bytes) -> None:
        super().__init__("client sent Terminate")
        self.data = data


class Forwarder:
    def __init__(
        self,
        multiplexed: bool,
        on_pin: Callable[[str], None],
        parsed: set[str] | None = None,
    ) -> None:
        self.multiplexed = multiplexed
        # Server-side names of statements some server of the pool parsed successfully.
        self.parsed: set[str] = set() if parsed is None else parsed
        self.statements: dict[str, Statement] = {}
        # Text-tracked parameters: name -> how to apply it ("=value" or a SET statement).
        self.tracked: dict[str, str] = {}
        self.tracked_version = 0  # bumped whenever ``tracked`` changes
        self.pin_reason: str | None = None
        self._on_pin = on_pin
        self._tx_sets: dict[str, str | None] = {}
        self._tx_failed = False
        self._last_keyword = ""
        # Routing facts set by the client through pgrouter's own commands.
        self.route = "auto"  # SET pgrouter.route = primary | replica | auto
        self.min_lsn: int | None = None  # SET pgrouter.min_lsn / options=-c pgrouter.min_lsn
        self.last_write_lsn: int | None = None
        self.last_write_at: float | None = None  # monotonic
        self.command_messages = CommandMessages()
        # What running the last unnamed statement parsed does (a Bind of "" runs it).
        self._unnamed_effect: Effect = NO_EFFECT
        # The last simple Query decoded (see query_text): its frame, text, lower-cased text.
        self._text_of: bytes = b""
        self._text = ""
        self._low = ""

    def query_text(self, raw: bytes) -> tuple[str, str]:
        """(text, lower-cased text) of the Query frame ``raw``. Remembered for the last
        frame asked about: the command check, the translation and the session-state check
        all read the same Query, which is decoded and lower-cased once."""
        if raw is self._text_of:
            return self._text, self._low
        text = raw[5:-1].decode("utf-8", "surrogateescape")
        low = text.lower()
        if len(raw) <= _MEMO_MAX:  # an idle client keeps it: never a bulk statement
            self._text_of, self._text, self._low = raw, text, low
        return text, low

    # ---------------------------------------------------------------- translation

    def translate(self, frames: list[tuple[str, bytes]], server: ServerConnection) -> bytes:
        """Bytes to send ``server`` for ``frames``; synthetic replies due at once are sent
        to the client through ``server``'s link. Raises Terminate on 'X'."""
        tracker = server.tracker
        out: list[bytes] = []
        multiplexed = self.multiplexed
        for tag, raw in frames:
            # Tags compared as character codes: compiled, ``ord("Q")`` is a constant and
            # each test an integer compare (a failed string compare calls memcmp).
            code = ord(tag)
            # A pgrouter comment or command in it?
            if code == ord("Q"):
                mentions = "pgrouter" in self.query_text(raw)[1]
            elif code == ord("P"):
                mentions = parse_facts(raw).mentions
            else:
                mentions = False
                if code == ord("X"):
                    raise Terminate(b"".join(out))
                if tag not in FRONTEND_TAGS:
                    raise ClientProtocolViolation(f"unknown message type {tag!r}")
            if mentions and maybe_comment(raw):
                raw = _consume_comments(tag, raw, multiplexed)
            if code == ord("Q"):
                if mentions and self._command_query(raw, server):
                    continue
                if not multiplexed:
                    tracker.expect(PLAIN_QUERY)
                elif not self._query(raw, server):
                    continue
            elif code in (ord("P"), ord("B"), ord("D"), ord("C"), ord("E")):
                if mentions or self.command_messages.active():
                    reply = self.command_messages.reply(tag, raw, self._run_extended)
                    if reply is not None:
                        self._due(server, Request(tag, SYNTH, reply))
                        continue
                if multiplexed and code != ord("E"):
                    self._extended(tag, raw, server, out)
                    continue
                on_error = self._extended_error(tag)
                tracker.expect(PLAIN[tag] if on_error is None else Request(tag, on_error=on_error))
            elif code == ord("S") or code == ord("F"):
                tracker.expect(PLAIN[tag])
            out.append(raw)
        return b"".join(out)

    def _due(self, server: ServerConnection, request: Request) -> None:
        reply = server.tracker.expect(request)
        if reply and server.client is not None:
            server.client.send(reply)

    def _command_query(self, raw: bytes, server: ServerConnection) -> bool:
        """A simple Query that is a pgrouter command: answered here, never forwarded."""
        text, low = self.query_text(raw)
        if "pgrouter." not in low:
            return False
        command = pgrouter_command(text)
        if command is None:
            return False
        self._due(server, Request("Q", SYNTH, self.command(command, server.tx_status)))
        return True

    def _extended_error(self, tag: str) -> Callable[[], None] | None:
        """An error before Sync rolls back a SET sent with the extended protocol."""
        return self._sets_failed if tag == "E" and self.multiplexed and self._tx_sets else None

    def _query(self, raw: bytes, server: ServerConnection) -> bool:
        """Account for a simple Query; False when the proxy answers it itself."""
        sql, low = self.query_text(raw)
        effect = session_effect(sql, low)
        self._last_keyword = _last_keyword(sql) if effect or self._tx_sets else ""
        if not effect:
            server.tracker.expect(PLAIN_QUERY)
            return True
        if effect.deallocate and len(split_statements(sql)) == 1:
            name = effect.deallocate[0]
            if name in self.statements:  # a protocol-level statement: ours to forget
                del self.statements[name]
                reply = be.CommandComplete("DEALLOCATE").encode()
                self._due(server, Request("Q", SYNTH, reply + _ready(server.tx_status)))
                return False
        self._apply_effect(effect, server)
        on_error = self._sets_failed if effect.sets else None
        server.tracker.expect(PLAIN["Q"] if on_error is None else Request("Q", on_error=on_error))
        return True

    def _apply_effect(self, effect: Effect, server: ServerConnection) -> None:
        if effect.pin and self.pin_reason is None:
            self.pin_reason = effect.pin
            self._on_pin(effect.pin)
        for name, text in effect.sets:
            if name in TEXT_TRACKED:
                self._tx_sets[name] = text
                # Whether it sticks depends on how the transaction ends: until the next
                # sync this server's value is unknown, so any client re-applies or resets.
                server.applied[name] = "\0unknown"
                server.settings_key = None
        if effect.reset_all:
            self.tracked.clear()
            self.tracked_version += 1
            self._tx_sets.clear()
            server.applied.clear()
            server.settings_key = None
        if effect.discards_statements:
            self.statements.clear()
            server.statements.clear()

    def _sets_failed(self) -> None:
        self._tx_failed = True

    def _extended(self, tag: str, raw: bytes, server: ServerConnection, out: list[bytes]) -> None:
        """Parse / Bind / Describe / Close in transaction and statement modes."""
        code = ord(tag)  # compared as a character code (see translate)
        if code == ord("P"):
            facts = parse_facts(raw)
            parse = facts.parse
            name = parse.name
            effect = facts.effect
            if effect:  # DISCARD/DEALLOCATE ALL act when run (at Bind), not when parsed
                parsed = replace(effect, discards_statements=False, reset_all=False)
                self._apply_effect(parsed, server)
            if not name:
                self._unnamed_effect = effect
            if effect or self._tx_sets:
                self._last_keyword = first_keyword(parse.query)
            sent = facts.sent
            if not name:
                server.tracker.expect(PLAIN["P"])
                changed = sent is not parse.query
                out.append(fe.Parse("", sent, parse.param_types).encode() if changed else raw)
                return
            statement = Statement(parse.query, parse.param_types, facts.server_name, sent, effect)
            self.statements[name] = statement
            if statement.server_name in server.statements:
                server.statements.touch(statement.server_name)
                self._due(server, Request("P", SYNTH, _PARSE_COMPLETE))
            else:
                self._prepare(statement, server, out, PASS)
            return
        if code == ord("B"):
            name = bind_name(raw)
            bound = self.statements.get(name) if name else None
            if bound is None:
                effect = self._unnamed_effect if not name else NO_EFFECT
            else:
                effect = bound.effect
                if self._tx_sets:
                    self._last_keyword = first_keyword(bound.query)
                self._ensure(bound, server, out)
                raw = rename_bind(raw[5:], bound.server_name)
            server.tracker.expect(PLAIN["B"])
            out.append(raw)
            if effect.discards_statements or effect.reset_all:
                # Runs after this Bind: what it empties is gone from then on.
                run = Effect(None, (), effect.reset_all, effect.discards_statements)
                self._apply_effect(run, server)
            return
        # Describe and Close: a kind byte, then a name ("" for the unnamed one).
        kind = TAGS[raw[5]] if len(raw) > 5 else ""
        name = raw[6:-1].decode("utf-8", "surrogateescape") if len(raw) > 7 else ""
        if code == ord("D"):
            described = self.statements.get(name) if name and kind == "S" else None
            if described is not None:
                self._ensure(described, server, out)
                raw = describe_statement(described.server_name)
            server.tracker.expect(PLAIN["D"])
            out.append(raw)
            return
        # Close: a named statement is forgotten by the client, kept by the server.
        if kind == "S" and name:
            self.statements.pop(name, None)
            self._due(server, Request("C", SYNTH, _CLOSE_COMPLETE))
            return
        server.tracker.expect(PLAIN["C"])
        out.append(raw)

    def _ensure(self, statement: Statement, server: ServerConnection, out: list[bytes]) -> None:
        if statement.server_name in server.statements:
            server.statements.touch(statement.server_name)
        else:
            self._prepare(statement, server, out, SWALLOW)

    def _prepare(
        self, statement: Statement, server: ServerConnection, out: list[bytes], action: int
    ) -> None:
        tracker = server.tracker
        for old in server.statements.add(statement.server_name):
            out.append(close_statement(old))
            tracker.expect(Request("C", SWALLOW))
        name = statement.server_name
        tracker.expect(
            Request(
                "P",
                action,
                on_error=lambda: server.statements.discard(name),
                on_ok=lambda: self.parsed.add(name),
            )
        )
        out.append(statement.parse_frame())

    def answer_locally(self, frames: list[tuple[str, bytes]], status: str = "I") -> bytes | None:
        """The reply to ``Parse... Sync`` from a client that holds no server, when every
        statement already parsed on some server of the pool (so it is known to be valid);
        None when a server is needed. Spares a server for pgbench's synchronous
        ``PQprepare`` and drivers that prepare ahead of use. ``status`` is the client's
        (T behind a BEGIN the proxy answered)."""
        if len(frames) < 2 or frames[-1][0] != "S":
            return None
        if any(tag != "P" for tag, _ in frames[:-1]):
            return None
        parses = []
        for _, raw in frames[:-1]:
            facts = parse_facts(raw)
            parse = facts.parse
            if not parse.name or facts.server_name not in self.parsed or facts.effect:
                return None
            if facts.mentions:  # a command or comment: the usual path handles it
                return None
            statement = Statement(parse.query, parse.param_types, facts.server_name, facts.sent)
            parses.append((parse.name, statement))
        for name, statement in parses:
            self.statements[name] = statement
        return _PARSE_COMPLETE * len(parses) + _ready(status)

    # ---------------------------------------------------------------- pgrouter's own commands

    def command(self, command: Command, status: str) -> bytes:
        """The whole reply to ``SET / SHOW / RESET pgrouter.<name>`` as a simple Query."""
        reply, failed = self._execute(command, described=False)
        return reply + _ready("E" if failed and status == "T" else status)

    def _run_extended(self, command: Command) -> bytes:
        """The reply to Execute of a command (its RowDescription went with Describe)."""
        return self._execute(command, described=True)[0]

    def _execute(self, command: Command, *, described: bool) -> tuple[bytes, bool]:
        """(reply without ReadyForQuery, failed?)."""
        name = command.name
        if name not in _SETTINGS:
            message = f'unrecognized configuration parameter "pgrouter.{name}"'
            return _error(UNDEFINED_OBJECT, message), True
        if command.verb == "SHOW":
            value = self.setting(name)
            if described:
                rows = be.DataRow((value.encode(),)).encode()
                return rows + be.CommandComplete("SHOW").encode(), False
            return be.text_rows([f"pgrouter.{name}"], [[value]], "SHOW"), False
        if name == "write_lsn":
            message = 'parameter "pgrouter.write_lsn" cannot be changed'
            return _error(CANT_CHANGE_RUNTIME_PARAM, message), True
        value = command.value if command.verb == "SET" else ""
        if name == "route":
            value = value.lower() or "auto"
            if value not in ("primary", "replica", "auto"):
                message = f'invalid value for parameter "pgrouter.route": "{command.value}"'
                hint = "use primary, replica or auto"
                return _error(INVALID_PARAMETER_VALUE, message, hint), True
            self.route = value
        elif name == "min_lsn":
            try:
                self.min_lsn = parse_lsn(value) if value and value.lower() != "none" else None
            except InvalidLsn as exc:
                return _error(INVALID_TEXT_REPRESENTATION, str(exc)), True
        return be.CommandComplete(command.verb).encode(), False

    def setting(self, name: str) -> str:
        if name == "route":
            return self.route
        lsn = self.min_lsn if name == "min_lsn" else self.last_write_lsn
        return "" if lsn is None else format_lsn(lsn)

    def statement_query(self, name: str) -> str | None:
        """The text of a named statement; "" for one holding a pgrouter command (which
        never reaches a server), None for a name this client never prepared."""
        statement = self.statements.get(name)
        if statement is not None:
            return statement.query
        return "" if name in self.command_messages.statements else None

    def command_reply(self, frames: list[tuple[str, bytes]], status: str) -> bytes | None:
        """The reply when the unit ``frames`` is nothing but pgrouter commands (a simple
        Query, or extended-protocol messages ending with Sync), so no server is needed."""
        if len(frames) == 1 and ord(frames[0][0]) == ord("Q"):  # (see translate)
            text, low = self.query_text(frames[0][1])
            if "pgrouter." not in low:
                return None
            command = pgrouter_command(text)
            return None if command is None else self.command(command, status)
        end = frames[-1][0]
        if end not in "SH":
            return None
        if not self.command_messages.active() and not any(
            tag == "P" and parse_facts(raw).command for tag, raw in frames
        ):
            return None  # no command in sight: the usual case
        if any(tag not in "PBDECH" for tag, _ in frames[:-1]):
            return None
        trial = CommandMessages()
        trial.statements = dict(self.command_messages.statements)
        trial.portals = dict(self.command_messages.portals)
        for tag, raw in frames[:-1]:
            if tag != "H" and trial.reply(tag, raw, lambda command: b"") is None:
                return None
        replies = [
            self.command_messages.reply(tag, raw, self._run_extended) or b""
            for tag, raw in frames[:-1]
            if tag != "H"
        ]
        return b"".join(replies) + (_ready(status) if end == "S" else b"")

    # ---------------------------------------------------------------- transaction ends

    def ready(self, status: str) -> None:
        """A ReadyForQuery reached the client: settle SETs made in the transaction."""
        code = ord(status)  # compared as a character code (see translate)
        if code == ord("E"):
            self._tx_failed = True
            return
        if code != ord("I"):
            return
        if self._tx_sets and not self._tx_failed and self._last_keyword not in _ROLLBACKS:
            for name, text in self._tx_sets.items():
                if text is None:
                    self.tracked.pop(name, None)
                else:
                    self.tracked[name] = text
            self.tracked_version += 1
        self._tx_sets.clear()
        self._tx_failed = False


def _last_keyword(sql: str) -> str:
    """The first keyword of the last statement: what ends a transaction sent in one string."""
    statements = split_statements(sql)
    return first_keyword(statements[-1]) if statements else ""


def _ready(status: str) -> bytes:
    return be.ReadyForQuery(status).encode()


def _consume_comments(tag: str, raw: bytes, multiplexed: bool) -> bytes:
    """A Query, or (in session mode) a Parse, without pgrouter comments. In transaction
    mode a Parse keeps them until ``_extended``, which keeps the original text too."""
    if tag == "Q":
        sql = raw[5:-1].decode("utf-8", "surrogateescape")
        return fe.Query(without_comments(sql)).encode()
    if multiplexed:
        return raw
    parse = fe.Parse.decode(raw[5:])
    return fe.Parse(parse.name, without_comments(parse.query), parse.param_types).encode()


def _error(code: str, message: str, hint: str | None = None) -> bytes:
    return be.ErrorResponse.build("ERROR", code, message, hint=hint).encode()


def error_reply(code: str, message: str, status: str, *, hint: str | None = None) -> bytes:
    """An ERROR (the session goes on) and the ReadyForQuery after it."""
    after = "E" if status == "T" else status
    return be.ErrorResponse.build("ERROR", code, message, hint=hint).encode() + _ready(after)


_SETTINGS: Final = frozenset({"route", "min_lsn", "write_lsn"})
