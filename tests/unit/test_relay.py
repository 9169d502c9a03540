"""router.server relaying a captured write: while the write's ReadyForQuery is withheld
for the proxy's own statement, what came with it waits too, so the client gets the end of
the answer in one write (one wakeup), and one ReadyForQuery notice reaches the session.
Byte vectors fed whole, one byte at a time, and split at every point."""

from __future__ import annotations

import pytest

from protocol import backend as be
from router.backends import Backend
from router.server import Mode, ServerConnection
from router.tracker import SWALLOW, Request

WRITE = be.BindComplete().encode() + be.CommandComplete("UPDATE 1").encode()
READY = be.ReadyForQuery("I").encode()
CAPTURED = (
    be.BindComplete().encode()
    + be.DataRow((b"0/3000060",)).encode()
    + be.CommandComplete("SELECT 1").encode()
    + READY
)
TOKEN = be.ParameterStatus("pgrouter.write_lsn", "0/3000060").encode()


class Client:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.ready: list[str] = []
        self.writing_paused = False

    def send(self, data: bytes) -> None:
        self.writes.append(data)

    def server_ready(self, server: ServerConnection, status: str) -> None:
        self.ready.append(status)

    def server_parameter(self, name: str, value: str) -> None:
        pass


def captured_write() -> tuple[ServerConnection, Client, list[bytes]]:
    backend = Backend("primary", "primary", "127.0.0.1", 5432, "app")
    server = ServerConnection(backend, "app", 1 << 20)
    server.mode = Mode.READY
    client = Client()
    server.link(client)  # type: ignore[arg-type]
    rows: list[bytes] = []
    tracker = server.tracker
    for kind in "BES":
        tracker.expect(Request(kind))
    assert tracker.hold_last_ready()
    tracker.expect(
        Request("S", SWALLOW, on_row=rows.append, finish=lambda status: TOKEN, own=True)
    )
    return server, client, rows


def chunkings(data: bytes) -> list[list[bytes]]:
    whole = [[data]]
    bytewise = [[data[i : i + 1] for i in range(len(data))]]
    splits = [[data[:i], data[i:]] for i in range(1, len(data))]
    return whole + bytewise + splits


@pytest.mark.parametrize("chunks", chunkings(WRITE + READY + CAPTURED))
def test_the_token_precedes_the_ready_however_the_bytes_arrive(chunks: list[bytes]) -> None:
    server, client, rows = captured_write()
    for chunk in chunks:
        server.data_received(chunk)
    assert b"".join(client.writes) == WRITE + TOKEN + READY
    assert client.writes[-1].endswith(TOKEN + READY)  # the rest went as it came
    assert client.ready == ["I"]
    assert len(rows) == 1 and server.tracker.idle


def test_nothing_reaches_the_client_while_the_ready_is_withheld() -> None:
    server, client, _ = captured_write()
    server.data_received(WRITE + READY)
    assert (client.writes, client.ready) == ([], [])
    server.data_received(CAPTURED)
    assert client.writes == [WRITE + TOKEN + READY] and client.ready == ["I"]
