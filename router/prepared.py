"""Protocol-level prepared statements across pooled server connections.

Owns: the client's named statements (name -> query text and parameter types), the
server-side name of each (derived from a hash of the text and types, so every client that
prepares the same statement shares one server-side statement), the set of statements
each server connection holds (bounded, least recently used evicted), and rewriting the
statement name inside Parse / Bind / Describe / Close bodies.
Must not touch: sockets or the order of replies (tracker.py and the client do that).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from protocol import frontend as fe
from protocol.errors import ProtocolError
from router.hints import maybe_command, without_comments
from router.sessionstate import NO_EFFECT, Effect, session_effect


@dataclass(frozen=True, slots=True)
class Statement:
    query: str  # as the client wrote it (pgrouter comments included: they route it)
    param_types: tuple[int, ...]
    server_name: str
    sent: str = ""  # what the server parses: the query without pgrouter comments
    effect: Effect = NO_EFFECT  # what running it does to session state

    def parse_frame(self) -> bytes:
        text = self.sent or self.query
        return fe.Parse(self.server_name, text, self.param_types).encode()


@lru_cache(maxsize=4096)
def server_name_for(query: str, param_types: tuple[int, ...]) -> str:
    digest = hashlib.blake2b(digest_size=10)
    digest.update(",".join(map(str, param_types)).encode())
    digest.update(b"\0")
    digest.update(query.encode("utf-8", "surrogateescape"))
    return "pgr_" + digest.hexdigest()


class ServerStatements:
    """The statements one server connection has prepared, most recently used last."""

    __slots__ = ("_names", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._names: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def __len__(self) -> int:
        return len(self._names)

    def touch(self, name: str) -> None:
        self._names.move_to_end(name)

    def add(self, name: str) -> list[str]:
        """Record ``name``; returns the names evicted to stay within the limit."""
        self._names[name] = None
        self._names.move_to_end(name)
        evicted = []
        while len(self._names) > self.limit:
            old, _ = self._names.popitem(last=False)
            evicted.append(old)
        return evicted

    def discard(self, name: str) -> None:
        self._names.pop(name, None)

    def clear(self) -> None:
        self._names.clear()


def _cstr_end(body: bytes, start: int) -> int:
    end = body.find(b"\0", start)
    if end < 0:
        raise ProtocolError("missing string terminator")
    return end


_PARSES_MAX: Final = 4096


class ParseFacts:
    """What the proxy needs of one Parse message, worked out once per distinct message:
    drivers send the same Parse again and again (unnamed statements, every transaction)."""

    __slots__ = ("command", "effect", "low", "mentions", "parse", "sent", "server_name")

    def __init__(self, raw: bytes) -> None:
        self.parse = fe.Parse.decode(raw[5:])
        query = self.parse.query
        self.low = query.lower()
        # The whole message, its name too: a pgrouter command may hide anywhere.
        self.mentions = raw.lower().find(b"pgrouter") >= 0  # a comment or a command?
        self.command = maybe_command(raw)
        self.effect = session_effect(query, self.low)
        self.sent = without_comments(query, self.low)  # what the server parses
        self.server_name = server_name_for(self.sent, self.parse.param_types)


_PARSE_FACTS: Final[dict[bytes, ParseFacts]] = {}  # by whole message: drivers send it again


def parse_facts(raw: bytes) -> ParseFacts:
    """``ParseFacts`` of the Parse message ``raw`` (tag and length included), remembered."""
    facts = _PARSE_FACTS.get(raw)
    if facts is None:
        facts = ParseFacts(raw)
        if len(_PARSE_FACTS) >= _PARSES_MAX:
            _PARSE_FACTS.clear()
        _PARSE_FACTS[raw] = facts
    return facts


def split_parse(body: bytes) -> tuple[str, bytes]:
    """(statement name, the rest of a Parse body after the name)."""
    end = _cstr_end(body, 0)
    return body[:end].decode("utf-8", "surrogateescape"), body[end + 1 :]


def bind_statement(body: bytes) -> tuple[bytes, str, bytes]:
    """(portal cstring with NUL, statement name, the rest) of a Bind body."""
    portal_end = _cstr_end(body, 0) + 1
    name_end = _cstr_end(body, portal_end)
    name = body[portal_end:name_end].decode("utf-8", "surrogateescape")
    return body[:portal_end], name, body[name_end + 1 :]


def bind_name(raw: bytes) -> str:
    """The statement name of the Bind message ``raw`` (tag and length included): what
    routing and forwarding need of every Bind, without copying its body. An unnamed
    portal bound to the unnamed statement, as most drivers send, is seen at a glance."""
    if len(raw) > 6 and raw[5] == 0 and raw[6] == 0:
        return ""
    portal_end = _cstr_end(raw, 5) + 1
    name_end = _cstr_end(raw, portal_end)
    return raw[portal_end:name_end].decode("utf-8", "surrogateescape")


def with_body(tag: bytes, body: bytes) -> bytes:
    return tag + (len(body) + 4).to_bytes(4, "big") + body


def rename_bind(body: bytes, server_name: str) -> bytes:
    portal, _, rest = bind_statement(body)
    return with_body(b"B", portal + server_name.encode() + b"\0" + rest)


def describe_statement(server_name: str) -> bytes:
    return with_body(b"D", b"S" + server_name.encode() + b"\0")


def close_statement(server_name: str) -> bytes:
    return with_body(b"C", b"S" + server_name.encode() + b"\0")
