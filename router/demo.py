"""``pgrouter demo``: a local primary and replica, pgrouter in front, a visible workload.

Owns: the demo's choreography and its console output. A primary and one streaming
replica (LocalCluster) under a temporary directory; a Proxy in this process in
transaction mode with read/write splitting and a policy (``on_stale: wait``); clients that
each write a value and read it back at once. The run has three phases: normal, WAL replay
paused on the replica (``pg_wal_replay_pause()``), resumed. Every second one line shows the
replica's lag (from the proxy's monitor), where reads went and why (from the director's
counters, checked against ``inet_server_port()`` as seen by the clients), and the number of
stale reads, which must stay 0. Everything is stopped and removed on exit, on Ctrl-C and
on SIGTERM.

Must not touch: proxy internals beyond reading ``Proxy.directors[db]`` (the monitor's
snapshot and the route counters); the workload talks to pgrouter only through the wire
protocol, with psycopg, as any application would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from router.config import Settings
from router.director import Director
from router.localcluster import ClusterError, LocalCluster, libpq_dsn
from router.proxy import Proxy

DEFAULT_SECONDS = 30.0
DEFAULT_PORT = 6432
CLIENTS = 8
WAIT_TIMEOUT = "200ms"
MAX_LAG = "5s"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-pw"
MAX_ERRORS_SHOWN = 5

POLICY = f"""\
# Written by `pgrouter demo`.
version: 1
defaults:
  route: replica               # reads go to the replica ...
  consistency: read_your_writes  # ... once it has replayed the client's own last write
  on_stale: wait               # not yet? wait for it (re-checking on the replica itself)
  wait_timeout: {WAIT_TIMEOUT}          # ... at most this long, then read from the primary
  max_lag: {MAX_LAG}                  # a replica further behind is skipped without waiting
"""

UPSERT = (
    "INSERT INTO demo_kv (client, value) VALUES (%s, %s) "
    "ON CONFLICT (client) DO UPDATE SET value = EXCLUDED.value"
)
READ_BACK = "SELECT value, inet_server_port() FROM demo_kv WHERE client = %s"

# Reasons that are not about reads (the kind of a unit that must run on the primary).
_NOT_READS = frozenset({"write", "transaction", "session", "utility", "unknown", "learned-write"})


def say(text: str = "") -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------- settings


def demo_settings(cluster: LocalCluster, port: int, policy_file: Path) -> Settings:
    primary, replicas = cluster.primary, cluster.replicas
    return Settings.model_validate(
        dict(
            listen={"host": "127.0.0.1", "port": port},
            auth={
                "type": "scram-sha-256",
                "users": {
                    cluster.APP_USER: {"password": cluster.APP_PASSWORD},
                    ADMIN_USER: {"password": ADMIN_PASSWORD},
                },
                "admin_users": [ADMIN_USER],
            },
            pool={"mode": "transaction", "size": CLIENTS + 2},
            databases={
                cluster.APP_DB: {
                    "primary": {"host": primary.host, "port": primary.port},
                    "replicas": [{"host": r.host, "port": r.port} for r in replicas],
                }
            },
            monitor={"user": cluster.APP_USER},
            routing={"policy_file": str(policy_file)},
        )
    )


# --------------------------------------------------------------------------- counters


@dataclass
class Tally:
    """What the clients saw: every number here comes from the workload, not the proxy."""

    writes: int = 0
    reads: int = 0
    on_replica: int = 0  # read-backs whose inet_server_port() was the replica's
    on_primary: int = 0
    stale: int = 0  # read-backs that did not return the value just written
    errors: int = 0

    def copy(self) -> Tally:
        return Tally(**vars(self))


@dataclass
class ProxyCounts:
    """A copy of the director's route counters at one moment."""

    by_backend: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    waits: int = 0
    wait_time: float = 0.0

    @classmethod
    def of(cls, director: Director) -> ProxyCounts:
        stats = director.stats
        return cls(
            Counter(stats.by_backend), Counter(stats.by_reason), stats.waits, stats.wait_time
        )

    def minus(self, earlier: ProxyCounts) -> ProxyCounts:
        return ProxyCounts(
            self.by_backend - earlier.by_backend,
            self.by_reason - earlier.by_reason,
            self.waits - earlier.waits,
            self.wait_time - earlier.wait_time,
        )

    def replica_reads(self) -> int:
        return sum(n for name, n in self.by_backend.items() if name != "primary")

    def primary_reads(self) -> int:
        """Units the primary ran, minus those that were not reads (the writes)."""
        not_reads = sum(n for reason, n in self.by_reason.items() if reason in _NOT_READS)
        return max(0, self.by_backend["primary"] - not_reads)

    def read_reasons(self) -> str:
        parts = [f"{r} {n}" for r, n in self.by_reason.most_common() if r not in _NOT_READS]
        return ", ".join(parts) or "-"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- the demo


@dataclass
class Phase:
    name: str
    until: int  # the phase covers the seconds (previous until, until]


class Demo:
    def __init__(self, cluster: LocalCluster, proxy: Proxy, seconds: float) -> None:
        self.cluster = cluster
        self.proxy = proxy
        self.director = proxy.directors[cluster.APP_DB]
        self.replica = cluster.replicas[0]
        self.total = max(3, round(seconds))
        third = self.total / 3
        self.start_counts = self.end_counts = ProxyCounts()
        self.phases = [
            Phase("normal", max(1, round(third))),
            Phase("paused", max(2, round(2 * third))),
            Phase("resumed", self.total),
        ]
        self.tally = Tally()
        self.done = asyncio.Event()
        self.error_lines = 0
        self.max_lag_bytes = 0
        self.max_lag_seconds = 0.0
        self.replica_port = self.replica.port
        self.primary_port = cluster.primary.port

    @property
    def dsn(self) -> str:
        c = self.cluster
        return libpq_dsn(
            host="127.0.0.1",
            port=self.proxy.port,
            dbname=c.APP_DB,
            user=c.APP_USER,
            password=c.APP_PASSWORD,
            application_name="pgrouter-demo",
        )

    # ---- setup

    async def wait_for_monitor(self, timeout: float = 15.0) -> None:
        """Until the monitor has seen the primary take writes and the replica replaying."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.director.monitor.state
            replica = state.get("replica1")
            if state.writer == "primary" and replica is not None and replica.up:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"pgrouter's monitor did not see the primary and the replica within "
                    f"{timeout:g}s (writer={state.writer}, replica={replica})"
                )
            await asyncio.sleep(0.05)

    async def create_table(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS demo_kv (client int PRIMARY KEY, value int NOT NULL)"
            )

    # ---- the workload

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        # Without automatic preparation every statement is one unit of work for pgrouter,
        # so its counters and what the clients saw can be compared one to one.
        return await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, prepare_threshold=None
        )

    async def client(self, number: int, conn: psycopg.AsyncConnection[Any]) -> None:
        tally = self.tally
        async with conn:
            value = 0
            while not self.done.is_set():
                value += 1
                try:
                    await conn.execute(UPSERT, (number, value))
                    tally.writes += 1
                    cur = await conn.execute(READ_BACK, (number,))
                    row = await cur.fetchone()
                except psycopg.Error as exc:
                    tally.errors += 1
                    self.show_error(f"client {number}: {exc.sqlstate or ''} {exc}".strip())
                    if conn.closed:
                        return
                    await asyncio.sleep(0.2)
                    continue
                tally.reads += 1
                if row is None or row[0] != value:
                    tally.stale += 1
                    seen = None if row is None else row[0]
                    self.show_error(f"client {number}: STALE READ: wrote {value}, read {seen}")
                if row is not None and row[1] == self.replica_port:
                    tally.on_replica += 1
                elif row is not None and row[1] == self.primary_port:
                    tally.on_primary += 1

    def show_error(self, text: str) -> None:
        self.error_lines += 1
        if self.error_lines <= MAX_ERRORS_SHOWN:
            say(f"   ! {text}")
        elif self.error_lines == MAX_ERRORS_SHOWN + 1:
            say("   ! (more errors are counted but not shown)")

    # ---- the conductor

    async def set_replay(self, paused: bool) -> None:
        """Pause or resume WAL replay directly on the replica, as its superuser."""
        sql = "SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()"
        dsn = self.replica.dsn(self.cluster.SUPERUSER)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(sql)

    def phase_at(self, second: int) -> str:
        for phase in self.phases:
            if second <= phase.until:
                return phase.name
        return self.phases[-1].name

    def header(self) -> None:
        say(
            f"{'t':>4}  {'phase':<8} {'replica lag':>17}  {'writes/s':>8}  "
            f"{'replica reads':>13}  {'primary reads':>13}  {'stale':>5}  "
            "why (routing reasons for reads)"
        )

    def line(self, second: int, proxy: ProxyCounts, seen: Tally) -> None:
        state = self.director.monitor.state.get("replica1")
        if state is None or not state.up:
            lag = "down"
        else:
            self.max_lag_bytes = max(self.max_lag_bytes, state.lag_bytes or 0)
            self.max_lag_seconds = max(self.max_lag_seconds, state.lag_seconds or 0.0)
            seconds = "?" if state.lag_seconds is None else f"{state.lag_seconds:.2f}s"
            lag = f"{human_bytes(state.lag_bytes)} {seconds:>6}"
        replica = f"{proxy.replica_reads()} ({seen.on_replica})"
        primary = f"{proxy.primary_reads()} ({seen.on_primary})"
        say(
            f"{second:>3}s  {self.phase_at(second):<8} {lag:>17}  {seen.writes:>8}  "
            f"{replica:>13}  {primary:>13}  {self.tally.stale:>5}  {proxy.read_reasons()}"
        )

    async def run(self) -> None:
        self.header()
        loop = asyncio.get_running_loop()
        conns = await asyncio.gather(*(self.connect() for _ in range(CLIENTS)))
        self.start_counts = ProxyCounts.of(self.director)  # after the logins: reads only
        clients = [loop.create_task(self.client(n, c)) for n, c in enumerate(conns)]
        try:
            await self.conduct()
        finally:
            self.done.set()
            _, pending = await asyncio.wait(clients, timeout=10)
            for task in pending:
                task.cancel()
            results = await asyncio.gather(*clients, return_exceptions=True)
            self.end_counts = ProxyCounts.of(self.director)
        for number, result in enumerate(results):
            if isinstance(result, Exception):  # could not connect, or lost the connection
                self.tally.errors += 1
                self.show_error(f"client {number}: {result}")

    async def conduct(self) -> None:
        started = time.monotonic()
        last_counts, last_tally = self.start_counts, Tally()
        boundaries = {self.phases[0].until: True, self.phases[1].until: False}
        for second in range(1, self.total + 1):
            await asyncio.sleep(max(0.0, started + second - time.monotonic()))
            counts, tally = ProxyCounts.of(self.director), self.tally.copy()
            self.line(second, counts.minus(last_counts), _delta(tally, last_tally))
            last_counts, last_tally = counts, tally
            if second in boundaries and second < self.total:
                await self.switch_phase(second, paused=boundaries[second])

    async def switch_phase(self, second: int, *, paused: bool) -> None:
        where = f"{self.replica.host}:{self.replica.port}"
        if paused:
            say(
                f"---- {second}s: pausing WAL replay on the replica ({where}): "
                "SELECT pg_wal_replay_pause()"
            )
            say(
                "     the replica falls behind; a read-back it has not replayed must go to "
                f"the primary (after waiting up to {WAIT_TIMEOUT}; lag over {MAX_LAG}: "
                "no wait)"
            )
        else:
            say(
                f"---- {second}s: resuming WAL replay on the replica: SELECT pg_wal_replay_resume()"
            )
            say("     the replica catches up and serves the read-backs again")
        await self.set_replay(paused)

    # ---- the end

    def summary(self) -> None:
        t = self.tally
        counts = self.end_counts.minus(self.start_counts)
        share = 100.0 * t.on_replica / t.reads if t.reads else 0.0
        proxy_replica, proxy_primary = counts.replica_reads(), counts.primary_reads()
        agree = (proxy_replica, proxy_primary) == (t.on_replica, t.on_primary)
        avg_wait = 1000 * counts.wait_time / counts.waits if counts.waits else 0.0
        say()
        say(
            f"summary ({self.total}s, {CLIENTS} clients, each writing a value and reading it back):"
        )
        say(f"  writes              {t.writes}")
        say(
            f"  reads               {t.reads}: replica {t.on_replica} ({share:.0f}%), "
            f"primary {t.on_primary}   (inet_server_port() as seen by the clients)"
        )
        say(
            f"  pgrouter counted    replica {proxy_replica}, primary {proxy_primary}   "
            + ("(the same)" if agree else "(not the same as what the clients saw)")
        )
        say(f"  waits for replica   {counts.waits}, {avg_wait:.1f} ms on average")
        say(
            f"  max replica lag     {human_bytes(self.max_lag_bytes)}, "
            f"{self.max_lag_seconds:.1f}s (while replay was paused)"
        )
        say(f"  errors              {t.errors}")
        say(f"  stale reads         {t.stale}")
        if t.stale == 0 and t.errors == 0:
            say(
                "result: OK, no stale reads: every read-back returned the value its client "
                "had just written"
            )
        else:
            say(f"result: FAILED ({t.stale} stale reads, {t.errors} errors)")


def _delta(now: Tally, before: Tally) -> Tally:
    return Tally(**{k: getattr(now, k) - getattr(before, k) for k in vars(now)})


def connect_lines(cluster: LocalCluster, port: int) -> list[str]:
    c = cluster
    return [
        f'  PGPASSWORD={c.APP_PASSWORD} psql "host=127.0.0.1 port={port} '
        f'dbname={c.APP_DB} user={c.APP_USER}"',
        f'  PGPASSWORD={ADMIN_PASSWORD} psql "host=127.0.0.1 port={port} '
        f"dbname=pgrouter user={ADMIN_USER}\" -c 'SHOW POOLS'   # admin console",
    ]


# --------------------------------------------------------------------------- lifecycle


class _Signals:
    """SIGINT / SIGTERM cancel the demo's main task once; cleanup then runs undisturbed."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._installed: list[signal.Signals] = []

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(sig, self._on_signal, sig)
                self._installed.append(sig)

    def remove(self) -> None:
        for sig in self._installed:
            self._loop.remove_signal_handler(sig)
        self._installed.clear()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.received is not None:
            say(f"\n{sig.name}: still cleaning up, one moment ...")
            return
        self.received = sig.name
        say(f"\n{sig.name}: stopping ...")
        if self._task is not None:
            self._task.cancel()

    @property
    def exit_code(self) -> int:
        return 143 if self.received == "SIGTERM" else 130


def _port_problem(port: int) -> str | None:
    """Why pgrouter could not listen on ``port`` (checked before starting PostgreSQL)."""
    if port == 0:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


async def _in_thread(fn: Callable[[], Any]) -> Any:
    """Run blocking ``fn`` in a thread; if cancelled meanwhile, let it finish, then re-raise."""
    future = asyncio.get_running_loop().run_in_executor(None, fn)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise


async def run_demo(
    seconds: float = DEFAULT_SECONDS, port: int = DEFAULT_PORT, keep_running: bool = False
) -> int:
    """The whole demo; returns the exit status (0: no stale reads and no errors)."""
    problem = _port_problem(port)
    if problem is not None:
        say(
            f"pgrouter cannot listen on 127.0.0.1:{port}: {problem}; "
            "choose another port with --port (0: any free port)"
        )
        return 1
    signals = _Signals()
    signals.install()
    base = Path(tempfile.mkdtemp(prefix="pgrouter-demo-"))
    cluster: LocalCluster | None = None
    proxy: Proxy | None = None
    try:
        cluster = LocalCluster(base / "cluster", replicas=1)
        say(f"starting a PostgreSQL primary and a streaming replica under {base} ...")
        await _in_thread(cluster.start)
        policy_file = base / "policy.yaml"
        policy_file.write_text(POLICY)
        proxy = Proxy(demo_settings(cluster, port, policy_file))
        try:
            await proxy.start()
        except OSError as exc:
            say(
                f"pgrouter cannot listen on 127.0.0.1:{port}: {exc.strerror}; "
                "choose another port with --port (0: any free port)"
            )
            return 1
        return await _run(cluster, proxy, seconds, keep_running, policy_file)
    except asyncio.CancelledError:
        return signals.exit_code
    except (ClusterError, psycopg.Error) as exc:
        say(f"pgrouter demo failed: {exc}")
        return 1
    finally:
        say("stopping pgrouter and the PostgreSQL servers, removing the temporary files ...")
        if proxy is not None:
            with contextlib.suppress(Exception):
                await proxy.stop()
        if cluster is not None:
            try:
                await _in_thread(cluster.stop)
            except ClusterError as exc:
                say(f"  {exc}")
            cluster.cleanup()
        shutil.rmtree(base, ignore_errors=True)
        signals.remove()


async def _run(
    cluster: LocalCluster, proxy: Proxy, seconds: float, keep_running: bool, policy: Path
) -> int:
    say(f"  primary   127.0.0.1:{cluster.primary.port}")
    say(f"  replica   127.0.0.1:{cluster.replicas[0].port}")
    say(f"  pgrouter  127.0.0.1:{proxy.port}   (transaction pooling, reads to the replica)")
    say(f"  policy    {policy}:")
    for text in POLICY.splitlines()[1:]:
        say(f"    {text}")
    demo = Demo(cluster, proxy, seconds)
    await demo.wait_for_monitor()
    await demo.create_table()
    p1, p2 = demo.phases[0].until, demo.phases[1].until
    say()
    say(
        f"{CLIENTS} clients each write a value and read it back at once, for {demo.total}s: "
        f"normal until {p1}s, replay paused until {p2}s, then resumed."
    )
    say(
        "replica / primary reads: counted by pgrouter, (in parentheses) as seen by the "
        "clients with inet_server_port()."
    )
    say(
        "why: replica-stale:min_lsn = the monitor's last view of the replica (probed every "
        "100ms) was behind the client's write, so pgrouter waited;"
    )
    say(
        "     waited-for-replica = the replica caught up within the wait and served the read; "
        "replica-stale:lag = lag over max_lag, straight to the primary."
    )
    say()
    await demo.run()
    demo.summary()
    ok = demo.tally.stale == 0 and demo.tally.errors == 0
    say()
    if not keep_running:
        say("connect while it runs (`pgrouter demo --keep-running` keeps it up afterwards):")
        for text in connect_lines(cluster, proxy.port):
            say(text)
        return 0 if ok else 1
    say("pgrouter, the primary and the replica keep running; connect with:")
    for text in connect_lines(cluster, proxy.port):
        say(text)
    say("Ctrl-C (or SIGTERM) stops them and removes the temporary files.")
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()
    return 0 if ok else 1


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, for ``pgrouter demo`` and ``python -m router.demo``."""
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help="how long the workload runs; a third each: normal, replay paused, resumed",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="pgrouter's port (0: any free port)"
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the workload, keep everything up for psql until Ctrl-C",
    )


def main(argv: list[str] | None = None) -> int:
    from router.cli import run_loop, setup_logging

    parser = argparse.ArgumentParser(prog="pgrouter demo", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging("warning")
    return int(
        run_loop(run_demo(seconds=args.seconds, port=args.port, keep_running=args.keep_running))
    )


if __name__ == "__main__":
    sys.exit(main())
