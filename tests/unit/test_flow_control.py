"""router.server flow control across links: a server connection reads only while the
client it relays to can take more, and a client is read only while its server can take
more. The pause belongs to the link, not to the connection: when a server connection
goes back to the pool in either state, it reads again and its last client is read again,
and a client that is still backed up holds back the next server it is linked to.
(A server left paused in the pool answered its next query into a socket nobody read:
the client waited forever. Seen in the COPY end-to-end tests, compiled build.)"""

from __future__ import annotations

from protocol import backend as be
from router.backends import Backend
from router.server import Mode, ServerConnection
from router.tracker import Request

ROW = be.DataRow((b"x" * 100,)).encode()
END = be.CommandComplete("SELECT 1").encode() + be.ReadyForQuery("I").encode()


class Transport:
    """The part of a transport the relay uses; records reading and what was written."""

    def __init__(self) -> None:
        self.reading = True
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Client:
    """A client as the relay sees it: its socket backs up on the first write (as a
    client that reads slower than the server answers), and it gives the server back to
    the pool at ReadyForQuery, as transaction pooling does."""

    def __init__(self, backs_up: bool = True) -> None:
        self.transport = Transport()
        self.writing_paused = False
        self.server: ServerConnection | None = None
        self.backs_up = backs_up
        self.ready: list[str] = []

    def send(self, data: bytes) -> None:
        self.transport.write(data)
        if self.backs_up and not self.writing_paused:
            self.pause_writing()  # what the transport does past its high-water mark

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.server is not None:
            self.server.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.server is not None:
            self.server.resume_reading()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def server_ready(self, server: ServerConnection, status: str) -> None:
        self.ready.append(status)
        self.server = None
        server.unlink()  # released

    def server_parameter(self, name: str, value: str) -> None:
        pass

    def attach(self, server: ServerConnection) -> None:
        self.server = server
        server.link(self)  # type: ignore[arg-type]


def server_connection() -> tuple[ServerConnection, Transport]:
    backend = Backend("primary", "primary", "127.0.0.1", 5432, "app")
    server = ServerConnection(backend, "app", 1 << 20)
    transport = Transport()
    server.connection_made(transport)  # type: ignore[arg-type]
    server.mode = Mode.READY
    return server, transport


def run_query(client: Client, server: ServerConnection, answer: bytes) -> None:
    client.attach(server)
    server.tracker.expect(Request("Q"))
    server.data_received(answer)


def test_a_server_released_while_its_client_is_backed_up_reads_again() -> None:
    server, transport = server_connection()
    client = Client()
    run_query(client, server, ROW * 3 + END)  # the answer's end backs the client up
    assert client.ready == ["I"] and client.writing_paused
    assert transport.reading, "the server went back to the pool not reading"
    # The client drains later: nothing to resume any more, and nothing breaks.
    client.resume_writing()
    assert transport.reading


def test_the_next_client_of_a_server_gets_its_answer() -> None:
    server, transport = server_connection()
    run_query(Client(), server, ROW + END)
    nextone = Client(backs_up=False)
    run_query(nextone, server, ROW + END)
    assert nextone.ready == ["I"]
    assert b"".join(nextone.transport.written) == ROW + END
    assert transport.reading


def test_a_backed_up_client_holds_back_the_next_server_it_is_linked_to() -> None:
    server, transport = server_connection()
    client = Client()
    client.writing_paused = True  # its last answer is still in its socket
    client.attach(server)
    assert not transport.reading
    client.resume_writing()
    assert transport.reading


def test_a_client_held_back_by_a_full_server_is_read_again_after_the_release() -> None:
    server, _ = server_connection()
    client = Client(backs_up=False)
    client.attach(server)
    server.pause_writing()  # the server's socket is full: stop reading the client
    assert not client.transport.reading
    server.tracker.expect(Request("Q"))
    server.data_received(END)  # released while still backed up
    assert client.transport.reading, "the client stays unread after its server left"
    # The next client of that server is held back until the server drains.
    nextone = Client(backs_up=False)
    nextone.attach(server)
    assert not nextone.transport.reading
    server.resume_writing()
    assert nextone.transport.reading


def test_reading_is_resumed_only_where_the_link_paused_it() -> None:
    """resume_reading without a matching pause leaves the transport alone (the proxy's
    own queries pause nothing), and a pause survives a relink to a backed-up client."""
    server, transport = server_connection()
    server.resume_reading()
    assert transport.reading
    client = Client()
    client.attach(server)
    server.pause_reading()
    server.unlink()
    assert transport.reading
    client.writing_paused = True
    client.attach(server)
    assert not transport.reading

