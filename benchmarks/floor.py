"""The floor: the least work Python and uvloop can do to pool ``pgbench -S`` by transaction.

Owns: a reference process for the pooling benchmark, never a pooler to run. It opens
``--pool-size`` server connections at start (SCRAM, through benchmarks/idleconns), lets any
client in without authentication and answers its startup with a canned reply, then per
client message: take an idle server connection (or queue), write the bytes through; per
server answer: write the bytes back, and when they end with ReadyForQuery('I') release
the connection to the next queued client. No protocol parsing beyond that last check, no
pipelining awareness, no session state, no statistics, no routing: every feature a real
pooler needs is missing, so its CPU time per transaction is what the event loop and the
socket calls cost on their own. The pooling benchmark runs it beside PgBouncer and
pgrouter (``--with-floor``): pgrouter's distance from it is what pgrouter's own code
costs, and the floor's distance from PgBouncer is what Python and uvloop cost.
Must not touch: pgrouter's code (none of it is imported but the benchmarks' login helper).

    python benchmarks/floor.py --port P --server-port Q --user U --password W --dbname D
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop

from benchmarks.idleconns import Conn, login

READY_IDLE = b"Z\x00\x00\x00\x05I"
SSL_REQUEST = 80877103
_HEADER = struct.Struct("!II")


def _status(name: bytes, value: bytes) -> bytes:
    body = name + b"\0" + value + b"\0"
    return b"S" + struct.pack("!I", 4 + len(body)) + body


# AuthenticationOk, what libpq and pgbench read at startup, BackendKeyData, ReadyForQuery.
STARTUP_REPLY = (
    b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    + _status(b"server_version", b"15.0")
    + _status(b"client_encoding", b"UTF8")
    + _status(b"standard_conforming_strings", b"on")
    + _status(b"integer_datetimes", b"on")
    + b"K"
    + struct.pack("!III", 12, 1, 1)
    + READY_IDLE
)


class Floor:
    """The pool: idle server connections and clients waiting for one."""

    def __init__(self) -> None:
        self.idle: list[Server] = []
        self.waiting: list[tuple[Client, bytes]] = []
        self.logins: list[Conn] = []  # their StreamWriters close the sockets when freed


class Server:
    """A server connection; its transport was a StreamWriter's, taken over."""

    def __init__(self, floor: Floor, transport: Any) -> None:
        self.floor = floor
        self.transport = transport
        self.write = transport.write
        self.client: Client | None = None

    def connection_made(self, transport: Any) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        print(f"floor: a server connection was lost: {exc}", file=sys.stderr, flush=True)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def eof_received(self) -> bool:
        return False

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None:
            client.write(data)
        if data[-6:] != READY_IDLE:
            return
        if client is not None:
            client.server = None
        elif self in self.floor.idle:
            return  # a notice on an idle connection
        floor = self.floor
        if floor.waiting:
            nxt, pending = floor.waiting.pop(0)
            nxt.server, self.client = self, nxt
            self.write(pending)
        else:
            self.client = None
            floor.idle.append(self)


class Client(asyncio.Protocol):
    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.server: Server | None = None
        self.started = False
        self.buf = b""
        self.write: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.write = transport.write

    def connection_lost(self, exc: Exception | None) -> None:
        floor = self.floor
        floor.waiting = [(c, d) for c, d in floor.waiting if c is not self]
        if self.server is not None:  # left mid-transaction: released when it is answered
            self.server.client = None

    def data_received(self, data: bytes) -> None:
        if not self.started:
            self._startup(data)
            return
        if data[:1] == b"X":
            self.transport.close()
            return
        server = self.server
        if server is None:
            floor = self.floor
            if not floor.idle:
                floor.waiting.append((self, data))
                return
            server = floor.idle.pop()
            server.client, self.server = self, server
        server.write(data)

    def _startup(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 8:
            length, code = _HEADER.unpack_from(self.buf)
            if len(self.buf) < length:
                return
            self.buf = self.buf[length:]
            if code == SSL_REQUEST:
                self.write(b"N")
                continue
            self.started = True
            self.write(STARTUP_REPLY)
            return


async def serve(args: argparse.Namespace) -> None:
    floor = Floor()
    for _ in range(args.pool_size):
        conn = await login("127.0.0.1", args.server_port, args.user, args.password, args.dbname)
        floor.logins.append(conn)
        transport = conn.writer.transport
        server = Server(floor, transport)
        transport.set_protocol(server)  # type: ignore[arg-type]
        floor.idle.append(server)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: Client(floor), "127.0.0.1", args.port, backlog=4096)
    async with listener:
        await asyncio.Event().wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--dbname", required=True)
    parser.add_argument("--pool-size", type=int, default=20)
    uvloop.run(serve(parser.parse_args()))  # until SIGTERM
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
