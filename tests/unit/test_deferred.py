"""Deferred BEGIN (router/deferred.py): a bare BEGIN answered by the proxy, sent later in
front of the unit that shows where the transaction belongs.

The first tests drive the module's functions with message bytes. The rest drive a real
ClientSession with its real Forwarder, Planner, Director, pools and ResponseTrackers,
without sockets: client messages are fed as bytes, each server connection records the
bytes it was sent, server replies are fed as bytes, and the tests assert the exact
sequences: what the client receives (``['C', 'Z']``, with each ReadyForQuery's status),
what each server was sent, and that the injected BEGIN's replies never reach the client.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from policies.match import compile_policy
from policies.model import Policy
from protocol import backend as be
from protocol import frontend as fe
from router.backends import Backend, ServerCredentials, backends_of
from router.capture import CAPTURE_FUNCTION_OID
from router.classifier import Classifier
from router.client import ClientSession, State
from router.config import Settings
from router.deferred import answer, begin_tag, end_tag, planned_unit
from router.director import Director
from router.monitor import BackendState, ClusterState, Monitor
from router.pool import ConnectionBudget, Pool, PoolKey
from router.prepared import server_name_for
from router.proxy import _between_transactions
from router.server import Mode, ServerConnection
from router.tracker import Request, ResponseTracker

Frame = tuple[str, bytes]


def messages(data: bytes) -> list[Frame]:
    """(tag, body) of each whole message in ``data``."""
    out = []
    i = 0
    while i < len(data):
        length = int.from_bytes(data[i + 1 : i + 5], "big")
        out.append((chr(data[i]), data[i + 5 : i + 1 + length]))
        i += 1 + length
    assert i == len(data), "replies must be whole messages"
    return out


def tags(data: bytes) -> list[str]:
    return [tag for tag, _ in messages(data)]


def shown(data: bytes) -> list[str]:
    """Tags, with each ReadyForQuery's status and each CommandComplete's tag spelled
    out: ``['C:BEGIN', 'Z:T']``."""
    out = []
    for tag, body in messages(data):
        if tag == "Z":
            out.append(f"Z:{chr(body[0])}")
        elif tag == "C":
            out.append(f"C:{be.CommandComplete.decode(body).tag}")
        elif tag == "E":
            out.append(f"E:{be.ErrorResponse.decode(body).sqlstate}")
        else:
            out.append(tag)
    return out


def queries(data: bytes) -> list[str]:
    """What a server was sent: each Query's SQL, each Parse's SQL as ``P:sql``, other
    messages by tag."""
    out = []
    for tag, body in messages(data):
        if tag == "Q":
            out.append(fe.Query.decode(body).sql)
        elif tag == "P":
            out.append("P:" + fe.Parse.decode(body).query)
        elif tag == "F":
            out.append(f"F:{fe.FunctionCall.decode(body).oid}")
        else:
            out.append(tag)
    return out


def query(sql: str) -> list[Frame]:
    return [("Q", fe.Query(sql).encode())]


def extended(sql: str) -> bytes:
    """Parse/Bind/Describe/Execute/Sync of an unnamed statement, as psycopg sends it."""
    return (
        fe.Parse("", sql).encode()
        + fe.Bind("", "", (), (), ()).encode()
        + fe.Describe("P", "").encode()
        + fe.Execute("").encode()
        + fe.Sync().encode()
    )


def done(tag: str, status: str) -> bytes:
    return be.CommandComplete(tag).encode() + be.ReadyForQuery(status).encode()


def row(*values: bytes) -> bytes:
    fields = tuple(be.FieldDescription(f"c{i}") for i in range(len(values)))
    return be.RowDescription(fields).encode() + be.DataRow(values).encode()


# --------------------------------------------------------------------------- the module


@pytest.mark.parametrize(
    ("sql", "tag"),
    [
        ("BEGIN", "BEGIN"),
        ("begin;", "BEGIN"),
        ("BEGIN WORK", "BEGIN"),
        ("begin transaction ;", "BEGIN"),
        ("/* app */ START\n TRANSACTION", "START TRANSACTION"),
        ("-- why\nBEGIN", "BEGIN"),
        # Transaction modes could fail at the server, or decide the route: not deferred.
        ("BEGIN READ ONLY", None),
        ("START TRANSACTION READ ONLY", None),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE", None),
        ("BEGIN READ WRITE", None),
        ("BEGIN; SELECT 1", None),
        ("BEGIN 'x'", None),
        ("BEGIN -- trailing", None),
        ("/* pgrouter:primary */ BEGIN", None),
        ("START", None),
        ("SELECT 'BEGIN'", None),
    ],
)
def test_only_a_bare_begin_alone_in_a_query_is_deferred(sql: str, tag: str | None) -> None:
    assert begin_tag(query(sql)) == tag


def test_a_begin_in_the_extended_protocol_is_not_deferred() -> None:
    assert begin_tag(messages(fe.Parse("", "BEGIN").encode() + fe.Sync().encode())) is None
    assert begin_tag(messages(fe.Query("BEGIN").encode() * 2)) is None


@pytest.mark.parametrize(
    ("sql", "tag"),
    [
        ("COMMIT", "COMMIT"),
        ("end;", "COMMIT"),
        ("COMMIT WORK", "COMMIT"),
        ("ROLLBACK", "ROLLBACK"),
        ("abort transaction", "ROLLBACK"),
        ("COMMIT AND CHAIN", None),
        ("ROLLBACK TO SAVEPOINT a", None),
        ("ROLLBACK PREPARED 'x'", None),
        ("PREPARE TRANSACTION 'x'", None),
        ("COMMIT; SELECT 1", None),
    ],
)
def test_bare_transaction_ends(sql: str, tag: str | None) -> None:
    assert end_tag(query(sql)) == tag


def test_local_begin_replies_command_complete_and_ready_in_transaction() -> None:
    local = answer(query("BEGIN"), None, "I", may_defer=True)
    assert local is not None and local.deferred is not None
    assert shown(local.reply) == ["C:BEGIN", "Z:T"]
    assert local.status == "T"
    start = answer(query("START TRANSACTION"), None, "I", may_defer=True)
    assert start is not None and shown(start.reply) == ["C:START TRANSACTION", "Z:T"]


def test_begin_is_not_deferred_unless_allowed_and_idle() -> None:
    assert answer(query("BEGIN"), None, "I", may_defer=False) is None
    assert answer(query("BEGIN"), None, "T", may_defer=True) is None
    assert answer(query("SELECT 1"), None, "I", may_defer=True) is None


def test_commit_or_rollback_after_a_deferred_begin_is_answered_locally() -> None:
    begun = answer(query("BEGIN"), None, "I", may_defer=True)
    assert begun is not None
    for sql, tag in [("COMMIT", "COMMIT"), ("END", "COMMIT"), ("ROLLBACK", "ROLLBACK")]:
        local = answer(query(sql), begun.deferred, "T", may_defer=True)
        assert local is not None and local.deferred is None
        assert shown(local.reply) == [f"C:{tag}", "Z:I"]
        assert local.status == "I"


def test_other_units_after_a_deferred_begin_go_to_a_server() -> None:
    begun = answer(query("BEGIN"), None, "I", may_defer=True)
    assert begun is not None
    for sql in ["SET TRANSACTION READ ONLY", "SELECT 1", "UPDATE t SET v = 1", "BEGIN"]:
        assert answer(query(sql), begun.deferred, "T", may_defer=True) is None


def test_a_failed_deferred_transaction_answers_25p02_until_it_ends() -> None:
    begun = answer(query("BEGIN"), None, "I", may_defer=True)
    assert begun is not None
    local = answer(query("SELECT 1"), begun.deferred, "E", may_defer=True)
    assert local is not None and local.deferred is begun.deferred
    assert shown(local.reply) == ["E:25P02", "Z:E"]
    local = answer(messages(extended("SELECT 1")), begun.deferred, "E", may_defer=True)
    assert local is not None and shown(local.reply) == ["E:25P02", "Z:E"]
    # PostgreSQL ends a failed transaction with ROLLBACK, whether asked to commit or not.
    local = answer(query("COMMIT"), begun.deferred, "E", may_defer=True)
    assert local is not None and local.deferred is None
    assert shown(local.reply) == ["C:ROLLBACK", "Z:I"]


def test_the_next_unit_is_planned_behind_the_begin() -> None:
    begun = answer(query("BEGIN"), None, "I", may_defer=True)
    assert begun is not None and begun.deferred is not None
    unit = query("SET TRANSACTION READ ONLY")
    assert planned_unit(None, unit) == unit
    assert planned_unit(begun.deferred, unit) == query("BEGIN") + unit


def test_injected_begin_goes_first_and_only_its_success_is_swallowed() -> None:
    begun = answer(query("BEGIN"), None, "I", may_defer=True)
    assert begun is not None and begun.deferred is not None
    tracker = ResponseTracker()
    sent = begun.deferred.inject(tracker)
    assert queries(sent) == ["BEGIN"]
    assert begun.deferred.answering(tracker)
    tracker.expect(Request("Q"))  # the unit sent behind it
    seen = []
    for tag in "CZTDCZ":
        forward, due = tracker.received(tag, b"T" if tag == "Z" else b"")
        assert due == b""
        if forward:
            seen.append(tag)
        elif tag == "Z":
            assert not begun.deferred.answering(tracker)  # the BEGIN is answered
    assert seen == ["T", "D", "C", "Z"]
    assert tracker.idle


def test_an_error_to_the_injected_begin_still_reaches_the_client() -> None:
    begun = answer(query("BEGIN"), None, "I", may_defer=True)
    assert begun is not None and begun.deferred is not None
    tracker = ResponseTracker()
    begun.deferred.inject(tracker)
    assert tracker.received("E") == (True, b"")
    assert tracker.received("Z", b"I") == (False, b"")


# --------------------------------------------------------------------------- a real session


class RecordingTransport:
    """Stands in for a socket: records what is written."""

    def __init__(self, on_close: Callable[[], None] | None = None) -> None:
        self.data = bytearray()
        self.closing = False
        self._on_close = on_close

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after close"
        self.data += data

    def take(self) -> bytes:
        data, self.data = bytes(self.data), bytearray()
        return data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            if self._on_close is not None:
                self._on_close()

    def get_extra_info(self, name: str) -> Any:
        return None

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def make_server(backend: Backend) -> ServerConnection:
    server = ServerConnection(backend, "app", 1 << 20)
    transport = RecordingTransport(lambda: server.connection_lost(None))
    server.connection_made(transport)  # type: ignore[arg-type]
    server.mode = Mode.READY
    return server


def sent(server: ServerConnection) -> list[str]:
    """The SQL (and other messages) ``server`` was sent since the last call."""
    transport = server.transport
    assert isinstance(transport, RecordingTransport)
    return queries(transport.take())


class FakeProxy:
    """What a ClientSession asks of the proxy: settings, one director, real pools of
    socketless server connections (two per backend)."""

    def __init__(self, mode: str) -> None:
        self.settings = Settings(
            auth={"users": {"app": {"password": "pw"}}},
            pool={"size": 4, "mode": mode},
            databases={
                "app": {
                    "primary": {"host": "10.0.0.1", "port": 5432},
                    "replicas": [{"host": "10.0.0.2"}, {"host": "10.0.0.3"}],
                }
            },
        )
        backends = backends_of("app", self.settings.databases["app"])
        monitor = Monitor(
            "app", backends, None, interval=10.0, timeout=1.0, max_backoff=30.0,
            tls=self.settings.tls, ssl_context=None,
        )  # fmt: skip
        now = time.monotonic()
        lsn = 0x3000060
        monitor.state = ClusterState(
            "app",
            tuple(
                BackendState(
                    b,
                    up=True,
                    in_recovery=b.role == "replica",
                    insert_lsn=lsn,
                    replay_lsn=lsn,
                    receive_lsn=lsn,
                    lag_bytes=0,
                    lag_seconds=0.0,
                    checked_at=now,
                )
                for b in backends
            ),
            "primary",
            lsn,
            now,
        )
        self.directors = {"app": Director("app", backends, monitor, rng=random.Random(4))}
        self.policy = compile_policy(Policy())
        self.classifier = Classifier()
        self.pools: dict[str, Pool] = {}
        for backend in backends:
            pool = Pool(
                PoolKey("app", "app", backend.name),
                backend,
                self.settings.pool,
                credentials=lambda: None,  # type: ignore[arg-type,return-value]
                tls=self.settings.tls,
                ssl_context=None,
                budget=ConnectionBudget(0),
                max_message_size=1 << 20,
            )
            pool.idle += [make_server(backend), make_server(backend)]
            self.pools[backend.name] = pool

    def pool_on(self, database: str, user: str, backend: str) -> Pool:
        return self.pools[backend]

    def routes_reads(self, database: str) -> bool:
        return True

    def learn_credentials(self, user: str, credentials: object) -> None: ...

    def register(self, client: ClientSession) -> tuple[int, int]:
        return (1, 2)

    def forget(self, client: ClientSession) -> None: ...


class Harness:
    """A logged-in client session over FakeProxy."""

    def __init__(self, mode: str = "transaction") -> None:
        self.proxy = FakeProxy(mode)
        self.client = RecordingTransport()
        session = ClientSession(self.proxy)  # type: ignore[arg-type]
        session._use_transport(self.client)  # type: ignore[arg-type]
        session.user = session.database = "app"
        session._startup_reader = None  # as after a StartupMessage
        self.session = session

    async def login(self) -> None:
        await self.session._link(None)
        assert self.session.state is State.ACTIVE
        assert tags(self.client.take()) == ["K", "Z"]
        for pool in self.proxy.pools.values():
            for server in pool.idle:
                sent(server)  # forget the login's traffic

    async def send(self, data: bytes) -> list[str]:
        """Client bytes in; what the client got back once the session settled (a server
        not yet in line with the client's settings is synced by a task first)."""
        self.session.data_received(data)
        return await self.settled()

    async def reply(self, server: ServerConnection, data: bytes) -> list[str]:
        """Server bytes in; what the client got once the session settled."""
        server.data_received(data)
        return await self.settled()

    async def settled(self) -> list[str]:
        for _ in range(5):
            await asyncio.sleep(0)
        return shown(self.client.take())

    def busy(self) -> list[ServerConnection]:
        """Servers handed out (one at a time, for one client)."""
        return [s for pool in self.proxy.pools.values() for s in pool.active]

    def linked(self) -> ServerConnection:
        server = self.session.server
        assert server is not None, "the client holds no server"
        return server

    def stats(self, backend: str) -> tuple[int, int]:
        stats = self.proxy.pools[backend].stats
        return stats.query_count, stats.xact_count


def run(test: Callable[[Harness], Coroutine[Any, Any, None]], mode: str = "transaction") -> None:
    async def main() -> None:
        harness = Harness(mode)
        await harness.login()
        await test(harness)

    asyncio.run(main())


def test_bare_begin_is_answered_without_a_server() -> None:
    async def test(h: Harness) -> None:
        assert await h.send(fe.Query("BEGIN").encode()) == ["C:BEGIN", "Z:T"]
        assert h.session.tx_status == "T"
        assert h.session.server is None and h.busy() == []

    run(test)


def test_set_transaction_read_only_after_begin_runs_on_a_replica_behind_the_begin() -> None:
    async def test(h: Harness) -> None:
        await h.send(fe.Query("BEGIN").encode())
        assert await h.send(fe.Query("SET TRANSACTION READ ONLY").encode()) == []
        server = h.linked()
        assert server.backend.role == "replica"
        assert sent(server) == ["BEGIN", "SET TRANSACTION READ ONLY"]
        # The BEGIN's own answer is swallowed; the client gets the SET's, in the
        # transaction it was already told of.
        assert await h.reply(server, done("BEGIN", "T")) == []
        assert await h.reply(server, done("SET", "T")) == ["C:SET", "Z:T"]
        # The rest of the transaction stays on that replica.
        assert await h.send(fe.Query("SELECT 1").encode()) == []
        assert sent(server) == ["SELECT 1"]
        assert await h.reply(server, row(b"1") + done("SELECT 1", "T")) == [
            "T",
            "D",
            "C:SELECT 1",
            "Z:T",
        ]
        await h.send(fe.Query("COMMIT").encode())
        assert sent(server) == ["COMMIT"]
        assert await h.reply(server, done("COMMIT", "I")) == ["C:COMMIT", "Z:I"]
        assert h.session.server is None and h.session.tx_status == "I"
        # Statistics: four queries ran there (the BEGIN too), one transaction.
        assert h.stats(server.backend.name) == (4, 1)
        # The BEGIN went once: the next unit is on its own.
        await h.send(fe.Query("SELECT 2").encode())
        assert sent(h.linked()) == ["SELECT 2"]

    run(test)


def test_begin_answer_and_unit_answer_in_one_chunk() -> None:
    async def test(h: Harness) -> None:
        await h.send(fe.Query("BEGIN").encode())
        await h.send(fe.Query("SET TRANSACTION READ ONLY").encode())
        server = h.linked()
        assert await h.reply(server, done("BEGIN", "T") + done("SET", "T")) == ["C:SET", "Z:T"]
        assert h.linked() is server

    run(test)


def test_begin_then_update_goes_to_the_writer_and_the_capture_waits_for_commit() -> None:
    async def test(h: Harness) -> None:
        await h.send(fe.Query("BEGIN").encode())
        await h.send(fe.Query("UPDATE t SET v = 1").encode())
        server = h.linked()
        assert server.backend.name == "primary"
        # No write-LSN query behind the UPDATE: the prediction knows it runs inside the
        # BEGIN's transaction.
        assert sent(server) == ["BEGIN", "UPDATE t SET v = 1"]
        assert await h.reply(server, done("BEGIN", "T") + done("UPDATE 1", "T")) == [
            "C:UPDATE 1",
            "Z:T",
        ]
        await h.send(fe.Query("COMMIT").encode())
        # The capture: a FunctionCall of pg_current_wal_insert_lsn() right behind it.
        assert sent(server) == ["COMMIT", f"F:{CAPTURE_FUNCTION_OID}"]
        reply = done("COMMIT", "I") + be.FunctionCallResponse(b"0/3000100").encode()
        reply += be.ReadyForQuery("I").encode()
        assert await h.reply(server, reply) == ["C:COMMIT", "S", "Z:I"]
        assert h.session.forwarder is not None
        assert h.session.forwarder.last_write_lsn == 0x3000100
        assert h.session.server is None
        assert h.stats("primary")[1] == 1  # one transaction

    run(test)


def test_capture_write_lsn_off_sends_the_primary_nothing_more() -> None:
    async def test(h: Harness) -> None:
        h.session._capture_lsn = False  # as with capture_write_lsn: false
        await h.send(fe.Query("UPDATE t SET v = 2").encode())
        server = h.linked()
        assert sent(server) == ["UPDATE t SET v = 2"]  # no FunctionCall behind it
        assert await h.reply(server, done("UPDATE 1", "I")) == ["C:UPDATE 1", "Z:I"]
        assert h.session.forwarder is not None
        assert h.session.forwarder.last_write_lsn is None
        assert h.session.forwarder.last_write_at is not None  # sticky_after_write's clock

    run(test)


def test_an_autocommit_write_is_followed_by_its_capture() -> None:
    async def test(h: Harness) -> None:
        await h.send(extended("UPDATE t SET v = 3"))
        server = h.linked()
        capture = f"F:{CAPTURE_FUNCTION_OID}"
        assert sent(server) == ["P:UPDATE t SET v = 3", "B", "D", "E", "S", capture]
        reply = be.ParseComplete().encode() + be.BindComplete().encode()
        reply += be.NoData().encode() + done("UPDATE 1", "I")
        reply += be.FunctionCallResponse(b"0/4000000").encode() + be.ReadyForQuery("I").encode()
        # The token comes before the write's ReadyForQuery, in the same reply.
        assert await h.reply(server, reply) == ["1", "2", "n", "C:UPDATE 1", "S", "Z:I"]
        assert h.session.forwarder is not None
        assert h.session.forwarder.last_write_lsn == 0x4000000

    run(test)


def test_begin_then_commit_touches_no_server() -> None:
    async def test(h: Harness) -> None:
        assert await h.send(fe.Query("BEGIN").encode()) == ["C:BEGIN", "Z:T"]
        assert await h.send(fe.Query("COMMIT").encode()) == ["C:COMMIT", "Z:I"]
        assert await h.send(fe.Query("START TRANSACTION").encode()) == [
            "C:START TRANSACTION",
            "Z:T",
        ]
        assert await h.send(fe.Query("ROLLBACK").encode()) == ["C:ROLLBACK", "Z:I"]
        assert h.busy() == [] and h.session.tx_status == "I"
        assert all(h.stats(name) == (0, 0) for name in h.proxy.pools)
        # Pipelined in one chunk, too.
        both = fe.Query("BEGIN").encode() + fe.Query("END").encode()
        assert await h.send(both) == ["C:BEGIN", "Z:T", "C:COMMIT", "Z:I"]
        for pool in h.proxy.pools.values():
            assert all(sent(server) == [] for server in pool.idle)

    run(test)


def test_set_transaction_isolation_level_goes_to_the_writer() -> None:
    async def test(h: Harness) -> None:
        await h.send(fe.Query("BEGIN").encode())
        await h.send(fe.Query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").encode())
        server = h.linked()
        assert server.backend.name == "primary"
        assert sent(server) == ["BEGIN", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"]

    run(test)


def test_a_read_after_a_bare_begin_goes_to_the_writer() -> None:
    async def test(h: Harness) -> None:
        await h.send(fe.Query("BEGIN").encode())
        await h.send(fe.Query("SELECT 1").encode())
        assert h.linked().backend.name == "primary"

    run(test)


def test_extended_unit_after_begin_gets_the_begin_first_and_its_replies_swallowed() -> None:
    async def test(h: Harness) -> None:
        # Pipelined: BEGIN as a simple Query, then the next statement as psycopg sends it.
        data = fe.Query("BEGIN").encode() + extended("SET TRANSACTION READ ONLY")
        assert await h.send(data) == ["C:BEGIN", "Z:T"]
        server = h.linked()
        assert server.backend.role == "replica"
        assert sent(server) == ["BEGIN", "P:SET TRANSACTION READ ONLY", "B", "D", "E", "S"]
        answer_ = (
            done("BEGIN", "T")
            + be.ParseComplete().encode()
            + be.BindComplete().encode()
            + be.NoData().encode()
            + done("SET", "T")
        )
        assert await h.reply(server, answer_) == ["1", "2", "n", "C:SET", "Z:T"]

    run(test)


def test_held_replica_read_retried_elsewhere_sends_the_begin_again() -> None:
    async def test(h: Harness) -> None:
        await h.send(fe.Query("BEGIN").encode())
        await h.send(fe.Query("SET TRANSACTION READ ONLY").encode())
        first = h.linked()
        assert first.backend.role == "replica"
        assert sent(first) == ["BEGIN", "SET TRANSACTION READ ONLY"]
        # The BEGIN's answer does not release the held read...
        assert await h.reply(first, done("BEGIN", "T")) == []
        assert h.session._holding is not None
        # ... so a recovery conflict before any byte of the unit's answer is retried.
        conflict = be.ErrorResponse.build("ERROR", "40001", "canceling statement due to conflict")
        assert await h.reply(first, conflict.encode() + be.ReadyForQuery("E").encode()) == []
        second = h.linked()
        assert second is not first and first.closed  # in a transaction: never reused
        assert sent(second) == ["BEGIN", "SET TRANSACTION READ ONLY"]
        assert await h.reply(second, done("BEGIN", "T") + done("SET", "T")) == ["C:SET", "Z:T"]
        assert h.session._deferred is None

    run(test)


def test_replica_lost_after_the_begin_retries_with_the_begin() -> None:
    async def test(h: Harness) -> None:
        await h.send(fe.Query("BEGIN").encode())
        await h.send(fe.Query("SET TRANSACTION READ ONLY").encode())
        first = h.linked()
        await h.reply(first, done("BEGIN", "T"))
        first.connection_lost(ConnectionResetError("reset"))
        assert await h.settled() == []
        second = h.linked()
        assert second is not first
        assert sent(second) == ["BEGIN", "SET TRANSACTION READ ONLY"]
        assert await h.reply(second, done("BEGIN", "T") + done("SET", "T")) == ["C:SET", "Z:T"]

    run(test)


def test_write_in_a_declared_read_only_transaction_gets_the_replicas_error() -> None:
    async def test(h: Harness) -> None:
        await h.send(fe.Query("BEGIN").encode())
        await h.send(fe.Query("SET TRANSACTION READ ONLY").encode())
        server = h.linked()
        assert sent(server) == ["BEGIN", "SET TRANSACTION READ ONLY"]
        await h.reply(server, done("BEGIN", "T") + done("SET", "T"))
        await h.send(fe.Query("UPDATE t SET v = 1").encode())
        assert sent(server) == ["UPDATE t SET v = 1"]
        refused = be.ErrorResponse.build("ERROR", "25006", "cannot execute UPDATE")
        reply = refused.encode() + be.ReadyForQuery("E").encode()
        assert await h.reply(server, reply) == ["E:25006", "Z:E"]
        assert h.linked() is server

    run(test)


def test_pgrouter_route_command_after_begin_is_answered_in_the_transaction() -> None:
    async def test(h: Harness) -> None:
        await h.send(fe.Query("BEGIN").encode())
        assert await h.send(fe.Query("SET pgrouter.route = primary").encode()) == ["C:SET", "Z:T"]
        assert h.busy() == []
        await h.send(fe.Query("SET TRANSACTION READ ONLY").encode())
        server = h.linked()
        assert server.backend.name == "primary"  # the client asked for the primary
        assert sent(server) == ["BEGIN", "SET TRANSACTION READ ONLY"]

    run(test)


def test_known_prepare_after_begin_is_answered_in_the_transaction() -> None:
    async def test(h: Harness) -> None:
        assert h.session.forwarder is not None
        # Some server of the pool parsed it before: known to be valid.
        h.session.forwarder.parsed.add(server_name_for("SELECT 1", ()))
        await h.send(fe.Query("BEGIN").encode())
        prepare = fe.Parse("s1", "SELECT 1").encode() + fe.Sync().encode()
        assert await h.send(prepare) == ["1", "Z:T"]
        assert h.busy() == []

    run(test)


def test_rejected_unit_after_begin_fails_the_transaction_until_rollback() -> None:
    async def test(h: Harness) -> None:
        await h.send(fe.Query("BEGIN").encode())
        # A malformed token in a comment: the unit is refused by the proxy.
        assert await h.send(fe.Query("/* pgrouter:min_lsn=zz */ SELECT 1").encode()) == [
            "E:22P02",
            "Z:E",
        ]
        assert h.session.tx_status == "E"
        assert await h.send(fe.Query("SELECT 1").encode()) == ["E:25P02", "Z:E"]
        assert await h.send(fe.Query("COMMIT").encode()) == ["C:ROLLBACK", "Z:I"]
        assert h.busy() == []
        # A new transaction starts clean.
        await h.send(fe.Query("SELECT 1").encode())
        assert sent(h.linked())[0] == "SELECT 1"

    run(test)


def test_client_gone_after_a_deferred_begin_leaves_no_server_behind() -> None:
    async def test(h: Harness) -> None:
        await h.send(fe.Query("BEGIN").encode())
        h.session.connection_lost(None)
        assert h.session.state is State.CLOSED
        assert h.busy() == []
        for pool in h.proxy.pools.values():
            assert all(not server.closed and sent(server) == [] for server in pool.idle)

    run(test)


def test_terminate_after_a_deferred_begin_closes_quietly() -> None:
    async def test(h: Harness) -> None:
        await h.send(fe.Query("BEGIN").encode())
        assert await h.send(fe.Terminate().encode()) == []
        assert h.session.state is State.CLOSED and h.busy() == []

    run(test)


def test_statement_mode_still_refuses_transaction_blocks() -> None:
    async def test(h: Harness) -> None:
        assert await h.send(fe.Query("BEGIN").encode()) == []
        server = h.linked()
        assert sent(server) == ["BEGIN"]
        assert await h.reply(server, done("BEGIN", "T")) == ["C:BEGIN", "Z:T", "E:0A000"]
        assert h.session.state is State.CLOSED

    run(test, mode="statement")


def test_session_mode_defers_nothing() -> None:
    async def test(h: Harness) -> None:
        assert await h.send(fe.Query("BEGIN").encode()) == []
        server = h.linked()
        assert server.backend.name == "primary"
        assert sent(server) == ["BEGIN"]

    run(test, mode="session")


def test_graceful_shutdown_waits_for_a_deferred_transaction() -> None:
    async def test(h: Harness) -> None:
        assert _between_transactions(h.session)
        await h.send(fe.Query("BEGIN").encode())
        assert not _between_transactions(h.session)  # the client was told it is in one
        await h.send(fe.Query("COMMIT").encode())
        assert _between_transactions(h.session)

    run(test)


def test_a_queued_read_whose_new_replica_connection_fails_its_sync_goes_elsewhere() -> None:
    """A read that waits in line for a replica connection gets a new one, which must
    first take the client's settings; when the replica ends that connection then (a
    shutdown: 57P01) nothing of the read was sent, so it is routed again, that replica
    avoided, and the client never sees the error."""

    async def test(h: Harness) -> None:
        # A setting every connection this client uses must be given first.
        assert await h.send(fe.Query("SET search_path = app").encode()) == []
        assert await h.reply(h.linked(), done("SET", "I")) == ["C:SET", "Z:I"]
        # One read as usual, so the next one is decided at once (classification cached).
        await h.send(fe.Query("SELECT 1").encode())
        server = h.linked()
        if [q for q in sent(server) if "search_path" in q]:
            await h.reply(server, done("SET", "I"))
        await h.reply(server, row(b"1") + done("SELECT 1", "I"))
        opened: list[ServerConnection] = []

        async def open_connection(backend: Backend, *args: object, **kwargs: object) -> Any:
            opened.append(make_server(backend))
            return opened[-1]

        for name in ("replica1", "replica2"):
            pool = h.proxy.pools[name]
            pool.idle.clear()  # the next read waits in line for a new connection
            pool.open_connection = open_connection
            pool._credentials = lambda: ServerCredentials("app", "pw", None, None)
        assert await h.send(fe.Query("SELECT 1").encode()) == []
        assert h.session.waiting_since is None and opened, "no connection opened"
        first = opened[0]
        assert first.backend.role == "replica"
        assert [q for q in sent(first) if "search_path" in q], "no sync sent"
        shutdown = be.ErrorResponse.build(
            "FATAL", "57P01", "terminating connection due to administrator command"
        )
        first.data_received(shutdown.encode())
        first.connection_lost(None)
        assert await h.settled() == []  # the client saw nothing of it
        second = opened[-1]
        assert second.backend.role == "replica" and second.backend is not first.backend
        assert [q for q in sent(second) if "search_path" in q]
        assert await h.reply(second, done("SET", "I")) == []
        assert sent(second) == ["SELECT 1"]
        answer = await h.reply(second, row(b"1") + done("SELECT 1", "I"))
        assert answer == ["T", "D", "C:SELECT 1", "Z:I"]

    run(test)


def test_a_write_pipelined_behind_reads_on_a_replica_waits_and_goes_to_the_writer() -> None:
    """Two reads pipelined in one chunk go to a replica together; a write the client
    sends before they are answered must not follow them there when the first answer
    comes (the replica is still linked, answering the second): it waits until that
    replica is released, then is routed, to the writer. psycopg's pipeline mode did
    this: an INSERT reached a replica and the client got 25006."""

    async def test(h: Harness) -> None:
        for sql in ("SELECT 1", "SELECT 2"):  # classified once, so decided at once below
            await h.send(fe.Query(sql).encode())
            server = h.linked()
            await h.reply(server, row(b"1") + done("SELECT 1", "I"))
            sent(server)
        assert await h.send(fe.Query("SELECT 1").encode() + fe.Query("SELECT 2").encode()) == []
        replica = h.linked()
        assert replica.backend.role == "replica"
        assert sent(replica) == ["SELECT 1", "SELECT 2"]
        assert await h.send(fe.Query("INSERT INTO t VALUES (1)").encode()) == []
        first = await h.reply(replica, row(b"1") + done("SELECT 1", "I"))
        assert first == ["T", "D", "C:SELECT 1", "Z:I"]
        assert sent(replica) == [], "the write followed the reads to the replica"
        second = await h.reply(replica, row(b"2") + done("SELECT 1", "I"))
        assert second == ["T", "D", "C:SELECT 1", "Z:I"]
        writer = h.linked()
        assert writer.backend.role == "primary"
        assert sent(writer) == ["INSERT INTO t VALUES (1)", "F:2852"]  # and its LSN capture

    run(test)


def test_a_read_only_transaction_on_a_replica_keeps_its_later_statements_there() -> None:
    """The other side of the rule above: inside a transaction a replica runs, the next
    statements follow on it (they are part of that transaction)."""

    async def test(h: Harness) -> None:
        await h.send(fe.Query("SELECT 1").encode())  # classified once
        server = h.linked()
        await h.reply(server, row(b"1") + done("SELECT 1", "I"))
        sent(server)
        begin = "BEGIN TRANSACTION READ ONLY"
        assert await h.send(fe.Query(begin).encode() + fe.Query("SELECT 1").encode()) == []
        replica = h.linked()
        assert replica.backend.role == "replica"
        assert sent(replica) == [begin, "SELECT 1"]
        await h.reply(replica, done("BEGIN", "T") + row(b"1") + done("SELECT 1", "T"))
        assert await h.send(fe.Query("SELECT 1").encode()) == []
        assert h.linked() is replica and sent(replica) == ["SELECT 1"]
        await h.reply(replica, row(b"1") + done("SELECT 1", "T"))
        await h.send(fe.Query("COMMIT").encode())
        assert sent(replica) == ["COMMIT"]
        assert await h.reply(replica, done("COMMIT", "I")) == ["C:COMMIT", "Z:I"]

    run(test)


def test_a_flush_from_a_client_holding_no_server_is_dropped_not_routed() -> None:
    """psycopg's pipeline mode sends Flush after its Sync. Once that Sync's answer came
    and the server went back to the pool, the Flush is owed nothing: routed as a unit of
    its own it looked like a read, linked a replica, and the INSERTs that followed went
    there (the client got 25006)."""

    async def test(h: Harness) -> None:
        assert await h.send(fe.Flush().encode()) == []
        assert h.session.server is None and h.busy() == [], "a server was taken for Flush"
        assert await h.send(fe.Query("INSERT INTO t VALUES (1)").encode()) == []
        assert h.linked().backend.role == "primary"

    run(test)
