"""The consistency benchmark: read-after-write through pgrouter with two replicas.

Owns: one run on one machine: a local primary with two streaming replicas, a table with
one row per client, then a read-after-write workload (N asyncio clients on psycopg, each
looping: autocommit ``UPDATE`` of its own row to a new value, then at once ``SELECT`` of
that row with ``inet_server_port()``), interleaved over rounds against

- **direct**: the primary itself;
- **rtr-norep**: pgrouter without replicas (``replicas: []``): a pure pooler, which
  captures no write LSN (pgrouter captures only for databases that have replicas);
- **rtr-wait**: pgrouter with both replicas, ``read_your_writes`` and ``on_stale: wait``
  with a short ``wait_timeout``;
- **rtr-primary**: the same with ``on_stale: primary`` (the default);

plus a write-only loop (the same UPDATEs, no reads) against rtr-norep and rtr-primary, to
measure the write-LSN capture's cost on write latency with nothing else different (with
reads in the loop, where the reads run changes the primary's load and so the writes').
Figures: iterations/s, p50/p99 of the write and of the read that follows it, the share of
reads each server answered (from ``inet_server_port()``, cross-checked with
pg_stat_statements calls on the servers), and stale reads (a read returning an older
value than the client's own write; must be 0).
Must not touch: pgrouter's code (it runs as a subprocess from a snapshot of the source).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.pooling import _run_async, collect_env
from benchmarks.report import Table, divide, median, num
from benchmarks.routing import (
    _pct,
    calls_by_server,
    replicated_config,
    run_part,
    start_pgrouter_config,
)
from benchmarks.targets import (
    REPO_ROOT,
    Endpoint,
    ManagedProcess,
    direct_endpoint,
    snapshot_pgrouter,
)
from router.localcluster import LocalCluster, free_port

BEGIN = "<!-- consistency-results:begin (written by benchmarks/run.py --parts consistency) -->"
END = "<!-- consistency-results:end -->"
RW_TARGETS = ("direct", "rtr-norep", "rtr-wait", "rtr-primary")
WO_TARGETS = ("rtr-norep", "rtr-primary")  # write-only: capture off vs on
READ_PATTERN = "select v, inet_server_port() from rw_bench%"
WRITE_SQL = "UPDATE rw_bench SET v = %s WHERE id = %s"
READ_SQL = "SELECT v, inet_server_port() FROM rw_bench WHERE id = %s"


@dataclass
class Options:
    seconds: int = 10
    rounds: int = 3
    clients: int = 16
    pool_size: int = 20
    wait_timeout_ms: int = 200
    pgrouter_source: str = "worktree"
    results_path: Path | None = REPO_ROOT / "benchmarks" / "RESULTS.md"


@dataclass
class LoopResult:
    target: str
    mode: str  # "rw" (write then read back) or "wo" (writes only)
    round: int
    seconds: float
    iterations: int
    write_ms: list[float] = field(repr=False, default_factory=list)
    read_ms: list[float] = field(repr=False, default_factory=list)
    reads_by_port: dict[int, int] = field(default_factory=dict)
    stale: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    server_calls: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        del data["write_ms"], data["read_ms"]
        data["write_p50"] = _pct(self.write_ms, 0.5)
        data["write_p99"] = _pct(self.write_ms, 0.99)
        data["read_p50"] = _pct(self.read_ms, 0.5)
        data["read_p99"] = _pct(self.read_ms, 0.99)
        return data


@dataclass
class Run:
    options: Options
    env: dict[str, str] = field(default_factory=dict)
    loops: list[LoopResult] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    ports: dict[int, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- workload


async def _client(
    conninfo: str, row: int, start_value: int, deadline: float, with_read: bool,
    out: LoopResult,
) -> int:  # fmt: skip
    value = start_value
    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True, prepare_threshold=None)
    try:
        while time.perf_counter() < deadline:
            value += 1
            t0 = time.perf_counter()
            try:
                await conn.execute(WRITE_SQL, (value, row))
                t1 = time.perf_counter()
                if with_read:
                    cur = await conn.execute(READ_SQL, (row,))
                    got = await cur.fetchone()
                    t2 = time.perf_counter()
            except psycopg.Error as exc:
                key = f"{type(exc).__name__}: {exc}"[:160]
                out.errors[key] = out.errors.get(key, 0) + 1
                if conn.closed or conn.broken:
                    conn = await psycopg.AsyncConnection.connect(
                        conninfo, autocommit=True, prepare_threshold=None
                    )
                continue
            out.write_ms.append((t1 - t0) * 1000)
            if with_read:
                out.read_ms.append((t2 - t1) * 1000)
                if got is None or got[0] < value:
                    out.stale += 1
                if got is not None:
                    port = int(got[1])
                    out.reads_by_port[port] = out.reads_by_port.get(port, 0) + 1
            out.iterations += 1
    finally:
        await conn.close()
    return value


async def _loop(
    endpoint: Endpoint, clients: int, seconds: int, with_read: bool, values: list[int],
    out: LoopResult,
) -> None:  # fmt: skip
    conninfo = endpoint.conninfo(connect_timeout=10)
    began = time.perf_counter()
    deadline = began + seconds
    tasks = [_client(conninfo, i + 1, values[i], deadline, with_read, out) for i in range(clients)]
    done = await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 60)
    out.seconds = time.perf_counter() - began
    values[:] = list(done)


def run_loop(
    cluster: LocalCluster, endpoint: Endpoint, opts: Options, mode: str, round_no: int,
    values: list[int], seconds: int,
) -> LoopResult:  # fmt: skip
    out = LoopResult(endpoint.name, mode, round_no, 0.0, 0)
    before = calls_by_server(cluster, READ_PATTERN)
    try:
        _run_async(_loop(endpoint, opts.clients, seconds, mode == "rw", values, out))
    except Exception as exc:  # recorded; the run goes on
        out.errors[f"{type(exc).__name__}: {exc}"[:160]] = 1
    after = calls_by_server(cluster, READ_PATTERN)
    out.server_calls = {k: after[k] - before.get(k, 0) for k in after}
    return out


# --------------------------------------------------------------------------- run


def _policy(on_stale: str, wait_timeout_ms: int) -> dict[str, Any]:
    return {
        "version": 1,
        "defaults": {
            "route": "replica",
            "consistency": "read_your_writes",
            "on_stale": on_stale,
            "wait_timeout": f"{wait_timeout_ms}ms",
        },
        "rules": [],
    }


def measure(opts: Options, workdir: Path, run: Run) -> None:
    src_dir = workdir / "src"
    run.env["pgrouter_source"] = snapshot_pgrouter(src_dir, opts.pgrouter_source)
    cluster = LocalCluster(workdir / "cluster", replicas=2, extra_conf={"max_connections": "300"})
    cluster.start()
    procs: dict[str, ManagedProcess] = {}
    try:
        db = cluster.APP_DB
        cluster.primary.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", dbname=db)
        cluster.primary.psql(
            "CREATE TABLE rw_bench (id int PRIMARY KEY, v bigint NOT NULL);\n"
            f"INSERT INTO rw_bench SELECT g, 0 FROM generate_series(1, {opts.clients}) g;",
            dbname=db,
            user=cluster.APP_USER,
        )
        cluster.wait_replicated(timeout=60)
        run.env.update(collect_env(cluster))
        run.ports = {inst.port: inst.name for inst in cluster.instances}
        specs: dict[str, tuple[bool, dict[str, Any] | None]] = {
            "rtr-norep": (False, None),
            "rtr-wait": (True, _policy("wait", opts.wait_timeout_ms)),
            "rtr-primary": (True, _policy("primary", opts.wait_timeout_ms)),
        }
        for name, (with_replicas, policy) in specs.items():
            config = replicated_config(cluster, free_port(), opts.pool_size, replicas=with_replicas)
            procs[name] = start_pgrouter_config(
                name, cluster, config, workdir / name, src_dir, policy
            )
        endpoints = {"direct": direct_endpoint(cluster)}
        endpoints.update({name: p.endpoint for name, p in procs.items()})
        values = [0] * opts.clients
        for name in RW_TARGETS:  # warm-up: fill pools, start monitors; not recorded
            warm = run_loop(cluster, endpoints[name], opts, "rw", 0, values, 2)
            if warm.errors or warm.stale:
                run.anomalies.append(f"warm-up {name}: errors {warm.errors} stale {warm.stale}")
        plan = [(t, "rw") for t in RW_TARGETS] + [(t, "wo") for t in WO_TARGETS]
        for round_no in range(1, opts.rounds + 1):
            for name, mode in plan:
                res = run_loop(cluster, endpoints[name], opts, mode, round_no, values, opts.seconds)
                run.loops.append(res)
                print(
                    f"  round {round_no} {name:<11} {mode} it/s={res.iterations / max(res.seconds, 1e-9):8.0f} "  # noqa: E501
                    f"w50={num(_pct(res.write_ms, 0.5), 3)} r50={num(_pct(res.read_ms, 0.5), 3)} "
                    f"ports={res.reads_by_port} stale={res.stale} errors={res.errors}",
                    flush=True,
                )
                if res.errors:
                    run.anomalies.append(f"{name} {mode} round {round_no}: errors {res.errors}")
                if res.stale:
                    run.anomalies.append(f"{name} {mode} round {round_no}: {res.stale} STALE")
    finally:
        for name, proc in procs.items():
            code = proc.stop_unclean()
            if code is not None:
                run.anomalies.append(f"{name} exited with code {code} on SIGTERM")
            for line in proc.log_text().splitlines():
                if any(w in line for w in ("Traceback", "ERROR", "CRITICAL")):
                    run.anomalies.append(f"{name} log: {line.strip()[:200]}")
                    break
        cluster.stop()
        cluster.cleanup()


# --------------------------------------------------------------------------- report


def _med(loops: list[LoopResult], attr: str, q: float) -> float | None:
    return median(_pct(getattr(lp, attr), q) for lp in loops)


def tables(run: Run) -> list[Table]:
    opts = run.options
    rw = {t: [lp for lp in run.loops if lp.target == t and lp.mode == "rw"] for t in RW_TARGETS}
    wo = {t: [lp for lp in run.loops if lp.target == t and lp.mode == "wo"] for t in WO_TARGETS}
    names = ["primary", "replica1", "replica2"]
    main = Table(
        f"Read-after-write, {opts.clients} clients, {opts.seconds} s x {opts.rounds} rounds "
        "(medians over rounds; latencies in ms)",
        ["target", "iterations/s", "write p50", "write p99", "read p50", "read p99",
         "reads on replicas", "stale reads"],
    )  # fmt: skip
    for t in RW_TARGETS:
        loops = rw[t]
        rate = median(divide(lp.iterations, lp.seconds) for lp in loops)
        by_port: dict[str, int] = {}
        for lp in loops:
            for port, n in lp.reads_by_port.items():
                key = run.ports.get(port, str(port))
                by_port[key] = by_port.get(key, 0) + n
        total = sum(by_port.values())
        replica_share = divide(sum(by_port.get(n, 0) for n in names[1:]), total)
        main.add(
            t, num(rate),
            num(_med(loops, "write_ms", 0.5), 3), num(_med(loops, "write_ms", 0.99), 3),
            num(_med(loops, "read_ms", 0.5), 3), num(_med(loops, "read_ms", 0.99), 3),
            "n/a" if replica_share is None else f"{100 * replica_share:.1f}%",
            f"{sum(lp.stale for lp in loops)} of {total:,}",
        )  # fmt: skip
    main.note = (
        "direct = the primary itself; rtr-norep = pgrouter with `replicas: []` (pooling only, "
        "no LSN capture); rtr-wait / rtr-primary = pgrouter with both replicas, "
        f"read_your_writes, on_stale wait ({opts.wait_timeout_ms} ms) / primary. A stale read "
        "is a read returning an older value than the client's own preceding write."
    )
    where = Table(
        "Where the reads ran, all rounds: by inet_server_port() / by pg_stat_statements on "
        "the servers",
        ["target", "primary", "replica1", "replica2"],
    )
    for t in RW_TARGETS:
        ports: dict[str, int] = {}
        calls: dict[str, int] = {}
        for lp in rw[t]:
            for port, n in lp.reads_by_port.items():
                key = run.ports.get(port, str(port))
                ports[key] = ports.get(key, 0) + n
            for k, v in lp.server_calls.items():
                calls[k] = calls.get(k, 0) + v
        where.add(t, *(f"{ports.get(n, 0):,} / {calls.get(n, 0):,}" for n in names))
    capture = Table(
        f"Write-LSN capture cost: write-only loop, {opts.clients} clients (medians over rounds)",
        ["target", "writes/s", "write p50 ms", "write p99 ms"],
    )
    for t in WO_TARGETS:
        loops = wo[t]
        rate = median(divide(lp.iterations, lp.seconds) for lp in loops)
        capture.add(
            t,
            num(rate),
            num(_med(loops, "write_ms", 0.5), 3),
            num(_med(loops, "write_ms", 0.99), 3),
        )
    off = _med(wo["rtr-norep"], "write_ms", 0.5)
    on = _med(wo["rtr-primary"], "write_ms", 0.5)
    added = divide(on, off)
    per_round = [
        divide(_pct(a.write_ms, 0.5), _pct(b.write_ms, 0.5))
        for a, b in zip(wo["rtr-primary"], wo["rtr-norep"], strict=False)
    ]
    rw_off = _med(rw["rtr-norep"], "write_ms", 0.5)
    rw_on = _med(rw["rtr-primary"], "write_ms", 0.5)
    rw_added = divide(rw_on, rw_off)

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{(x - 1) * 100:+.1f}%"

    verdict = "met" if added is not None and added - 1 < 0.05 else "NOT met"
    capture.note = (
        f"Capture on (rtr-primary) vs off (rtr-norep), write p50: {pct(added)} on the medians, "
        f"{pct(median(per_round))} median of per-round ratios; target under +5%: **{verdict}**. "
        f"In the read-after-write loop the same comparison gives {pct(rw_added)} (there the "
        "reads also move off the primary, so the primary's load differs too)."
    )
    return [main, where, capture]


def render(run: Run) -> str:
    env = run.env
    opts = run.options
    out = [
        "## Read-after-write consistency (issue 5)",
        "",
        f"Measured {env.get('date', '?')} with `python benchmarks/run.py --parts consistency "
        f"--seconds {opts.seconds} --rounds {opts.rounds}`. Machine: {env.get('nproc')} CPUs "
        f"({env.get('cpu')}), {env.get('ram')}, load average at start "
        f"{env.get('loadavg_start')}; {env.get('postgresql')}, psycopg {env.get('psycopg')}. "
        f"pgrouter commit {env.get('pgrouter_commit')} ({env.get('pgrouter_source')}).",
        "",
        "Setup: a primary and two streaming replicas (LocalCluster, fsync off), a table "
        f"`rw_bench` with one row per client. {opts.clients} asyncio clients (psycopg "
        "AsyncConnection, autocommit, extended protocol with unnamed statements: "
        "prepare_threshold=None) in one Python process, each looping `UPDATE rw_bench SET "
        "v = <next value> WHERE id = <own row>` then `SELECT v, inet_server_port() FROM "
        "rw_bench WHERE id = <own row>`. pgrouter instances: transaction pooling, pool.size "
        f"{opts.pool_size} per backend, monitor every 100 ms. Targets interleaved in every "
        "round (read-after-write on all four, then write-only on rtr-norep and rtr-primary), "
        "after an unrecorded 2-second warm-up of each. Everything shares the same CPUs, the "
        "load generator included.",
        "",
    ]
    for table in tables(run):
        out += [table.markdown("###"), ""]
    if run.anomalies:
        out += ["Anomalies:", ""] + [f"- {a}" for a in run.anomalies]
    return "\n".join(out) + "\n"


def main(opts: Options) -> int:
    run = Run(opts)
    run_part(
        "consistency",
        opts,
        run,
        lambda workdir: measure(opts, workdir, run),
        lambda: {"loops": [lp.summary() for lp in run.loops]},
        lambda: tables(run),
        lambda: render(run),
        (BEGIN, END),
    )
    stale = sum(lp.stale for lp in run.loops)
    return 0 if stale == 0 and not any(lp.errors for lp in run.loops) else 1
