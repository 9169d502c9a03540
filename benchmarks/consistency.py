"""The consistency benchmark: read-after-write through pgrouter with two replicas.

Owns: one run on one machine: a local primary with two streaming replicas, a table with
one row per client, then a read-after-write workload (N asyncio clients on psycopg, each
looping: autocommit ``UPDATE`` of its own row to a new value, then at once ``SELECT`` of
that row with ``inet_server_port()``), interleaved over rounds against

- **direct**: the primary itself;
- **rtr-norep**: pgrouter without replicas (``replicas: []``): a pure pooler (no
  planner, no monitor, no write-LSN capture);
- **rtr-wait**: pgrouter with both replicas, ``read_your_writes`` and ``on_stale: wait``
  with a short ``wait_timeout``;
- **rtr-primary**: the same with ``on_stale: primary`` (the default);

plus a write-only loop (the same UPDATEs, no reads) at 1 client and at N clients against
rtr-primary and **rtr-nocap**, which is rtr-primary with ``capture_write_lsn: false``:
the same planner, monitor and policy, so the two differ by the write-LSN capture alone
(the pipelined ``pg_current_wal_insert_lsn()``, its answer, the ParameterStatus). Their
loops come in mirrored pairs (on, off, off, on), each half as long as a read-after-write
loop.
Figures: iterations/s, p50/p99 of the write and of the read that follows it, the share of
reads each server answered (from ``inet_server_port()``, cross-checked with
pg_stat_statements calls on the servers), stale reads (a read returning an older value
than the client's own write; must be 0); for the write-only loops, pgrouter's CPU time per
write and, from the primary's pg_stat_statements (with track_planning), the mean planning
and execution time of the capture statement and of the UPDATE.
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
CAPTURE_ON, CAPTURE_OFF = "rtr-primary", "rtr-nocap"
WO_TARGETS = (CAPTURE_ON, CAPTURE_OFF)  # write-only: the capture on vs off, nothing else
READ_PATTERN = "select v, inet_server_port() from rw_bench%"
CAPTURE_STATEMENT = "SELECT pg_catalog.pg_current_wal_insert_lsn()"
UPDATE_PATTERN = "update rw_bench set v = $1 where id = $2"
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
    clients: int = 0
    proxy_cpu_s: float | None = None  # pgrouter's user+system CPU time during the loop
    # The primary's pg_stat_statements over the loop: statement -> (calls, plan ms, exec ms).
    statements: dict[str, tuple[int, float, float]] = field(default_factory=dict)
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
    values[: len(done)] = done


def run_loop(
    cluster: LocalCluster, endpoint: Endpoint, opts: Options, mode: str, round_no: int,
    values: list[int], seconds: int, clients: int | None = None,
    proc: ManagedProcess | None = None,
) -> LoopResult:  # fmt: skip
    clients = opts.clients if clients is None else clients
    out = LoopResult(endpoint.name, mode, round_no, 0.0, 0, clients)
    before = calls_by_server(cluster, READ_PATTERN) if mode == "rw" else {}
    stats_before = statement_stats(cluster) if mode == "wo" else {}
    cpu_before = sum(proc.cpu_seconds()) if proc is not None else 0.0
    try:
        _run_async(_loop(endpoint, clients, seconds, mode == "rw", values, out))
    except Exception as exc:  # recorded; the run goes on
        out.errors[f"{type(exc).__name__}: {exc}"[:160]] = 1
    if proc is not None:
        out.proxy_cpu_s = sum(proc.cpu_seconds()) - cpu_before
    if mode == "wo":
        after_stats = statement_stats(cluster)
        for name, (calls, plan, exe) in after_stats.items():
            was = stats_before.get(name, (0, 0.0, 0.0))
            out.statements[name] = (calls - was[0], plan - was[1], exe - was[2])
    else:
        after = calls_by_server(cluster, READ_PATTERN)
        out.server_calls = {k: after[k] - before.get(k, 0) for k in after}
    return out


def statement_stats(cluster: LocalCluster) -> dict[str, tuple[int, float, float]]:
    """The primary's pg_stat_statements totals for the capture statement ("capture") and
    the benchmark's UPDATE ("update"): (calls, total plan ms, total exec ms)."""
    out = cluster.primary.psql(
        "SELECT CASE WHEN query = '" + CAPTURE_STATEMENT + "' THEN 'capture' ELSE 'update' END, "
        "sum(calls)::bigint, sum(total_plan_time), sum(total_exec_time) "
        "FROM pg_stat_statements WHERE query = '" + CAPTURE_STATEMENT + "' "
        f"OR query ILIKE '{UPDATE_PATTERN}' GROUP BY 1",
        dbname=cluster.APP_DB,
    )
    stats: dict[str, tuple[int, float, float]] = {}
    for line in (out or "").splitlines():
        name, calls, plan, exe = line.split("|")
        stats[name] = (int(calls), float(plan), float(exe))
    return stats


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
    conf = {"max_connections": "300", "pg_stat_statements.track_planning": "on"}
    cluster = LocalCluster(workdir / "cluster", replicas=2, extra_conf=conf)
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
        # name: (replicas?, policy, capture_write_lsn)
        specs: dict[str, tuple[bool, dict[str, Any] | None, bool]] = {
            "rtr-norep": (False, None, True),
            "rtr-wait": (True, _policy("wait", opts.wait_timeout_ms), True),
            CAPTURE_ON: (True, _policy("primary", opts.wait_timeout_ms), True),
            CAPTURE_OFF: (True, _policy("primary", opts.wait_timeout_ms), False),
        }
        for name, (with_replicas, policy, capture) in specs.items():
            config = replicated_config(cluster, free_port(), opts.pool_size, replicas=with_replicas)
            config["databases"][db]["capture_write_lsn"] = capture
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
        warm = run_loop(cluster, endpoints[CAPTURE_OFF], opts, "wo", 0, values, 2)
        wo_seconds = max(1, opts.seconds // 2)  # two pairs per round in the same time
        if warm.errors:
            run.anomalies.append(f"warm-up {CAPTURE_OFF}: errors {warm.errors}")
        for round_no in range(1, opts.rounds + 1):
            plan = [(t, "rw", opts.clients, opts.seconds) for t in RW_TARGETS]
            plan += [(t, "wo", n, wo_seconds) for n in _wo_clients(opts) for t in _abba(round_no)]
            for name, mode, clients, seconds in plan:
                res = run_loop(
                    cluster, endpoints[name], opts, mode, round_no, values, seconds,
                    clients, procs.get(name),
                )  # fmt: skip
                run.loops.append(res)
                print(
                    f"  round {round_no} {name:<11} {mode} c={clients:<3} "
                    f"it/s={res.iterations / max(res.seconds, 1e-9):8.0f} "
                    f"w50={num(_pct(res.write_ms, 0.5), 3)} r50={num(_pct(res.read_ms, 0.5), 3)} "
                    f"cpu/it={num(_cpu_us(res), 0)}us "
                    f"ports={res.reads_by_port} stale={res.stale} errors={res.errors}",
                    flush=True,
                )
                if res.errors:
                    run.anomalies.append(f"{name} {mode} round {round_no}: errors {res.errors}")
                if res.stale:
                    run.anomalies.append(f"{name} {mode} round {round_no}: {res.stale} STALE")
        run.env["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
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


def _abba(round_no: int) -> tuple[str, ...]:
    """The write-only loops of a round: two on/off pairs in mirrored order (on, off, off,
    on; the next round off, on, on, off), so a drift in the machine's load favours
    neither, and each pair's ratio is taken between neighbours."""
    on, off = WO_TARGETS
    first = (on, off) if round_no % 2 else (off, on)
    return first + first[::-1]


def _wo_clients(opts: Options) -> tuple[int, ...]:
    """Client counts of the write-only comparison: one (an unloaded write's latency) and
    the read-after-write count."""
    return (1,) if opts.clients == 1 else (1, opts.clients)


def _cpu_us(loop: LoopResult) -> float | None:
    """pgrouter's CPU time per iteration, in microseconds."""
    if loop.proxy_cpu_s is None or not loop.iterations:
        return None
    return loop.proxy_cpu_s / loop.iterations * 1e6


# --------------------------------------------------------------------------- report


def _med(loops: list[LoopResult], attr: str, q: float) -> float | None:
    return median(_pct(getattr(lp, attr), q) for lp in loops)


def tables(run: Run) -> list[Table]:
    opts = run.options
    rw = {t: [lp for lp in run.loops if lp.target == t and lp.mode == "rw"] for t in RW_TARGETS}
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
    return [main, where, *capture_tables(run)]


def _pct_change(x: float | None) -> str:
    return "n/a" if x is None else f"{(x - 1) * 100:+.1f}%"


def _wo_loops(run: Run, target: str, clients: int) -> list[LoopResult]:
    return [
        lp for lp in run.loops if lp.mode == "wo" and lp.target == target and lp.clients == clients
    ]


def capture_comparison(run: Run, clients: int) -> dict[str, Any]:
    """Capture on vs off at ``clients``: the p50 ratio (on/off) of each pair of
    neighbouring loops (two per round, see _abba), their median, the ratio of the medians,
    and the same for writes/s."""
    on, off = _wo_loops(run, CAPTURE_ON, clients), _wo_loops(run, CAPTURE_OFF, clients)
    pairs = []
    for round_no in sorted({lp.round for lp in on}):
        ons = [lp for lp in on if lp.round == round_no]
        offs = [lp for lp in off if lp.round == round_no]
        pairs += list(zip(ons, offs, strict=False))
    p50_pairs = [divide(_pct(a.write_ms, 0.5), _pct(b.write_ms, 0.5)) for a, b in pairs]
    rate_pairs = [
        divide(divide(a.iterations, a.seconds), divide(b.iterations, b.seconds)) for a, b in pairs
    ]
    return {
        "p50_pairs": p50_pairs,
        "p50_median_ratio": median(p50_pairs),
        "p50_ratio_of_medians": divide(_med(on, "write_ms", 0.5), _med(off, "write_ms", 0.5)),
        "rate_median_ratio": median(rate_pairs),
    }


def _verdict(ratio_: float | None) -> str:
    if ratio_ is None:
        return "n/a"
    return "met" if ratio_ - 1 < 0.05 else "NOT met"


def capture_tables(run: Run) -> list[Table]:
    opts = run.options
    counts = _wo_clients(opts)
    capture = Table(
        "Write-LSN capture cost: write-only loop, capture on vs off, both with two replicas "
        "(medians over loops)",
        ["clients", "target", "writes/s", "write p50 ms", "write p99 ms",
         "pgrouter CPU us/write", "p50 on/off per pair", "p50 on/off (median)"],
    )  # fmt: skip
    verdicts = []
    for n in counts:
        comparison = capture_comparison(run, n)
        per_pair = ", ".join(_pct_change(r) for r in comparison["p50_pairs"])
        for target in WO_TARGETS:
            loops = _wo_loops(run, target, n)
            first = target == CAPTURE_ON
            capture.add(
                n,
                f"{target} (capture {'on' if first else 'off'})",
                num(median(divide(lp.iterations, lp.seconds) for lp in loops)),
                num(_med(loops, "write_ms", 0.5), 3),
                num(_med(loops, "write_ms", 0.99), 3),
                num(median(_cpu_us(lp) for lp in loops), 0),
                per_pair if first else "",
                _pct_change(comparison["p50_median_ratio"]) if first else "",
            )
        ratios = [r for r in comparison["p50_pairs"] if r is not None]
        above = sum(1 for r in ratios if r - 1 >= 0.05)
        verdicts.append(
            f"{n} client{'s' if n > 1 else ''}: write p50 "
            f"{_pct_change(comparison['p50_median_ratio'])} (median of per-pair ratios, "
            f"{above} of {len(ratios)} pairs at +5% or more; "
            f"{_pct_change(comparison['p50_ratio_of_medians'])} on the medians), writes/s "
            f"{_pct_change(comparison['rate_median_ratio'])}, target "
            f"**{_verdict(comparison['p50_median_ratio'])}**"
        )
    capture.note = (
        f"{CAPTURE_ON} and {CAPTURE_OFF} are the same pgrouter (both replicas, the same "
        "policy, planner and monitor) except `capture_write_lsn` (on / off); each round runs "
        "two pairs of neighbouring loops in mirrored order (on, off, off, on; the next round "
        "off, on, on, off). Target: the capture adds under 5% to the write's p50, judged on "
        "the median of the per-pair ratios. "
        + "; ".join(verdicts)
        + "."
    )
    server = Table(
        "Write-LSN capture cost on the primary, write-only loops with capture on "
        "(pg_stat_statements, track_planning on; all rounds)",
        ["statement", "calls", "mean plan ms", "mean exec ms", "plan + exec ms"],
    )
    totals: dict[str, list[float]] = {}
    for lp in run.loops:
        if lp.mode == "wo" and lp.target == CAPTURE_ON:
            for name, (calls, plan, exe) in lp.statements.items():
                total = totals.setdefault(name, [0.0, 0.0, 0.0])
                total[0] += calls
                total[1] += plan
                total[2] += exe
    labels = {"capture": f"`{CAPTURE_STATEMENT}`", "update": "`UPDATE rw_bench ...`"}
    for name in ("update", "capture"):
        if name == "capture" and not totals.get(name, [0.0])[0]:
            continue  # a FunctionCall: pg_stat_statements does not see it (note below)
        count, plan_ms, exec_ms = totals.get(name, [0.0, 0.0, 0.0])
        server.add(
            labels[name],
            f"{int(count):,}",
            num(divide(plan_ms, count), 4),
            num(divide(exec_ms, count), 4),
            num(divide(plan_ms + exec_ms, count), 4),
        )
    server.note = (
        "Server time only (parse and network not included). The capture runs once per "
        "write, on the same connection, right after the write's Sync, as a FunctionCall "
        "of pg_current_wal_insert_lsn() by OID: the fast path has no parse, plan or "
        "portal, and pg_stat_statements does not count it (when it shows above, the "
        "measured pgrouter ran the capture as a statement)."
    )
    return [capture, server]


def render(run: Run) -> str:
    env = run.env
    opts = run.options
    out = [
        "## Read-after-write consistency (issue 5)",
        "",
        f"Measured {env.get('date', '?')} with `python benchmarks/run.py --parts consistency "
        f"--seconds {opts.seconds} --rounds {opts.rounds}`. Machine: {env.get('nproc')} CPUs "
        f"({env.get('cpu')}), {env.get('ram')}, load average at start "
        f"{env.get('loadavg_start')}, at the end {env.get('loadavg_end', '?')}; "
        f"{env.get('postgresql')}, psycopg {env.get('psycopg')}. "
        f"pgrouter commit {env.get('pgrouter_commit')} ({env.get('pgrouter_source')}).",
        "",
        "Setup: a primary and two streaming replicas (LocalCluster, fsync off), a table "
        f"`rw_bench` with one row per client. {opts.clients} asyncio clients (psycopg "
        "AsyncConnection, autocommit, extended protocol with unnamed statements: "
        "prepare_threshold=None) in one Python process, each looping `UPDATE rw_bench SET "
        "v = <next value> WHERE id = <own row>` then `SELECT v, inet_server_port() FROM "
        "rw_bench WHERE id = <own row>`. pgrouter instances: transaction pooling, pool.size "
        f"{opts.pool_size} per backend, monitor every 100 ms; {CAPTURE_OFF} is {CAPTURE_ON} "
        "with `capture_write_lsn: false`. Targets interleaved in every round "
        f"(read-after-write on all four, then write-only on {CAPTURE_ON} and {CAPTURE_OFF}, "
        f"at {' and at '.join(str(n) for n in _wo_clients(opts))} client(s), as two pairs "
        f"of {max(1, opts.seconds // 2)}-second loops in mirrored order), after an "
        "unrecorded 2-second warm-up of each. The primary "
        "runs pg_stat_statements with track_planning on. Everything shares the same CPUs, "
        "the load generator included.",
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
