"""Admin console without sockets: statement splitting, command parsing, the reply
sequences of ``AdminConsole.execute``, and SHOW handlers over fake proxy state."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from policies.match import compile_policy
from policies.model import Policy
from protocol import backend as be
from protocol.framing import FrameReader
from router import admin_commands as cmd
from router import admin_routing
from router.admin import (
    DISPATCH,
    AdminConsole,
    Command,
    parse_command,
    split_statements,
    tokenize,
)
from router.admin_commands import AdminError, Context, seconds_and_us
from router.backends import Backend, backends_of
from router.classifier import Classifier, fingerprint
from router.client import State
from router.config import ConfigError, Settings
from router.director import Director
from router.monitor import BackendState, ClusterState, Monitor
from router.pool import PoolKey, PoolStats
from router.server import Mode

# --------------------------------------------------------------------------- splitting


@pytest.mark.parametrize(
    ("sql", "statements"),
    [
        ("SHOW POOLS", ["SHOW POOLS"]),
        ("  SHOW POOLS ;  ", ["SHOW POOLS"]),
        ("show pools;show clients;;", ["show pools", "show clients"]),
        ("", []),
        (" ; ;\n", []),
        ('PAUSE "a;b"; RESUME', ['PAUSE "a;b"', "RESUME"]),
        ("PAUSE 'x;y'", ["PAUSE 'x;y'"]),
        ("-- just a comment", []),
        ("SHOW /* ; */ POOLS -- trailing; comment\n; RELOAD", ["SHOW   POOLS", "RELOAD"]),
        ('PAUSE "unterminated;', ['PAUSE "unterminated;']),
        # SHOW ROUTE FOR takes the rest of the string, untouched, less trailing semicolons.
        ("SHOW ROUTE FOR SELECT 1;", ["SHOW ROUTE FOR SELECT 1"]),
        (
            "show version; /* c */ show route for SELECT ';' /* pgrouter:replica */; SELECT 2;;",
            ["show version", "show route for SELECT ';' /* pgrouter:replica */; SELECT 2"],
        ),
        ("SHOW ROUTE FOR", ["SHOW ROUTE FOR"]),
        ("SHOW ROUTES; SHOW VERSION", ["SHOW ROUTES", "SHOW VERSION"]),
        ("SHOW 'x' ROUTE FOR SELECT 1; SELECT 2", ["SHOW 'x' ROUTE FOR SELECT 1", "SELECT 2"]),
    ],
)
def test_split_statements(sql: str, statements: list[str]) -> None:
    assert split_statements(sql) == statements


def test_tokenize_unquotes_and_undoubles() -> None:
    tokens = tokenize('PAUSE "My ""big"" db"')
    assert [(t.text, t.quoted) for t in tokens] == [("PAUSE", False), ('My "big" db', True)]


def test_tokenize_rejects_an_unterminated_quote() -> None:
    with pytest.raises(AdminError) as info:
        tokenize('PAUSE "oops')
    assert info.value.sqlstate == "42601"


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("statement", "command"),
    [
        ("SHOW POOLS", Command(("SHOW", "POOLS"))),
        ("show pools", Command(("SHOW", "POOLS"))),
        ("Show\tClients", Command(("SHOW", "CLIENTS"))),
        ("SHOW HELP", Command(("SHOW", "HELP"))),
        ("RELOAD", Command(("RELOAD",))),
        ("pause", Command(("PAUSE",))),
        ("PAUSE app", Command(("PAUSE",), "app")),
        ("pause App", Command(("PAUSE",), "App")),  # names are kept as typed
        ('RESUME "my db"', Command(("RESUME",), "my db")),
        ("shutdown", Command(("SHUTDOWN",))),
        ("SHOW REPLICAS", Command(("SHOW", "REPLICAS"))),
        ("show routes", Command(("SHOW", "ROUTES"))),
        ("SHOW ROUTE FOR select 1", Command(("SHOW", "ROUTE", "FOR"), "select 1")),
        (
            "show  route\nfor UPDATE t SET s = 'a \"b\"'",
            Command(("SHOW", "ROUTE", "FOR"), "UPDATE t SET s = 'a \"b\"'"),
        ),
        ("SHOW ROUTE FOR ", Command(("SHOW", "ROUTE", "FOR"))),
    ],
)
def test_parse_command(statement: str, command: Command) -> None:
    assert parse_command(statement, DISPATCH) == command


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("SELECT 1", 'unknown admin command "SELECT"'),
        ("SHOW", 'unknown admin command "SHOW"'),
        ("show lists", 'unknown admin command "SHOW LISTS"'),
        ('"SHOW" POOLS', 'unknown admin command "SHOW"'),
        ("", 'unknown admin command ""'),
        ("SHOW POOLS app", "too many arguments for SHOW POOLS: app"),
        ("PAUSE a b", "too many arguments for PAUSE: a b"),
        ("RELOAD now", "too many arguments for RELOAD: now"),
        ("SHOW ROUTE", 'unknown admin command "SHOW ROUTE"'),
        ("SHOW ROUTE FORX", 'unknown admin command "SHOW ROUTE"'),
        ("SHOW REPLICAS app", "too many arguments for SHOW REPLICAS: app"),
    ],
)
def test_parse_errors_are_syntax_errors(statement: str, message: str) -> None:
    with pytest.raises(AdminError) as info:
        parse_command(statement, DISPATCH)
    assert info.value.sqlstate == "42601"
    assert info.value.message == message


def test_unknown_command_hint_lists_every_command() -> None:
    with pytest.raises(AdminError) as info:
        parse_command("FLY", DISPATCH)
    assert info.value.hint is not None
    for usage in ("SHOW POOLS", "SHOW CLIENTS", "SHOW HELP", "RELOAD", "PAUSE [db]", "SHUTDOWN"):
        assert usage in info.value.hint


def test_every_command_has_a_one_line_usage() -> None:
    for name, spec in DISPATCH.items():
        assert spec.usage.startswith(" ".join(name))
        assert spec.summary and "\n" not in spec.summary


# --------------------------------------------------------------------------- fakes


class Fake:
    """An attribute bag that, unlike SimpleNamespace, can live in a set."""

    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


class Waiter:
    def __init__(self, done: bool) -> None:
        self._done = done

    def done(self) -> bool:
        return self._done


SETTINGS: dict[str, Any] = {
    "auth": {
        "admin_users": ["admin"],
        "users": {"app": {"password": "s3cret"}, "admin": {"password": "admin-pw"}},
    },
    "pool": {"size": 10},
    "databases": {
        "app": {
            "primary": {"host": "10.0.0.1", "port": 5432},
            "replicas": [{"host": "10.0.0.2"}, {"host": "10.0.0.3", "dbname": "app_r"}],
            "password": "forced-pw",
        }
    },
}

PRIMARY = Backend("primary", "primary", "10.0.0.1", 5432, "app")


def make_proxy(**attrs: Any) -> Fake:
    now = time.monotonic()
    pool = Fake(
        key=PoolKey("app", "app", "primary"),
        backend=PRIMARY,
        settings=Settings(**SETTINGS).pool,
        idle=[],
        active=set(),
        opening=1,
        waiters=deque([Waiter(True), Waiter(False)]),
        stats=PoolStats(xact_count=4, query_count=10, xact_time=0.4, query_time=0.5),
        paused=False,
        total=0,
    )
    client = Fake(
        user="app",
        database="app",
        peer="127.0.0.1:50000",
        application_name="worker",
        tls=False,
        transport=None,
        key=(7, 1234),
        connected_at=time.time() - 5,
        state=State.ACTIVE,
        server=None,
        pool=pool,
        tx_status="T",
        pin_reason="LISTEN",
        waiting_since=None,
        last_request_at=now - 1,
        console=None,
        forwarder=Fake(last_write_lsn=0x3000060, min_lsn=0x2FFF000, route="replica"),
    )
    waiting = Fake(
        **client.__dict__
        | {"key": (8, 1), "server": None, "waiting_since": now - 2.5, "forwarder": None}
    )
    server = Fake(
        id=3, backend=PRIMARY, user="app", mode=Mode.READY, pid=4242, tls=False, transport=None,
        created_at=now - 60, last_used=now - 1, client=client, params={"application_name": "w"},
        tx_status="T",
    )  # fmt: skip
    spare = Fake(**{**server.__dict__, "id": 4, "client": None, "mode": Mode.INTERNAL})
    idle = Fake(**{**server.__dict__, "id": 5, "client": None})
    client.server = server
    pool.active = {server, spare}
    pool.idle = [idle]
    proxy = Fake(
        settings=Settings(**SETTINGS),
        clients={client, waiting},
        pools={pool.key: pool},
        started_at=time.time() - 10,
        config_path=None,
        paused_databases=set(),
        worker=None,
    )
    proxy.__dict__.update(attrs)
    return proxy


def context(proxy: Fake) -> Context:
    return Context.now(proxy, next(iter(proxy.clients)))  # type: ignore[arg-type]


def as_dicts(table: cmd.Table) -> list[dict[str, object]]:
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]


# --------------------------------------------------------------------------- execute


def run(sql: str, proxy: Fake | None = None) -> list[tuple[str, bytes]]:
    proxy = proxy or make_proxy()
    console = AdminConsole(proxy, next(iter(proxy.clients)))  # type: ignore[arg-type]
    return FrameReader().feed(asyncio.run(console.execute(sql)))


def tags(frames: list[tuple[str, bytes]]) -> list[str]:
    return [tag for tag, _ in frames]


def error_of(frames: list[tuple[str, bytes]]) -> be.ErrorResponse:
    (body,) = [body for tag, body in frames if tag == "E"]
    return be.ErrorResponse.decode(body)


def test_empty_query_gets_empty_query_response() -> None:
    assert tags(run("")) == ["I", "Z"]
    assert tags(run(" ;; ")) == ["I", "Z"]


def test_pause_of_the_admin_database_is_refused() -> None:
    error = error_of(run("PAUSE pgrouter"))
    assert (error.severity, error.sqlstate) == ("ERROR", "0A000")


def test_shutdown_asks_the_proxy() -> None:
    calls: list[str] = []
    frames = run("SHUTDOWN", make_proxy(shutdown=lambda: calls.append("shutdown")))
    assert tags(frames) == ["C", "Z"]
    assert calls == ["shutdown"]


def test_show_reply_is_rows_then_show_tag() -> None:
    frames = run("show version;")
    assert tags(frames) == ["T", "D", "C", "Z"]
    assert be.CommandComplete.decode(frames[2][1]).tag == "SHOW"
    assert be.ReadyForQuery.decode(frames[3][1]).status == "I"


def test_statements_run_in_order() -> None:
    assert tags(run("SHOW VERSION; SHOW USERS")) == ["T", "D", "C", "T", "D", "D", "C", "Z"]


def test_first_error_ends_the_query_string_as_an_error_not_fatal() -> None:
    frames = run("SHOW VERSION; BOGUS; SHOW VERSION")
    assert tags(frames) == ["T", "D", "C", "E", "Z"]
    error = error_of(frames)
    assert (error.severity, error.sqlstate) == ("ERROR", "42601")


def test_show_help_lists_the_dispatch_table() -> None:
    frames = run("SHOW HELP")
    assert tags(frames).count("D") == len(DISPATCH)


def test_pause_unknown_database_is_3d000() -> None:
    error = error_of(run("PAUSE nosuch"))
    assert (error.severity, error.sqlstate) == ("ERROR", "3D000")


def test_pause_and_resume_call_the_proxy() -> None:
    calls: list[tuple[str, str | None]] = []

    async def pause(database: str | None) -> None:
        calls.append(("pause", database))

    proxy = make_proxy(pause=pause, resume=lambda database: calls.append(("resume", database)))
    frames = run("PAUSE app; RESUME app; PAUSE; RESUME", proxy)
    assert tags(frames) == ["C", "C", "C", "C", "Z"]
    assert [be.CommandComplete.decode(b).tag for t, b in frames if t == "C"] == [
        "PAUSE", "RESUME", "PAUSE", "RESUME",
    ]  # fmt: skip
    assert calls == [("pause", "app"), ("resume", "app"), ("pause", None), ("resume", None)]


def test_reload_reports_what_changed_as_a_notice() -> None:
    frames = run("RELOAD", make_proxy(reload=lambda: "pool.size: 10 -> 20"))
    assert tags(frames) == ["N", "C", "Z"]
    assert be.NoticeResponse.decode(frames[0][1]).message == "pool.size: 10 -> 20"


def test_reload_of_an_invalid_file_is_an_error() -> None:
    def reload() -> str:
        raise ConfigError("invalid configuration:\n  pool.size: must be >= 1")

    error = error_of(run("RELOAD", make_proxy(reload=reload)))
    assert (error.severity, error.sqlstate) == ("ERROR", "F0000")
    assert "pool.size: must be >= 1" in error.message


def test_an_internal_failure_is_an_error_not_the_end_of_the_session() -> None:
    def reload() -> str:
        raise RuntimeError("boom")

    frames = run("RELOAD", make_proxy(reload=reload))
    assert tags(frames) == ["E", "Z"]
    assert error_of(frames).sqlstate == "XX000"


def test_login_parameters() -> None:
    proxy = make_proxy()
    console = AdminConsole(proxy, next(iter(proxy.clients)))  # type: ignore[arg-type]
    params = dict(console.parameters())
    assert params["server_version"].startswith("15.0 (pgrouter ")
    assert params["application_name"] == "worker"
    assert params["client_encoding"] == "UTF8"
    assert params["is_superuser"] == "off"


# --------------------------------------------------------------------------- SHOW handlers


def test_seconds_and_us() -> None:
    assert seconds_and_us(2.5) == (2, 500000)
    assert seconds_and_us(-1.0) == (0, 0)


def test_show_pools_counts() -> None:
    (row,) = as_dicts(cmd.show_pools(context(make_proxy())))
    assert row | {"maxwait_us": 0} == {
        "database": "app", "user": "app", "backend": "primary", "cl_active": 1,
        "cl_waiting": 1, "sv_active": 1, "sv_idle": 1, "sv_used": 0, "sv_tested": 1,
        "sv_login": 1, "maxwait": 2, "maxwait_us": 0, "pool_mode": "session",
    }  # fmt: skip


def test_show_clients_rows() -> None:
    rows = as_dicts(cmd.show_clients(context(make_proxy())))
    assert [(r["ptr"], r["state"], r["link"]) for r in rows] == [
        (7, "active", 3),
        (8, "waiting", ""),
    ]
    first = rows[0]
    assert (first["addr"], first["port"], first["application_name"]) == (
        "127.0.0.1",
        50000,
        "worker",
    )
    assert (first["pinned"], first["tx_status"], first["tls"]) == ("LISTEN", "T", "")
    assert rows[1]["wait"] == 2
    routing = [(r["last_write_lsn"], r["min_lsn"], r["route"], r["backend"]) for r in rows]
    assert routing == [("0/3000060", "0/2FFF000", "replica", "primary"), ("", "", "", "")]


def test_show_servers_rows() -> None:
    rows = as_dicts(cmd.show_servers(context(make_proxy())))
    assert [(r["ptr"], r["state"], r["link"]) for r in rows] == [
        (3, "active", 7), (4, "tested", ""), (5, "idle", ""),
    ]  # fmt: skip
    assert rows[0]["remote_pid"] == 4242
    assert rows[0]["age_s"] == 60


def test_show_stats_totals_in_microseconds() -> None:
    (row,) = as_dicts(cmd.show_stats(context(make_proxy())))
    assert row["total_query_count"] == 10
    assert row["total_xact_time"] == 400000
    assert row["avg_xact_time"] == 100000
    assert row["avg_query_time"] == 50000


def test_show_databases_lists_primary_then_replicas() -> None:
    rows = as_dicts(cmd.show_databases(context(make_proxy(paused_databases={"app"}))))
    assert [(r["backend"], r["role"], r["host"], r["database"]) for r in rows] == [
        ("primary", "primary", "10.0.0.1", "app"),
        ("replica1", "replica", "10.0.0.2", "app"),
        ("replica2", "replica", "10.0.0.3", "app_r"),
    ]
    assert {r["paused"] for r in rows} == {1}
    assert rows[0]["pool_size"] == 10


def test_show_config_masks_passwords_and_knows_defaults() -> None:
    proxy = make_proxy(config_path=Path("/etc/pgrouter.yaml"))
    config = {r["key"]: r for r in as_dicts(cmd.show_config(context(proxy)))}
    assert config["config_file"]["value"] == "/etc/pgrouter.yaml"
    assert config["auth.users.app.password"]["value"] == "********"
    assert config["databases.app.password"]["value"] == "********"
    assert config["pool.size"]["value"] == "10"
    assert config["pool.size"]["default"] == "20"
    assert config["pool.query_wait_timeout"]["value"] == "120"
    assert config["auth.admin_users"]["value"] == "admin"
    assert config["databases.app.replicas.1.dbname"]["value"] == "app_r"
    assert config["listen.port"]["changeable"] == "no"
    assert config["pool.size"]["changeable"] == "yes"
    assert not any("s3cret" in str(r["value"]) for r in config.values())


def test_show_users() -> None:
    rows = as_dicts(cmd.show_users(context(make_proxy())))
    assert rows == [
        {"name": "app", "pool_mode": None, "admin": "no"},
        {"name": "admin", "pool_mode": None, "admin": "yes"},
    ]


# --------------------------------------------------------------------------- routing reports

P1, R1 = 0x3000060, 0x2FFF000


def routing_proxy(mode: str = "transaction") -> Fake:
    """make_proxy with a director whose monitor saw: the primary at P1, replica1 up at R1
    (0.5s behind), replica2 down."""
    settings = Settings(**{**SETTINGS, "pool": {"size": 10, "mode": mode}})
    backends = backends_of("app", settings.databases["app"])
    monitor = Monitor(
        "app", backends, None, interval=10.0, timeout=1.0, max_backoff=30.0,
        tls=settings.tls, ssl_context=None,
    )  # fmt: skip
    now = time.monotonic()
    primary, replica1, replica2 = backends
    monitor.state = ClusterState(
        "app",
        (
            BackendState(primary, up=True, in_recovery=False, insert_lsn=P1, checked_at=now),
            BackendState(
                replica1, up=True, in_recovery=True, replay_lsn=R1, receive_lsn=P1,
                lag_bytes=P1 - R1, lag_seconds=0.5, checked_at=now - 0.25,
            ),
            BackendState(replica2, up=False, error="connection refused", failures=2),
        ),
        "primary",
        P1,
        now,
    )  # fmt: skip
    director = Director("app", backends, monitor)
    director.stats.by_rule.update({"(default)": 5})
    director.stats.by_reason.update({"default": 3, "write": 2})
    director.stats.by_backend.update({"primary": 2, "replica1": 3})
    director.stats.fallbacks, director.stats.waits, director.stats.wait_time = 1, 2, 0.05
    return make_proxy(
        settings=settings,
        directors={"app": director},
        policy=compile_policy(Policy()),
        classifier=Classifier(),
    )


def routing_show(handler: Callable[[Context], cmd.Table], proxy: Fake) -> cmd.Table:
    return handler(context(proxy))


def route_for(sql: str, proxy: Fake) -> dict[str, str]:
    frames = run(sql, proxy)
    assert tags(frames)[-1] == "Z"
    values = [be.DataRow.decode(body).values for tag, body in frames if tag == "D"]
    return {k.decode(): v.decode() for k, v in values if k is not None and v is not None}


def test_show_replicas_rows() -> None:
    rows = as_dicts(routing_show(admin_routing.show_replicas, routing_proxy()))
    assert [r["backend"] for r in rows] == ["primary", "replica1", "replica2"]
    primary, replica1, replica2 = rows
    assert primary | {"last_probe_ms_ago": 0} == {
        "database": "app", "backend": "primary", "host": "10.0.0.1", "port": 5432,
        "role": "primary", "state": "up", "in_recovery": "no", "writer": "yes",
        "replay_lsn": "", "receive_lsn": "", "insert_lsn": "0/3000060", "lag_bytes": None,
        "lag_seconds": None, "last_probe_ms_ago": 0, "eligible": "not-standby",
        "sv_active": 1, "sv_idle": 1, "load": 0, "error": "",
    }  # fmt: skip
    assert (replica1["replay_lsn"], replica1["receive_lsn"]) == ("0/2FFF000", "0/3000060")
    assert (replica1["lag_bytes"], replica1["lag_seconds"]) == (P1 - R1, "0.500")
    assert replica1["eligible"] == "yes"
    assert 250 <= int(str(replica1["last_probe_ms_ago"])) < 1000
    assert (replica1["sv_active"], replica1["sv_idle"]) == (0, 0)
    assert (replica2["state"], replica2["in_recovery"], replica2["eligible"]) == (
        "down",
        "",
        "down",
    )
    assert (replica2["error"], replica2["last_probe_ms_ago"]) == ("connection refused", None)


def test_show_replicas_says_why_session_mode_keeps_reads_on_the_primary() -> None:
    rows = as_dicts(routing_show(admin_routing.show_replicas, routing_proxy("session")))
    assert [r["eligible"] for r in rows] == ["not-standby", "session-pool-mode", "down"]


def test_show_replicas_applies_the_default_lag_bound() -> None:
    proxy = routing_proxy()
    monitor = proxy.directors["app"].monitor
    primary, replica1, replica2 = monitor.state.backends
    behind = BackendState(
        replica1.backend, up=True, in_recovery=True, replay_lsn=R1, lag_bytes=P1 - R1,
        lag_seconds=11.0, checked_at=time.monotonic(),
    )  # fmt: skip
    monitor.state = ClusterState("app", (primary, behind, replica2), "primary", P1, 0.0)
    rows = as_dicts(routing_show(admin_routing.show_replicas, proxy))
    assert rows[1]["eligible"] == "lag>10s"


def test_show_routes_rows() -> None:
    rows = routing_show(admin_routing.show_routes, routing_proxy()).rows
    assert rows == [
        ("app", "rule", "(default)", 5),
        ("app", "reason", "default", 3),
        ("app", "reason", "write", 2),
        ("app", "backend", "primary", 2),
        ("app", "backend", "replica1", 3),
        ("app", "total", "fallbacks", 1),
        ("app", "total", "waits", 2),
        ("app", "total", "avg_wait_ms", "25.0"),
    ]


def test_show_route_for_a_read_picks_the_fresh_replica() -> None:
    lines = route_for("SHOW ROUTE FOR SELECT * FROM orders", routing_proxy())
    assert (lines["database"], lines["kind"], lines["target"]) == ("app", "read", "replica")
    assert lines["tables"] == "orders"
    assert lines["candidates"] == "replica1 eligible, replica2 down"
    assert lines["chosen"] == "replica1 (default)"
    assert "stale" not in lines


def test_show_route_for_a_write_goes_to_the_primary() -> None:
    lines = route_for("SHOW ROUTE FOR UPDATE t SET x = 1", routing_proxy())
    assert (lines["kind"], lines["target"], lines["chosen"]) == (
        "write",
        "primary",
        "primary (write)",
    )
    assert "candidates" not in lines


def test_show_route_for_a_read_only_transaction_start_names_the_replica_and_why() -> None:
    for statement in ("SET TRANSACTION READ ONLY", "BEGIN READ ONLY"):
        lines = route_for(f"SHOW ROUTE FOR {statement}", routing_proxy())
        assert lines["kind"] == "transaction"
        assert lines["routed as"] == "read (read-only-transaction)"
        assert (lines["target"], lines["chosen"]) == ("replica", "replica1 (default)")
        assert "live target" not in lines


def test_show_route_for_a_bare_begin_says_it_waits_for_the_next_statement() -> None:
    lines = route_for("SHOW ROUTE FOR BEGIN", routing_proxy())
    assert "SET TRANSACTION READ ONLY" in lines["transaction"]
    assert (lines["target"], lines["chosen"]) == ("primary", "primary (transaction)")
    assert "transaction" not in route_for("SHOW ROUTE FOR BEGIN READ ONLY", routing_proxy())


def test_show_route_for_explains_a_stale_replica() -> None:
    sql = "SHOW ROUTE FOR /* pgrouter:min_lsn=0/3000060 */ SELECT * FROM t WHERE s = ';';"
    lines = route_for(sql, routing_proxy())
    assert lines["min_lsn"] == lines["required_lsn"] == "0/3000060"
    assert lines["candidates"] == "replica1 stale:min_lsn, replica2 down"
    assert lines["chosen"] == "primary (replica-stale:min_lsn) needs 0/3000060, best 0/2FFF000"
    assert lines["stale"] == "replica-stale: needs 0/3000060, best 0/2FFF000"


def test_show_route_for_in_session_mode_stays_on_the_primary() -> None:
    lines = route_for("SHOW ROUTE FOR SELECT 1", routing_proxy("session"))
    assert lines["chosen"] == "primary (session-pool-mode)"


def test_show_route_for_counts_nothing() -> None:
    proxy = routing_proxy()
    director, classifier = proxy.directors["app"], proxy.classifier
    stats = director.stats
    before = (dict(stats.by_rule), dict(stats.by_reason), stats.fallbacks, dict(director.load))
    run("SHOW ROUTE FOR SELECT 1; SHOW ROUTE FOR /* pgrouter:min_lsn=9/0 */ SELECT 2", proxy)
    run("SHOW ROUTE FOR bogus statement", proxy)
    after = (dict(stats.by_rule), dict(stats.by_reason), stats.fallbacks, dict(director.load))
    assert before == after
    assert (classifier.cache_info(), classifier.fallbacks) == ((0, 0, 0), 0)


def test_show_route_for_a_bad_lsn_is_22p02() -> None:
    frames = run("SHOW ROUTE FOR /* pgrouter:min_lsn=nope */ SELECT 1", routing_proxy())
    error = error_of(frames)
    assert (error.severity, error.sqlstate) == ("ERROR", "22P02")
    assert "nope" in error.message


def test_show_route_for_without_a_statement_is_42601() -> None:
    error = error_of(run("SHOW ROUTE FOR ;", routing_proxy()))
    assert (error.sqlstate, error.message) == ("42601", "SHOW ROUTE FOR needs a statement")


def test_show_route_for_says_when_a_read_was_learned_to_be_a_write() -> None:
    proxy = routing_proxy()
    proxy.directors["app"].learned_writes.add(fingerprint("SELECT my_writing_function()"))
    lines = route_for("SHOW ROUTE FOR SELECT my_writing_function()", proxy)
    assert (lines["target"], lines["live target"]) == ("replica", "primary (write)")
    assert lines["chosen"] == "primary (write)"
