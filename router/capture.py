"""Write LSNs: telling a client where its writes ended in the WAL.

Owns: deciding, per unit run on the writer, whether it may write; pipelining
``pg_current_wal_insert_lsn()`` behind the unit expected to end a writing transaction
(its ReadyForQuery is withheld until the answer, so the ``pgrouter.write_lsn``
ParameterStatus arrives first, with no extra round trip); and, when that prediction
missed, asking on the same connection before it goes back to the pool. With
``capture_write_lsn: false`` writes are still noticed (``sticky_after_write`` needs their
time) but the primary is never asked.
Must not touch: routing and queueing (dispatch.py), the reply bookkeeping (tracker.py).
The client's ``last_write_lsn`` lives on its Forwarder, where routing reads it.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Final

from protocol import frontend as fe
from protocol._wire import BodyReader, cstr, frame
from router.errors import ProxyError
from router.lsn import InvalidLsn, format_lsn, parse_lsn
from router.tracker import SWALLOW, Request
from router.units import split_units, text_effects, unit_text

if TYPE_CHECKING:
    import asyncio

    from router.director import Director
    from router.forward import Forwarder
    from router.pool import Waiter
    from router.server import ServerConnection
    from router.units import Planner

Frame = tuple[str, bytes]
WRITE_LSN_PARAMETER: Final = "pgrouter.write_lsn"
CAPTURE_SQL: Final = "SELECT pg_catalog.pg_current_wal_insert_lsn()"
# The capture itself is a FunctionCall (the protocol's fast path) of that function by OID:
# no parse, plan or portal on the server, no statement to keep prepared per connection,
# the same in every pool mode. 2852 is pg_current_wal_insert_lsn's OID in pg_proc.dat,
# fixed since PostgreSQL 10 (where it took that name). Its text result is the LSN.
CAPTURE_FUNCTION_OID: Final = 2852
_CALL: Final = fe.FunctionCall(CAPTURE_FUNCTION_OID, (), (), 0).encode()
_STATUS_NAME: Final = cstr(WRITE_LSN_PARAMETER)


class WriteCapture:
    # _attaching: the task a client waits on before its next unit (a capture is one).
    __slots__ = (
        "_attaching",
        "_capture_lsn",
        "_capture_request",
        "_captured",
        "_expect_status",
        "_track_writes",
        "_tx_wrote",
    )
    # Provided by Dispatch / ClientSession.
    forwarder: Forwarder | None
    planner: Planner | None
    loads: Director
    _force_writer: bool
    _attaching: asyncio.Task[None] | Waiter | None

    def _init_capture(self) -> None:
        self._tx_wrote = False  # the open transaction (or pipelined units) wrote on the writer
        self._expect_status = "I"  # predicted status once the server answers all it was sent
        self._captured: int | None = None
        # Writes matter only where a replica could serve a read (this client's or,
        # through a token, another's): databases with replicas. There they are noticed
        # (_track_writes) and, unless capture_write_lsn is off, their LSN asked for.
        self._track_writes = False
        self._capture_lsn = False
        # The capture's request, the same every time (the tracker never changes it).
        self._capture_request = Request(
            "F", SWALLOW, on_row=self._captured_value, finish=self._capture_done, own=True
        )

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def _after_ready(self, server: ServerConnection, status: str, now: float = 0.0) -> None:
        raise NotImplementedError

    def _translate(self, frames: list[Frame], server: ServerConnection) -> bytes:
        """Translate for ``server``; behind a unit expected to end a transaction that
        wrote, pipeline the write-LSN query, so the token reaches the client before the
        ReadyForQuery that ends the write, without an extra round trip."""
        assert self.forwarder is not None
        if not self._track_writes or server.backend.name != self.loads.writer().name:
            return self.forwarder.translate(frames, server)
        assert self.planner is not None
        units, tail = split_units(frames)
        out: list[bytes] = []
        for unit in units:
            if self._may_write(unit):
                self._tx_wrote = True
            status, copies = text_effects(unit_text(unit, self.forwarder.statement_query))
            if status:
                self._expect_status = status
            out.append(self.forwarder.translate(unit, server))
            ends_write = self._tx_wrote and self._expect_status == "I" and not copies
            if not ends_write:
                continue
            if not self._capture_lsn:
                server.tracker.hold_last_ready(finish=self._write_ended)
            elif server.tracker.hold_last_ready():
                out.append(self._capture(server))
        if tail:
            out.append(self.forwarder.translate(tail, server))
        return b"".join(out)

    def _capture(self, server: ServerConnection) -> bytes:
        """The capture's message for ``server``: one swallowed request to the tracker,
        answered by a FunctionCallResponse and a ReadyForQuery; an error ends it without
        an LSN (a capture on the connection then follows, see _capture_now)."""
        server.tracker.expect(self._capture_request)
        return _CALL

    def _may_write(self, unit: list[Frame]) -> bool:
        """Whether a unit run on the writer may write: the classifier says so, or the
        client sent it there on purpose (a primary hint or route), or a replica refused
        it (25006: retried here, and learned), so its write LSN is captured."""
        assert self.planner is not None and self.forwarder is not None
        try:
            planned = self.planner.plan(unit)
        except InvalidLsn:
            return True
        if planned.kind in ("write", "unknown") or self._force_writer:
            return True
        if planned.hint == "primary" or self.forwarder.route == "primary":
            return True
        learned = self.loads.learned_writes
        return bool(learned) and not learned.isdisjoint(planned.fingerprints)

    def _captured_value(self, body: bytes) -> None:
        """The FunctionCallResponse: the LSN as text, or NULL. (Read as
        protocol.backend.FunctionCallResponse.decode does, without making the message
        object: that class's generated __init__ is interpreted code, and this runs per
        write.)"""
        reader = BodyReader(body, "FunctionCallResponse message")
        value = reader.value()
        reader.finish()
        self._captured = None if value is None else parse_lsn(value.decode())

    def _capture_done(self, status: str) -> bytes:
        """The pipelined capture finished; ``status`` is the client's withheld one."""
        lsn, self._captured = self._captured, None
        if status != "I" or lsn is None:
            return b""  # still in the transaction, or the query failed: capture at its end
        self._tx_wrote = False
        return self._record_write(lsn)

    def _write_ended(self, status: str) -> bytes:
        """capture_write_lsn off: the unit expected to end a writing transaction got its
        ReadyForQuery (``status``); only the time of the write is kept."""
        if status == "I":
            self._tx_wrote = False
            assert self.forwarder is not None
            self.forwarder.last_write_at = time.monotonic()
        return b""

    def _record_write(self, lsn: int) -> bytes:
        assert self.forwarder is not None
        forwarder = self.forwarder
        if forwarder.last_write_lsn is None or lsn > forwarder.last_write_lsn:
            forwarder.last_write_lsn = lsn
        forwarder.last_write_at = time.monotonic()
        # ParameterStatus(WRITE_LSN_PARAMETER, lsn), framed here for the reason above
        return frame(b"S", _STATUS_NAME + cstr(format_lsn(forwarder.last_write_lsn)))

    async def _capture_now(self, server: ServerConnection, status: str) -> None:
        """A writing transaction ended without a pipelined capture (the prediction
        missed): ask on the same connection before anything else runs on it."""
        result = None
        if self._capture_lsn:
            with contextlib.suppress(ProxyError):
                result = await server.query(CAPTURE_SQL)
        else:
            self._write_ended(status)
        self._attaching = None
        if result is not None and result.rows and result.rows[0][0] is not None:
            self.send(self._record_write(parse_lsn(result.rows[0][0].decode())))
        if server.closed or server.client is not None:
            return
        server.link(self)  # type: ignore[arg-type]  # mixed into a Peer
        self._after_ready(server, status)
