"""Python cost of one transaction through pgrouter, without sockets or servers.

Owns: a microbenchmark of the proxy's per-transaction code path. A ClientSession and a
ServerConnection are wired to in-memory transports; each iteration feeds the client's
request (select-only, as pgbench -S sends it) and the server's canned answer, so the
figure is pgrouter's own CPU time per transaction: no syscalls, no PostgreSQL, no load
generator, and so far steadier than an end-to-end run on a shared machine. The
end-to-end comparison with PgBouncer stays in benchmarks/run.py.
Must not touch: pgrouter's code (it drives the public objects as the event loop would).

    python benchmarks/hotpath.py [--iterations N] [--repeats R] [--cases a,b] [--pairs N]

Cases: simple (Query), extended (unnamed Parse/Bind/Describe/Execute/Sync, pgbench -M
extended), prepared (Bind/Execute/Sync of a named statement, pgbench -M prepared), and
waiting (two clients on one server connection, so every request waits in the pool's
queue and is handed the connection another client released: pgbench -c 50 on pool 20),
routed (simple, with a replica that is up and caught up: every read is classified,
decided and sent to the replica's connection, as pgbench -S through read routing), and
write / capture (an autocommit UPDATE, extended protocol, on a database with a replica:
classified as a write and sent to the primary; ``capture`` also pipelines the write-LSN
FunctionCall, whose answer comes as a second chunk as PostgreSQL sends it, and hands the
client its ``pgrouter.write_lsn``; ``write`` is the same with ``capture_write_lsn: false``,
so the difference is the capture's cost in the proxy).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop

from protocol import backend as be
from protocol import frontend as fe
from router.backends import Backend
from router.client import ClientSession
from router.config import Settings
from router.monitor import BackendState, ClusterState
from router.proxy import Proxy
from router.server import ServerConnection

SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
SIMPLE_SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"  # a new aid each time
WRITE_SQL = "UPDATE rw_bench SET v = $1 WHERE id = $2"


class Sink:
    """An in-memory transport: remembers what was written last."""

    def __init__(self) -> None:
        self.last = b""
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.last = data
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _settings(routed: bool, capture: bool = True) -> Settings:
    database: dict[str, Any] = {"primary": {"host": "127.0.0.1", "port": 1}}
    if routed:
        database["replicas"] = [{"host": "127.0.0.1", "port": 2}]
        database["capture_write_lsn"] = capture
    return Settings.model_validate(
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "auth": {"type": "trust"},
            "pool": {"mode": "transaction", "size": 1},
            "databases": {"bench": database},
            "log_level": "warning",
        }
    )


def _replica_up(proxy: Proxy) -> None:
    """The monitor's view: primary and replica up, the replica caught up and fresh."""
    monitor = proxy.directors["bench"].monitor
    seen = time.monotonic() + 1e6  # fresh for the whole run: no probe runs here
    states = tuple(
        BackendState(s.backend, up=True, in_recovery=s.name != "primary", replay_lsn=100,
                     insert_lsn=100, lag_bytes=0, lag_seconds=0.0, checked_at=seen)
        for s in monitor.state.backends
    )  # fmt: skip
    monitor.state = ClusterState("bench", states, "primary", 100, seen)


def _server(proxy: Proxy, backend_name: str = "primary") -> ServerConnection:
    pool = proxy.pool_on("bench", "bench", backend_name)
    backend: Backend = pool.backend
    server = ServerConnection(backend, "bench", 1 << 20)
    server.connection_made(Sink())  # type: ignore[arg-type]
    server.params = {"client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC"}
    server.defaults = dict(server.params)
    server.defaults_key = hash(tuple(sorted(server.defaults.items())))
    server._enter_relay()
    pool.budget.count += 1
    pool._checkout(server)
    pool.release(server, reusable=True, reset=False)
    return server


async def _client(proxy: Proxy) -> ClientSession:
    client = ClientSession(proxy)
    client.connection_made(Sink())  # type: ignore[arg-type]
    assert client._login_task is not None
    client._login_task.cancel()
    client._startup_reader = None  # as if its StartupMessage had come
    client.user = client.database = "bench"
    await client._link(None)
    return client


def _answers() -> dict[str, tuple[bytes, bytes]]:
    """(client request, server answer) per case: one row of one int4 column."""
    desc = be.RowDescription((be.FieldDescription("abalance", type_oid=23, type_size=4),)).encode()
    data = be.DataRow((b"0",)).encode()
    done = be.CommandComplete("SELECT 1").encode()
    ready = be.ReadyForQuery("I").encode()
    bind = fe.Bind("", "", (), (b"4242",), ()).encode()
    return {
        "simple": (b"", desc + data + done + ready),
        "extended": (
            fe.Parse("", SQL, ()).encode()
            + bind
            + fe.Describe("P", "").encode()
            + fe.Execute("").encode()
            + fe.Sync().encode(),
            be.ParseComplete().encode() + be.BindComplete().encode() + desc + data + done + ready,
        ),
        "write": (
            fe.Parse("", WRITE_SQL, ()).encode()
            + fe.Bind("", "", (), (b"7", b"1"), ()).encode()
            + fe.Execute("").encode()
            + fe.Sync().encode(),
            be.ParseComplete().encode()
            + be.BindComplete().encode()
            + be.CommandComplete("UPDATE 1").encode()
            + ready,
        ),
        "prepared": (
            fe.Bind("", "P0_1", (), (b"4242",), ()).encode()
            + fe.Execute("").encode()
            + fe.Sync().encode(),
            be.BindComplete().encode() + data + done + ready,
        ),
    }


async def _measure(case: str, iterations: int, pairs: int = 1) -> float:
    routed = case in ("routed", "write", "capture")
    proxy = Proxy(_settings(routed, capture=case == "capture"))
    server = _server(proxy)
    if pairs > 1:
        return await _measure_pairs(
            proxy, case, iterations, [server] + [_server(proxy) for _ in range(pairs - 1)]
        )
    if routed:
        _replica_up(proxy)
    if case == "routed":  # reads go to the replica's connection
        server = _server(proxy, "replica1")
    clients = [await _client(proxy) for _ in range(2 if case == "waiting" else 1)]
    shape = {"waiting": "simple", "routed": "simple", "capture": "write"}.get(case, case)
    request, answer = _answers()[shape]
    # The capture's answer: PostgreSQL flushes at each ReadyForQuery, so it is a chunk
    # of its own after the write's.
    lsn_answer = be.FunctionCallResponse(b"0/3000060").encode() + be.ReadyForQuery("I").encode()
    queries = [fe.Query(SIMPLE_SQL.format(aid)).encode() for aid in range(1, 100001)]
    if case == "prepared":  # the client prepares once, as pgbench -M prepared does
        prepare = fe.Parse("P0_1", SQL, ()).encode() + fe.Sync().encode()
        clients[0].data_received(prepare)
        server.data_received(be.ParseComplete().encode() + be.ReadyForQuery("I").encode())
    sink = server.transport
    assert isinstance(sink, Sink)
    for client in clients:  # the first transaction brings the connection's settings in line
        client.data_received(request or queries[-1])
        await asyncio.sleep(0.01)
        server.data_received(answer)
        if case == "capture":
            server.data_received(lsn_answer)
    sink.writes = 0
    started = time.process_time()
    if case == "waiting":  # a holds the server; b waits; a's answer hands it to b
        a, b = clients
        a.data_received(queries[0])
        for i in range(iterations // 2):
            b.data_received(queries[2 * i + 1])
            server.data_received(answer)
            a.data_received(queries[2 * i + 2])
            server.data_received(answer)
        server.data_received(answer)
    elif case == "capture":
        client = clients[0]
        for _ in range(iterations):
            client.data_received(request)
            server.data_received(answer)
            server.data_received(lsn_answer)
    else:
        client = clients[0]
        for i in range(iterations):
            client.data_received(request or queries[i])
            server.data_received(answer)
    elapsed = time.process_time() - started
    if sink.writes < iterations:
        raise SystemExit(f"{case}: the server saw {sink.writes} writes for {iterations} requests")
    told = clients[0].transport.last
    if case == "capture" and b"pgrouter.write_lsn\x000/3000060" not in told:
        raise SystemExit(f"capture: the client was not told its write LSN: {told!r}")
    for client in clients:
        client.close("done")
    return elapsed / iterations * 1e6


async def _measure_pairs(
    proxy: Proxy, case: str, iterations: int, servers: list[ServerConnection]
) -> float:
    """simple or extended with as many clients as server connections, taken in turn: the
    same path with a larger working set (each client finds its own server linked)."""
    if case not in ("simple", "extended"):
        raise SystemExit("--pairs applies to the simple and extended cases")
    clients = [await _client(proxy) for _ in servers]
    request, answer = _answers()[case]
    queries = [fe.Query(SIMPLE_SQL.format(aid)).encode() for aid in range(1, 100001)]
    for client in clients:  # bring each connection's settings in line; link them all
        client.data_received(request or queries[-1])
        await asyncio.sleep(0.01)
        linked = client.server
        assert linked is not None
        linked.data_received(answer)
    sinks = [server.transport for server in servers]
    for sink in sinks:
        assert isinstance(sink, Sink)
        sink.writes = 0
    started = time.process_time()
    for i in range(iterations):
        client = clients[i % len(clients)]
        client.data_received(request or queries[i])
        linked = client.server
        assert linked is not None
        linked.data_received(answer)
    elapsed = time.process_time() - started
    writes = 0
    for sink in sinks:
        assert isinstance(sink, Sink)
        writes += sink.writes
    if writes < iterations:
        raise SystemExit(f"{case}: the servers saw {writes} writes for {iterations} requests")
    for client in clients:
        client.close("done")
    return elapsed / iterations * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=20000, help="at most 99999")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--pairs",
        type=int,
        default=1,
        help="simple and extended only: this many clients and server connections, in turn",
    )
    parser.add_argument("--cases", default="simple,extended,prepared,waiting,routed,write,capture")
    args = parser.parse_args()
    print("case        us/txn: median     min   runs")
    for case in args.cases.split(","):
        runs = [
            uvloop.run(_measure(case, args.iterations, args.pairs)) for _ in range(args.repeats)
        ]
        shown = " ".join(f"{r:.1f}" for r in runs)
        print(f"{case:<10} {statistics.median(runs):14.2f} {min(runs):7.2f}   {shown}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
