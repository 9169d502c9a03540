"""Dispatch: the active phase of a client session, from queued messages to servers.

Owns: queueing a client's messages while it holds no server, cutting them into units,
asking the Director where each unit goes, getting a server from that backend's pool,
sending, releasing on the ReadyForQuery that leaves nothing owed (transaction and
statement modes), the proxy's own answers (``SET / SHOW pgrouter.*``, prepares of known
statements), and the transparent retry of a replica read that failed before any byte of
its answer reached the client.
Must not touch: startup and login (client.py), pool internals, the routing decision
(director.py / routing.py).

Theory of operation. ``_queued`` holds the messages not yet sent. ``_pump`` runs after
every arrival and every ReadyForQuery: with a server linked (in a transaction, pinned,
session mode) everything queued goes to it; otherwise the first complete unit is routed
by ``_attach``. A unit routed to a replica is sent alone, or with the read units that
follow it; anything else waits for the next decision. While a replica unit's answer
starts (ParseComplete, BindComplete, ...) it is held back; the first row, completion or
non-retryable error releases it; a retryable error (25006, a recovery conflict) or a lost
connection before that discards it and sends the unit again elsewhere, once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import TYPE_CHECKING, Final, TypeVar

from protocol import backend as be
from protocol import sqlstate
from router.capture import WriteCapture
from router.deferred import DeferredBegin, answer
from router.errors import BackendUnavailable, FeatureNotSupported, ProxyError, ServerError
from router.forward import Terminate
from router.lsn import InvalidLsn, parse_lsn
from router.units import ends_unit, needs_answer, split_units

if TYPE_CHECKING:
    from router.director import Director
    from router.forward import Forwarder
    from router.pool import Pool, Waiter
    from router.routing import Decision
    from router.server import ServerConnection
    from router.units import Planner

log = logging.getLogger("pgrouter.client")
# A Final alias: compiled code calls it without a module attribute lookup.
monotonic: Final = time.monotonic

MAX_HELD: Final = 64 * 1024  # a replica read's answer held for a possible retry, at most
REPLAY_SQL: Final = "SELECT pg_catalog.pg_last_wal_replay_lsn()"

Frame = tuple[str, bytes]
T = TypeVar("T")
# Replies held while a replica read may still be retried: they precede the first row
# (a function's write can fail after RowDescription, a recovery conflict too).
_PREAMBLE: Final = frozenset("123tnTSNA")
_RETRYABLE: Final = frozenset(
    {
        sqlstate.READ_ONLY_SQL_TRANSACTION,  # 25006: it was a write after all
        sqlstate.SERIALIZATION_FAILURE,  # 40001: canceled by a recovery conflict
        sqlstate.DEADLOCK_DETECTED,  # 40P01: recovery conflict on a buffer pin deadlock
        sqlstate.ADMIN_SHUTDOWN,  # 57P01: the replica is shutting down
        sqlstate.CRASH_SHUTDOWN,  # 57P02
        sqlstate.CANNOT_CONNECT_NOW,  # 57P03: starting up or shutting down
        "57P04",  # database dropped on the standby
    }
)


class Dispatch(WriteCapture):
    __slots__ = (  # with ClientSession's: no per-instance dict
        "_decision",
        "_deferred",
        "_force_writer",
        "_held_bytes",
        "_holding",
        "_inflight",
        "_queued",
        "_request_started",
        "_retried",
        "_retry_error",
        "_unit_open",
        "_xact_started",
        "last_request_at",
        "pool",
        "server",
        "tx_status",
        "waiting_since",
    )
    # Attributes provided by ClientSession.
    server: ServerConnection | None
    pool: Pool | None
    forwarder: Forwarder | None
    director: Director | None  # set when this client's reads are routed
    loads: Director  # load accounting, whatever the mode
    planner: Planner | None
    mode: str
    tx_status: str
    database: str
    user: str
    last_request_at: float | None
    waiting_since: float | None
    _queued: list[Frame]
    _attaching: asyncio.Task[None] | Waiter | None
    _request_started: float  # 0.0: none (see ClientSession.__init__)
    _xact_started: float

    def _init_dispatch(self) -> None:
        self._holding: list[bytes] | None = None  # a replica read's answer, held back
        self._held_bytes = 0
        self._retry_error: be.ErrorResponse | None = None
        self._inflight: list[Frame] = []  # the held unit's messages, to send again
        self._retried = False
        self._force_writer = False
        self._decision: Decision | None = None
        self._deferred: DeferredBegin | None = None  # a bare BEGIN not yet on a server
        # The last messages sent to the linked server stopped inside a unit (no Sync yet:
        # Parse/Describe/Flush, as asyncpg prepares): its rest must follow on that server.
        # Set by every send; read only while a server is linked, which a send follows.
        self._unit_open = False
        self._init_capture()

    # ---------------------------------------------------------------- provided by the session

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def fail(self, exc: BaseException) -> None:
        raise NotImplementedError

    def close(self, reason: str) -> None:
        raise NotImplementedError

    async def _acquire(self, pool: Pool) -> ServerConnection:
        raise NotImplementedError

    async def _sync(self, server: ServerConnection) -> None:
        raise NotImplementedError

    def _pool_on(self, backend: str) -> Pool:
        raise NotImplementedError

    def _routing(self) -> bool:
        raise NotImplementedError

    async def _route(self, unit: list[Frame]) -> Decision:
        raise NotImplementedError

    def _route_now(self, unit: list[Frame]) -> Decision | None:
        """The decision when it needs no waiting; None when only ``_route`` can tell."""
        raise NotImplementedError

    def _wanted(self, server: ServerConnection) -> tuple[object, dict[str, str], dict[str, str]]:
        raise NotImplementedError

    def _command(self, frames: list[Frame]) -> bytes | None:
        raise NotImplementedError

    # ---------------------------------------------------------------- queueing

    def _forward(self, frames: list[Frame]) -> None:
        """Client messages in the active phase: to its server, or queued until it has one."""
        idle = self._attaching is None and not self._queued and self._holding is None
        server = self.server
        if server is not None and idle and self._may_follow_on(server):
            self._send(frames)
            return
        self._queued.extend(frames)
        self._pump()

    def _may_follow_on(self, server: ServerConnection) -> bool:
        """Whether new messages may go to the linked server without being routed. Always
        to the writer, and to a replica inside a transaction it runs or to finish a unit
        it started; but a replica still answering reads pipelined to it (its status is
        idle) gets nothing more: what comes next may write, so it waits to be routed when
        that replica is released."""
        if self._unit_open or server.tx_status != "I" or self.director is None:
            return True
        if self.mode == "session" or (self.forwarder is not None and self.forwarder.pin_reason):
            return True  # never released: everything goes where it is
        return server.backend.name == self._writer_name()

    def _pump(self) -> None:
        """Start on queued messages if nothing is in the way."""
        while self._queued and self._attaching is None and self._holding is None:
            if self.server is not None:
                if not self._may_follow_on(self.server):
                    return  # routed once that replica is released (see _after_ready)
                frames, self._queued = self._queued, []
                self._send(frames)
                return
            queued = self._queued
            lead_code = ord(queued[0][0])  # a character code: see Forwarder.translate
            if lead_code == ord("H"):
                # A Flush asks the server for what it owes; a client that holds none is
                # owed nothing. Dropped, not routed: as a unit of its own it would look
                # like a read, link a replica, and take the client's next messages there.
                lead = 1
                while lead < len(queued) and queued[lead][0] == "H":
                    lead += 1
                del queued[:lead]
                continue
            units: list[list[Frame]]
            tail: list[Frame]
            if len(queued) == 1 and lead_code == ord("Q"):  # the common case, without a scan
                units, tail = [queued[:1]], []  # a slice: no new tuple (see split_units)
            else:
                if lead_code == ord("X"):
                    self.close("client sent Terminate")
                    return
                if not needs_answer(queued):
                    return
                units, tail = split_units(queued)
            if self._answer_locally(units, tail):
                continue
            self._start_attach(units, tail)
            if not self._attached():
                continue  # the unit was answered with an error: go on with the next
            return

    def _attached(self) -> bool:
        # A method, not an inline test: the type checker narrowed both attributes to None
        # above, and compiled code trusts narrowing (see pgrouter_native).
        return self.server is not None or self._attaching is not None

    def _answer_locally(self, units: list[list[Frame]], tail: list[Frame]) -> bool:
        """Answer the leading unit without a server when that is possible."""
        if units:
            first = units[0]
        elif tail and tail[-1][0] == "H":  # Parse/Describe/Flush, as asyncpg prepares
            first = tail
        else:
            return False
        assert self.forwarder is not None
        try:
            reply = self._command(first)
            if reply is None:
                reply = self._deferral_reply(first)
            if reply is None and units:
                reply = self.forwarder.answer_locally(first, self.tx_status)
        except InvalidLsn as exc:
            reply = _error(sqlstate.INVALID_TEXT_REPRESENTATION, str(exc), self.tx_status)
        if reply is None:
            return False
        del self._queued[: len(first)]
        self.send(reply)
        return True

    # ---------------------------------------------------------------- a deferred BEGIN

    def _deferral_reply(self, unit: list[Frame]) -> bytes | None:
        """Defer a bare BEGIN, or answer a unit behind one (see router/deferred.py)."""
        may_defer = self.mode == "transaction" and self._routing()
        local = answer(unit, self._deferred, self.tx_status, may_defer=may_defer)
        if local is None:
            return None
        self._deferred, self.tx_status = local.deferred, local.status
        return local.reply

    def _send_deferred(self, server: ServerConnection) -> None:
        """The deferred BEGIN, ahead of the unit on the server just linked; kept while
        that unit's answer is held, as a retry elsewhere must send it again."""
        assert self._deferred is not None
        server.send(self._deferred.inject(server.tracker))
        self._expect_status = "T"  # the write-LSN capture's prediction starts in a transaction
        if self._holding is None:
            self._deferred = None

    # ---------------------------------------------------------------- attaching a server

    def _start_attach(self, units: list[list[Frame]], tail: list[Frame]) -> None:
        """Route the leading unit and, when an idle server in line with this client's
        settings is at hand, link it and send at once; otherwise hand over to ``_attach``,
        which may wait (for a pool, a parameter sync, a fresh replica, the writer's LSN)."""
        first = units[0] if units else tail
        decision: Decision | None = None
        if self._routing():
            try:
                decision = self._route_now(first)
            except InvalidLsn as exc:
                self._reject_unit(first, sqlstate.INVALID_TEXT_REPRESENTATION, str(exc))
                return
            if decision is not None and decision.backend is None:
                self._reject_unit(first, _unit_error_code(decision), decision.error or "")
                return
        if (decision is None and self._routing()) or (decision is not None and decision.wait):
            self._attaching = asyncio.get_running_loop().create_task(self._attach(decision))
            return
        backend = decision.backend if decision is not None else self._writer_name()
        assert backend is not None
        pool = self._pool_on(backend)
        server = pool.take_idle()
        if server is not None and server.settings_key == self._wanted(server)[0]:
            self.server = server
            self.pool = pool
            self.loads.started(backend)
            self._decision = decision
            self._begin(server, self._prefix(decision, units, first))
            return
        if server is not None:
            pool.release(server, reusable=True, reset=False)
        elif pool.may_queue():
            self._decision = decision
            waiter = pool.enqueue(self._granted, self._refused)
            if not waiter.settled:  # (settled: granted or refused before enqueue returned)
                self._attaching = waiter
                self.waiting_since = waiter.since
            return
        self._attaching = asyncio.get_running_loop().create_task(self._attach(decision))

    def _granted(self, server: ServerConnection) -> bool:
        """The pool hands this waiting client a connection (see ``_start_attach``)."""
        self._attaching = None
        self.waiting_since = None
        self.server = server  # from here on, _finish gives it back
        if server.settings_key != self._wanted(server)[0]:
            loop = asyncio.get_running_loop()
            self._attaching = loop.create_task(self._sync_then_begin(server))
            return True
        self._linked(server)
        return True

    def _linked(self, server: ServerConnection) -> None:
        owner = server.owner
        assert owner is not None
        self.pool = owner  # type: ignore[assignment]  # a server's owner is its Pool
        self.loads.started(server.backend.name)
        decision = self._decision
        if decision is None or not decision.replica:  # everything queued goes (_prefix)
            self._begin(server, len(self._queued))
            return
        units, tail = split_units(self._queued)
        self._begin(server, self._prefix(decision, units, units[0] if units else tail))

    async def _sync_then_begin(self, server: ServerConnection) -> None:
        try:
            await self._sync(server)
        except ProxyError as exc:
            self._attaching = None
            decision = self._decision
            if decision is None or not decision.replica or self.director is None:
                self.fail(exc)
                return
            # Nothing of the unit was sent: a replica that fails while being brought in
            # line with this client (shutting down, say) is avoided, as one that refuses
            # a connection is, and the unit is routed again (see _server_for_queue).
            self.server = None
            self._pool_on(server.backend.name).release(server, reusable=False)
            log.info("%r: %s failed before the read was sent (%s): routed again",
                     self, server.backend.label, exc.message)  # fmt: skip
            self._route_elsewhere(self.director, server.backend.name)
            return
        self._attaching = None
        self._linked(server)

    def _route_elsewhere(self, director: Director, replica: str) -> None:
        """Nothing of the waiting unit reached ``replica``: keep reads off it until its
        next good probe and route the unit again."""
        director.suspect(replica)
        self._attaching = asyncio.get_running_loop().create_task(self._attach(None))

    async def _attach_step(self, step: Awaitable[T]) -> tuple[bool, T | None]:
        """Await one waiting part of attaching; (False, None) after a ProxyError, which
        ends the session. ``_attaching`` is cleared either way."""
        try:
            result = await step
        except ProxyError as exc:
            self._attaching = None
            self.fail(exc)
            return False, None
        self._attaching = None
        return True, result

    def _refused(self, exc: ProxyError) -> None:
        """No connection for this waiting client: query_wait_timeout ends the session;
        a backend that cannot be reached fails the unit (a replica's: routed again)."""
        self._attaching = None
        self.waiting_since = None
        decision = self._decision
        replica = decision is not None and decision.replica
        unreachable = isinstance(exc, BackendUnavailable) or (
            isinstance(exc, ServerError) and replica
        )
        if not unreachable:
            self.fail(exc)
            return
        if replica and self.director is not None and decision is not None:
            assert decision.backend is not None
            self._route_elsewhere(self.director, decision.backend)
            return
        units, tail = split_units(self._queued)
        self._reject_unit(units[0] if units else tail, sqlstate.CONNECTION_FAILURE, exc.message)
        self._pump()

    async def _attach(self, decided: Decision | None) -> None:
        """The waiting part of attaching (see ``_start_attach``)."""
        ok, found = await self._attach_step(self._server_for_queue(decided))
        if not ok or found is None:
            return
        server, count = found
        if server is None:  # the unit was answered with an error
            self._pump()
            return
        self._begin(server, count)

    def _begin(self, server: ServerConnection, count: int) -> None:
        """Link ``server`` and send it the first ``count`` queued messages."""
        server.link(self)  # type: ignore[arg-type]  # Dispatch is mixed into a Peer
        queued = self._queued
        if count == len(queued):  # the usual case: everything queued goes
            frames, self._queued = queued, []
        else:
            frames = queued[:count]
            del queued[:count]
        decision = self._decision
        # Only an answer that ends with ReadyForQuery can be held until it is safe: a unit
        # ended by Flush (a prepare, say) leaves the client waiting mid-answer.
        ends = bool(frames) and ends_unit(frames[-1][0])
        if decision is not None and decision.replica and not self._retried and ends:
            self._holding = []
            self._inflight = frames
            server.watching = True
        if self._deferred is not None:
            self._send_deferred(server)
        self._send(frames)

    def _prefix(
        self, decision: Decision | None, units: list[list[Frame]], first: list[Frame]
    ) -> int:
        """How many queued messages go with this decision: all of them to the writer; to
        a replica only the leading run of read units."""
        if decision is None or not decision.replica:
            return len(self._queued)
        return max(self._read_prefix(units), len(first))

    async def _server_for_queue(
        self, decided: Decision | None
    ) -> tuple[ServerConnection | None, int]:
        units, tail = split_units(self._queued)
        first = units[0] if units else tail
        if not self._routing():
            self._decision = None
            pool = self._pool_on(self._writer_name())
            try:
                return await self._acquire_on(pool), len(self._queued)
            except BackendUnavailable as exc:
                return self._reject_unit(first, exc.sqlstate, exc.message)
        for attempt in range(2):
            try:
                decision = decided if decided is not None else await self._route(first)
            except InvalidLsn as exc:
                return self._reject_unit(first, sqlstate.INVALID_TEXT_REPRESENTATION, str(exc))
            decided = None
            if decision.wait:
                waited = await self._wait_for_replica(decision)
                if waited is not None:
                    server, self._decision = waited
                    return server, self._prefix(self._decision, units, first)
            self._decision = decision
            if decision.backend is None:
                return self._reject_unit(first, _unit_error_code(decision), decision.error or "")
            try:
                server = await self._acquire_on(self._pool_on(decision.backend))
            except (BackendUnavailable, ServerError) as exc:
                if isinstance(exc, ServerError) and not decision.replica:
                    raise  # the primary refused this client's login: its own error
                if not decision.replica or attempt:
                    # The session goes on: the next unit may well be a read a replica takes.
                    return self._reject_unit(first, sqlstate.CONNECTION_FAILURE, exc.message)
                assert self.director is not None
                self.director.suspect(decision.backend)  # refused: try elsewhere, once
                continue
            return server, self._prefix(decision, units, first)
        raise AssertionError("unreachable")

    async def _wait_for_replica(
        self, decision: Decision
    ) -> tuple[ServerConnection, Decision] | None:
        """on_stale wait: poll the freshest replica's replay LSN on the connection that
        will run the read, up to the wait timeout; None means use the writer."""
        director = self.director
        assert director is not None and decision.required_lsn is not None
        started = monotonic()
        deadline = started + decision.wait_timeout
        name = director.wait_candidate(decision)
        pool = self._pool_on(name)
        try:
            async with asyncio.timeout(max(0.0, deadline - monotonic())):
                server = await self._acquire(pool)
        except TimeoutError:  # its pool is busy: not a sign of trouble with the replica
            return None
        except ProxyError:
            director.suspect(name)
            return None
        pause = 0.001
        try:
            while True:
                # A poll may end one probe interval past the deadline, not more: a
                # replica that stops answering must not hold the read.
                bound = deadline - monotonic() + director.monitor.interval
                try:
                    async with asyncio.timeout(max(bound, 0.001)):
                        result = await server.query(REPLAY_SQL)
                except TimeoutError:
                    self.server = None
                    pool.release(server, reusable=False)
                    director.waited(monotonic() - started, caught_up=False)
                    return None
                value = result.rows[0][0] if result.rows else None
                if value is not None and parse_lsn(value.decode()) >= decision.required_lsn:
                    break
                now = monotonic()
                if now >= deadline:
                    pool.release(server, reusable=True, reset=False)
                    self.server = None
                    director.waited(monotonic() - started, caught_up=False)
                    return None
                await asyncio.sleep(min(pause, deadline - now))
                pause = min(pause * 2, 0.02)
        except ProxyError:
            self.server = None
            director.suspect(name)
            return None
        director.waited(monotonic() - started, caught_up=True)
        self.pool = pool
        self.loads.started(name)
        return server, replace(decision, backend=name, replica=True, fallback=False, wait=False)

    def _read_prefix(self, units: list[list[Frame]]) -> int:
        """How many queued messages may go to a replica: the leading run of read units."""
        assert self.planner is not None
        count = 0
        for index, unit in enumerate(units):
            if index and self.planner.plan(unit).kind != "read":
                break
            count += len(unit)
        return count

    def _reject_unit(self, unit: list[Frame], code: str, message: str) -> tuple[None, int]:
        """Answer ``unit`` with an ERROR (the session goes on) and drop it."""
        del self._queued[: len(unit)]
        syncs = sum(1 for tag, _ in unit if ends_unit(tag)) or 1
        self.send(_error(code, message, self.tx_status) * syncs)
        if self.tx_status == "T":  # behind a deferred BEGIN: its transaction failed
            self.tx_status = "E"
        return None, 0

    async def _acquire_on(self, pool: Pool) -> ServerConnection:
        server = await self._acquire(pool)
        self.pool = pool
        self.loads.started(server.backend.name)
        return server

    def _writer_name(self) -> str:
        return self.loads.writer().name

    # ---------------------------------------------------------------- sending

    def _send(self, frames: list[Frame]) -> None:
        server = self.server
        assert server is not None and self.forwarder is not None
        now = monotonic()
        if not self._request_started:
            self._request_started = now
        if not self._xact_started:
            self._xact_started = now
        self.last_request_at = now
        try:
            data = self._translate(frames, server)
        except Terminate as end:
            if end.data:
                server.send(end.data)
            self.close("client sent Terminate")
            return
        if data:
            server.send(data)
        if frames:
            self._unit_open = not ends_unit(frames[-1][0])

    # ---------------------------------------------------------------- holding a replica read

    def server_event(self, server: ServerConnection, tag: str, body: bytes) -> bool:
        """Called for each reply while a replica read is held; False stops the calls."""
        if tag in _PREAMBLE:
            return True
        if self._deferred is not None and self._deferred.answering(server.tracker):
            return True  # the BEGIN sent ahead of the held unit: its answer is swallowed
        if tag == "E" and self._retry_error is None:
            error = be.ErrorResponse.decode(body)
            if error.sqlstate in _RETRYABLE:
                self._retry_error = error
                return True
        if self._retry_error is not None:
            return True  # discard everything up to ReadyForQuery
        self._flush_hold()
        return False

    def _flush_hold(self) -> None:
        held, self._holding = self._holding, None
        self._held_bytes = 0
        self._inflight = []
        self._deferred = None  # no retry now: a BEGIN sent ahead stays where it went
        if self.server is not None:
            self.server.watching = False
        if held:
            self.send(b"".join(held))

    def _hold(self, data: bytes) -> bool:
        """True when ``data`` was taken (held or discarded) instead of sent."""
        if self._holding is None:
            return False
        if self._retry_error is None:
            self._holding.append(data)
            self._held_bytes += len(data)
            if self._held_bytes > MAX_HELD:  # too much to keep for a retry: let it go
                self._flush_hold()
        return True

    def _retry(self, server: ServerConnection | None, why: str, writer_only: bool) -> None:
        """Send the held unit again elsewhere; the client never saw the failure."""
        assert self.director is not None
        frames, self._inflight = self._inflight, []
        self._holding = None
        self._held_bytes = 0
        self._retry_error = None
        self._retried = True
        self._force_writer = writer_only
        if server is not None:
            server.watching = False
            self.loads.finished(server.backend.name)
            if not writer_only:
                self.director.suspect(server.backend.name)
            self.server = None
            assert self.pool is not None
            self.pool.release(server, reusable=server.tx_status == "I", reset=False)
        log.info("%r: read retried (%s)", self, why)
        self._queued[:0] = frames
        self._pump()

    # ---------------------------------------------------------------- replies from the server

    def server_ready(self, server: ServerConnection, status: str) -> None:
        """A ReadyForQuery came; release the server when the mode says so."""
        assert self.forwarder is not None and self.pool is not None
        if self._holding is not None and server.tracker.idle:
            error = self._retry_error
            if error is not None:
                # 25006: a write; it goes to the writer, and is learned. Otherwise (a
                # recovery conflict, a replica shutting down) any other server will do.
                wrote = error.sqlstate == sqlstate.READ_ONLY_SQL_TRANSACTION
                if wrote:
                    self._learn_writes()
                self._retry(server, f"{error.sqlstate} {error.message}", writer_only=wrote)
                return
            self._flush_hold()
        self.tx_status = status
        self.forwarder.ready(status)
        now = self._count(server, status)
        if server.tracker.idle:
            self._expect_status = status
            if status == "I" and self._tx_wrote and self._attaching is None:
                self._tx_wrote = False
                server.unlink()
                loop = asyncio.get_running_loop()
                self._attaching = loop.create_task(self._capture_now(server, status))
                return
        self._after_ready(server, status, now)

    def _after_ready(self, server: ServerConnection, status: str, now: float = 0.0) -> None:
        """Release (or keep) the server after a ReadyForQuery, then go on. ``now``: the
        monotonic clock as ``_count`` read it (0.0: read it when needed)."""
        assert self.forwarder is not None
        if self.mode == "session" or self.forwarder.pin_reason or not server.tracker.idle:
            self._pump()
            return
        if status == "I":
            self._release(server, now)
            self._retried = False
            self._force_writer = False
        elif self.mode == "statement":
            self.fail(
                FeatureNotSupported(
                    "transaction blocks are not allowed in statement pooling mode",
                    hint="use autocommit, or pool.mode transaction for this database or user",
                )
            )
            return
        self._pump()

    def _learn_writes(self) -> None:
        """A replica said 25006: those statements write; route them to the writer now on."""
        if self.director is None or self.planner is None:
            return
        units, tail = split_units(self._inflight)
        for unit in units or [tail]:
            self.director.learned_writes.update(self.planner.plan(unit).fingerprints)

    def _count(self, server: ServerConnection, status: str) -> float:
        """Count a ReadyForQuery in the pool's statistics; returns the clock reading."""
        assert self.pool is not None
        stats = self.pool.stats
        now = monotonic()
        if self._request_started:
            stats.query_count += 1
            stats.query_time += now - self._request_started
            self._request_started = 0.0 if server.tracker.idle else now
        if status == "I" and self._xact_started:
            stats.xact_count += 1
            stats.xact_time += now - self._xact_started
            self._xact_started = 0.0
        return now

    def _release(self, server: ServerConnection, now: float) -> None:
        assert self.pool is not None
        self.server = None
        self.loads.finished(server.backend.name)
        self.pool.release(server, reusable=True, reset=False, now=now)

    def server_lost(self, server: ServerConnection, reason: str) -> None:
        self.loads.finished(server.backend.name)
        self.server = None
        if self._holding is not None and not self._retried and self.director is not None:
            self.director.suspect(server.backend.name)
            self._retry(None, f"{server.backend.label} lost: {reason}", writer_only=False)
            return
        self.fail(
            ServerError(
                be.ErrorResponse.build(
                    "FATAL",
                    sqlstate.CONNECTION_FAILURE,
                    f"server connection to {server.backend.label} was lost: {reason}",
                    hint="the server may have restarted; reconnect to get a new session",
                )
            )
        )


def _unit_error_code(decision: Decision) -> str:
    """40001 when no replica was fresh enough (on_stale error); 08006 when no server can
    take the unit at all."""
    if decision.required_lsn is not None or decision.reason.startswith("replica-stale"):
        return sqlstate.SERIALIZATION_FAILURE
    return sqlstate.CONNECTION_FAILURE


def _error(code: str, message: str, status: str) -> bytes:
    return (
        be.ErrorResponse.build("ERROR", code, message).encode()
        + be.ReadyForQuery(status if status != "T" else "E").encode()
    )
