"""Admin console: the virtual database ``pgrouter`` that admin users reach with psql.

Owns: the console's login parameters, splitting a simple Query into statements, parsing
each into a command (``parse_command``, a pure function), the dispatch table from command
words to handlers, the control commands (RELOAD, PAUSE, RESUME, SHUTDOWN: each asks the
proxy to act), and encoding replies (rows, CommandComplete, errors, ReadyForQuery).
Must not touch: sockets and sessions (the client session feeds ``execute`` and writes its
reply), pools and settings (changed only through the proxy's methods), the SHOW reports
(admin_commands.py, and admin_routing.py for the routing reports).

A statement is keywords, case-insensitive, then at most one argument (a database name,
as typed, or double-quoted), except ``SHOW ROUTE FOR <sql>``, whose argument is the rest
of the query string, untouched (semicolons, quotes and comments included). Statements run
in order; the first error ends the query string, as in PostgreSQL. A bad command is an
ERROR, never the end of the session.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol import backend as be
from protocol import sqlstate
from router import admin_commands as cmd
from router import admin_routing as routing
from router.admin_commands import AdminError, Context, Done, Table
from router.cli import package_version
from router.config import ADMIN_DATABASE, ConfigError
from router.errors import ProxyError, error_response

if TYPE_CHECKING:
    from router.client import ClientSession
    from router.proxy import Proxy

log = logging.getLogger("pgrouter.admin")

# What psql reads to pick its features; libpq parses the leading "15.0".
SERVER_VERSION = "15.0"

Reply = Table | Done
Runner = Callable[[Context, str | None], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Spec:
    run: Runner
    usage: str
    summary: str
    takes_database: bool = False
    takes_sql: bool = False  # the rest of the query string is the argument


def _show(handler: Callable[[Context], Table]) -> Runner:
    async def run(ctx: Context, arg: str | None) -> Reply:
        return handler(ctx)

    return run


def _show_sql(handler: Callable[[Context, str | None], Table]) -> Runner:
    async def run(ctx: Context, arg: str | None) -> Reply:
        return handler(ctx, arg)

    return run


def _show_help(ctx: Context) -> Table:
    return Table(("command", "description"), [(s.usage, s.summary) for s in DISPATCH.values()])


# --------------------------------------------------------------------------- control


def _database(ctx: Context, name: str | None, command: str) -> str | None:
    if name is None or name in ctx.proxy.settings.databases:
        return name
    if name == ADMIN_DATABASE:
        raise AdminError(sqlstate.FEATURE_NOT_SUPPORTED, f"cannot {command} the admin console")
    raise AdminError(
        sqlstate.INVALID_CATALOG_NAME,
        f'database "{name}" does not exist',
        hint="SHOW DATABASES lists the databases pgrouter serves",
    )


async def reload(ctx: Context, arg: str | None) -> Done:
    """Re-read the config file; on any error the running config stays as it was."""
    try:
        summary = ctx.proxy.reload()
    except ConfigError as exc:
        raise AdminError(
            sqlstate.CONFIG_FILE_ERROR,
            f"RELOAD failed, configuration unchanged: {exc}",
            hint="fix the configuration file and run RELOAD again",
        ) from exc
    log.info("%r: RELOAD: %s", ctx.client, summary)
    return Done("RELOAD", summary or None)


async def pause(ctx: Context, arg: str | None) -> Done:
    """Hold new requests for the database (or all), and return once none of its server
    connections is in use."""
    database = _database(ctx, arg, "PAUSE")
    log.info("%r: PAUSE %s", ctx.client, database or "(all databases)")
    await ctx.proxy.pause(database)
    return Done("PAUSE")


async def resume(ctx: Context, arg: str | None) -> Done:
    database = _database(ctx, arg, "RESUME")
    ctx.proxy.resume(database)
    log.info("%r: RESUME %s", ctx.client, database or "(all databases)")
    return Done("RESUME")


async def shutdown(ctx: Context, arg: str | None) -> Done:
    """Start the proxy's graceful shutdown; it runs as its own task, so this reply is
    written before the console session is closed with the others."""
    log.info("%r: SHUTDOWN", ctx.client)
    ctx.proxy.shutdown()
    return Done("SHUTDOWN")


# --------------------------------------------------------------------------- dispatch


DISPATCH: dict[tuple[str, ...], Spec] = {
    ("SHOW", "HELP"): Spec(_show(_show_help), "SHOW HELP", "this list"),
    ("SHOW", "POOLS"): Spec(_show(cmd.show_pools), "SHOW POOLS", "clients and servers per pool"),
    ("SHOW", "CLIENTS"): Spec(_show(cmd.show_clients), "SHOW CLIENTS", "client connections"),
    ("SHOW", "SERVERS"): Spec(_show(cmd.show_servers), "SHOW SERVERS", "server connections"),
    ("SHOW", "STATS"): Spec(_show(cmd.show_stats), "SHOW STATS", "traffic per database"),
    ("SHOW", "DATABASES"): Spec(
        _show(cmd.show_databases), "SHOW DATABASES", "configured databases and their servers"
    ),
    ("SHOW", "CONFIG"): Spec(_show(cmd.show_config), "SHOW CONFIG", "effective settings"),
    ("SHOW", "VERSION"): Spec(_show(cmd.show_version), "SHOW VERSION", "pgrouter's version"),
    ("SHOW", "USERS"): Spec(_show(cmd.show_users), "SHOW USERS", "configured users"),
    ("SHOW", "REPLICAS"): Spec(
        _show(routing.show_replicas), "SHOW REPLICAS", "each server's role, LSNs, lag, eligibility"
    ),
    ("SHOW", "ROUTES"): Spec(
        _show(routing.show_routes), "SHOW ROUTES", "routing counts per rule, reason and backend"
    ),
    ("SHOW", "ROUTE", "FOR"): Spec(
        _show_sql(routing.show_route_for),
        "SHOW ROUTE FOR <sql>",
        "how a statement is classified and where it would go now",
        takes_sql=True,
    ),
    ("RELOAD",): Spec(reload, "RELOAD", "re-read the configuration file"),
    ("PAUSE",): Spec(
        pause, "PAUSE [db]", "wait for servers to be released, then hold new queries", True
    ),
    ("RESUME",): Spec(resume, "RESUME [db]", "undo PAUSE", True),
    ("SHUTDOWN",): Spec(shutdown, "SHUTDOWN", "stop pgrouter"),
}


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class Command:
    name: tuple[str, ...]  # a DISPATCH key, e.g. ("SHOW", "POOLS")
    arg: str | None = None


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    quoted: bool


def _rest_pattern(table: Mapping[tuple[str, ...], Spec]) -> re.Pattern[str] | None:
    """Matches the keywords of a command whose argument is the rest of the query string."""
    names = [r"\s+".join(name) for name, spec in table.items() if spec.takes_sql]
    if not names:
        return None
    return re.compile(r"(?:" + "|".join(names) + r")(?=\s|;|$)", re.IGNORECASE)


_TAKES_SQL = _rest_pattern(DISPATCH)
_QUOTED = {'"': re.compile(r'"((?:[^"]|"")*)"'), "'": re.compile(r"'((?:[^']|'')*)'")}
_WORD = re.compile(r"[^\s\"']+")
_SPACE = re.compile(r"\s+")


def split_statements(sql: str, rest: re.Pattern[str] | None = _TAKES_SQL) -> list[str]:
    """The non-empty statements of a query string: split at ``;`` outside quotes, with
    ``--`` and ``/* */`` comments removed. A statement that starts with a ``rest`` command
    (``SHOW ROUTE FOR``) takes the rest of the string as it is, less trailing ``;``."""
    statements: list[str] = []
    current: list[str] = []
    blank = True  # nothing but white space and comments in ``current`` yet
    i = 0
    while i < len(sql):
        char = sql[i]
        if blank and rest is not None and rest.match(sql, i):
            current = [sql[i:].rstrip().rstrip(";")]
            break
        if char in _QUOTED:
            match = _QUOTED[char].match(sql, i)
            end = match.end() if match else len(sql)
            current.append(sql[i:end])
            blank = False
            i = end
        elif sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = len(sql) if newline < 0 else newline
            current.append(" ")
        elif sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            i = len(sql) if close < 0 else close + 2
            current.append(" ")
        elif char == ";":
            statements.append("".join(current))
            current = []
            blank = True
            i += 1
        else:
            current.append(char)
            blank = blank and char.isspace()
            i += 1
    statements.append("".join(current))
    return [s.strip() for s in statements if s.strip()]


def tokenize(statement: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    while i < len(statement):
        if space := _SPACE.match(statement, i):
            i = space.end()
            continue
        quote = statement[i]
        if quote in _QUOTED:
            match = _QUOTED[quote].match(statement, i)
            if match is None:
                raise AdminError(sqlstate.SYNTAX_ERROR, f"unterminated quoted name: {statement}")
            tokens.append(Token(match.group(1).replace(quote * 2, quote), True))
        else:
            match = _WORD.match(statement, i)
            assert match is not None  # neither space nor quote: at least one character
            tokens.append(Token(match.group(0), False))
        i = match.end()
    return tokens


def usage(table: Mapping[tuple[str, ...], Spec]) -> str:
    return "supported commands: " + ", ".join(spec.usage for spec in table.values())


def parse_command(statement: str, table: Mapping[tuple[str, ...], Spec]) -> Command:
    """The command ``statement`` names in ``table`` (longest keyword match) and its
    argument; AdminError 42601 for anything else."""
    rest = _rest_pattern(table)
    match = None if rest is None else rest.match(statement.lstrip())
    if match is not None:
        words = tuple(match.group(0).upper().split())
        return Command(words, statement.lstrip()[match.end() :].strip() or None)
    tokens = tokenize(statement)
    keywords: list[str] = []
    for token in tokens:
        if token.quoted:
            break
        keywords.append(token.text.upper())
    for length in range(len(keywords), 0, -1):
        name = tuple(keywords[:length])
        spec = table.get(name)
        if spec is None:
            continue
        args = [token.text for token in tokens[length:]]
        if len(args) > (1 if spec.takes_database else 0):
            raise AdminError(
                sqlstate.SYNTAX_ERROR,
                f"too many arguments for {' '.join(name)}: {' '.join(args)}",
                hint=f"usage: {spec.usage}",
            )
        return Command(name, args[0] if args else None)
    if keywords[:1] == ["SHOW"]:
        what = " ".join(keywords[:2])
    else:
        what = keywords[0] if keywords else " ".join(t.text for t in tokens[:1])
    raise AdminError(sqlstate.SYNTAX_ERROR, f'unknown admin command "{what}"', hint=usage(table))


# --------------------------------------------------------------------------- the console


def encode(reply: Reply) -> bytes:
    if isinstance(reply, Table):
        return be.text_rows(reply.columns, reply.rows, "SHOW")
    done = be.CommandComplete(reply.tag).encode()
    if reply.notice:
        notice = be.NoticeResponse.build("NOTICE", sqlstate.SUCCESSFUL_COMPLETION, reply.notice)
        return notice.encode() + done
    return done


def error_reply(exc: Exception) -> be.ErrorResponse:
    """An ERROR (never FATAL: the console session goes on) for a failed command."""
    if not isinstance(exc, ProxyError):
        log.exception("admin command failed")
        return be.ErrorResponse.build(
            "ERROR",
            sqlstate.INTERNAL_ERROR,
            f"pgrouter internal error in the admin console: {type(exc).__name__}: {exc}",
        )
    fields = dict(error_response(exc).fields)
    fields["S"] = fields["V"] = "ERROR"
    return be.ErrorResponse(tuple(fields.items()))


class AdminConsole:
    """One admin session's console; ``execute`` answers one simple Query at a time."""

    def __init__(self, proxy: Proxy, client: ClientSession) -> None:
        self.proxy = proxy
        self.client = client

    def parameters(self) -> list[tuple[str, str]]:
        """The ParameterStatus values sent at login."""
        return [
            ("server_version", f"{SERVER_VERSION} (pgrouter {package_version()})"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("TimeZone", "UTC"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
            ("application_name", self.client.application_name),
            ("is_superuser", "off"),
        ]

    async def execute(self, sql: str) -> bytes:
        """The whole reply to one Query message, ending with ReadyForQuery."""
        statements = split_statements(sql)
        parts = [] if statements else [be.EmptyQueryResponse().encode()]
        for statement in statements:
            try:
                command = parse_command(statement, DISPATCH)
                context = Context.now(self.proxy, self.client)
                parts.append(encode(await DISPATCH[command.name].run(context, command.arg)))
            except Exception as exc:  # one failed command must not end the session
                parts.append(error_reply(exc).encode())
                break
        parts.append(be.ReadyForQuery("I").encode())
        return b"".join(parts)
