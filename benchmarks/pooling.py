"""The pooling benchmark: pgrouter against PgBouncer and a direct connection.

Owns: the whole run, in one process on one machine: a local primary (LocalCluster,
``pgbench -i``), PgBouncer and pgrouter in transaction mode with the same pool size, then

1. pgbench throughput and latency, interleaved: for each round, for each workload,
   direct -> pgbouncer -> pgrouter, so drift on a shared machine hits all three alike;
2. the resident memory of each proxy holding N idle logged-in client connections
   (fresh proxy instances, SCRAM logins through a raw-protocol client);
3. sequential connect -> SELECT 1 -> close cycles with psycopg;
4. a py-spy profile of pgrouter under ``pgbench -S -M simple`` at 50 clients;

With ``floor`` (``run.py --with-floor``), benchmarks/floor.py joins the pgbench rounds as a
fourth target, one process: the least a Python transaction pooler can do, so the report
can split pgrouter's distance from PgBouncer into the platform's part and its own.

and the report (stdout, RESULTS.md section, JSON under benchmarks/out/).
Must not touch: pgrouter's code (it is started as a subprocess, as a user would run it).
Every wait is bounded; everything started here is stopped in ``finally`` blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from benchmarks import idleconns, pgbench, pyspy
from benchmarks.pgbench import PgbenchResult, Workload
from benchmarks.report import Table, divide, median, num, ratio, write_results_section
from benchmarks.targets import (
    REPO_ROOT,
    Endpoint,
    ManagedProcess,
    direct_endpoint,
    pgbouncer_version,
    raise_nofile,
    snapshot_pgrouter,
    start_floor,
    start_pgbouncer,
    start_pgrouter,
)
from router.localcluster import LocalCluster

log = logging.getLogger("bench.pooling")
T = TypeVar("T")

OUT_DIR = REPO_ROOT / "benchmarks" / "out"
TARGETS = ("direct", "pgbouncer", "pgrouter")
PROXIES = ("pgbouncer", "pgrouter")
PARTS = ("tps", "memory", "connect", "profile")
TPS_TARGET_RATIO = 0.8  # pgrouter select-only TPS at 50 clients vs PgBouncer's
RSS_TARGET_MB = 100.0  # pgrouter RSS with 5,000 idle clients


def workloads() -> list[Workload]:
    out = [
        Workload("select-only", proto, clients)
        for proto in ("simple", "extended")
        for clients in (1, 10, 50)
    ]
    out.append(Workload("tpcb", "simple", 10))
    return out


@dataclass
class Options:
    seconds: int = 10
    rounds: int = 3
    pool_size: int = 20
    workers: int = 1  # pgrouter's worker processes for the pgbench rounds (pool split)
    scale: int = 10
    idle_clients: int = 5000
    connect_cycles: int = 1000
    profile_seconds: int = 10
    parts: tuple[str, ...] = PARTS
    pgrouter_source: str = "worktree"  # or "head": see targets.snapshot_pgrouter
    results_path: Path | None = REPO_ROOT / "benchmarks" / "RESULTS.md"
    floor: bool = False  # benchmarks/floor.py in the pgbench rounds too


def bench_targets(opts: Options) -> tuple[str, ...]:
    """The targets of the pgbench rounds, in their interleaved order."""
    return (*TARGETS, "floor") if opts.floor else TARGETS


@dataclass
class MemoryResult:
    target: str
    baseline_kb: int
    with_idle_kb: int | None
    after_close_kb: int | None
    hwm_kb: int | None
    requested: int
    opened: int
    open_seconds: float
    alive_checked: tuple[int, int]
    errors: dict[str, int]


@dataclass
class CycleResult:
    target: str
    cycles: int
    ok: int
    total_s: float
    per_cycle_ms: list[float] = field(repr=False)
    errors: dict[str, int] = field(default_factory=dict)

    def pct(self, q: float) -> float | None:
        if not self.per_cycle_ms:
            return None
        ordered = sorted(self.per_cycle_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class ProfileResult:
    samples: int
    seconds: int
    rate_hz: int
    cpu_seconds: float
    runqueue_wait_seconds: float
    tps_during: float | None
    raw_path: str
    top_self: list[tuple[str, int]]
    top_inclusive: list[tuple[str, int]]
    by_file: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class Run:
    options: Options
    env: dict[str, str] = field(default_factory=dict)
    tps: list[PgbenchResult] = field(default_factory=list)
    memory: list[MemoryResult] = field(default_factory=list)
    cycles: list[CycleResult] = field(default_factory=list)
    profile: ProfileResult | None = None
    rss_after_tps_kb: dict[str, int] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- environment


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout or out.stderr).strip() or "unknown"


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total() -> str:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


def _pkg(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def collect_env(cluster: LocalCluster) -> dict[str, str]:
    git = ["git", "-C", str(REPO_ROOT)]
    dirty = _cmd([*git, "status", "--porcelain", "--", "router", "protocol", "policies"])
    diff_hash = _cmd(["sh", "-c", f"git -C {REPO_ROOT} diff HEAD -- router protocol | sha1sum"])
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "ram": _mem_total(),
        "kernel": platform.release(),
        "loadavg_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "postgresql": _cmd([str(cluster.bindir / "postgres"), "--version"]),
        "pgbench": _cmd([str(cluster.bindir / "pgbench"), "--version"]),
        "pgbouncer": pgbouncer_version(),
        "python": sys.version.split()[0],
        "uvloop": _pkg("uvloop"),
        "psycopg": _pkg("psycopg"),
        "py-spy": pyspy.pyspy_version(),
        "pgrouter_commit": _cmd([*git, "rev-parse", "--short", "HEAD"]),
        "pgrouter_worktree": (
            "clean" if dirty in ("", "unknown") else
            f"uncommitted changes under router/ protocol/ policies/ (tracked-diff sha1 "
            f"{diff_hash[:12]})"
        ),
    }  # fmt: skip


# --------------------------------------------------------------------------- targets


class Targets:
    """The main pgbouncer/pgrouter instances; restarts one that died and says so."""

    def __init__(
        self,
        cluster: LocalCluster,
        workdir: Path,
        pool_size: int,
        run: Run,
        src_dir: Path,
        workers: int = 1,
        floor: bool = False,
    ) -> None:
        self.floor = floor
        self.workers = workers
        self.cluster = cluster
        self.src_dir = src_dir
        self.workdir = workdir
        self.pool_size = pool_size
        self.run = run
        self.procs: dict[str, ManagedProcess] = {}

    def start(self) -> None:
        self.procs["pgbouncer"] = start_pgbouncer(
            self.cluster, self.workdir / "pgbouncer", self.pool_size, self.workers
        )
        self.procs["pgrouter"] = start_pgrouter(
            self.cluster, self.workdir / "pgrouter", self.pool_size, self.src_dir, self.workers
        )
        if self.floor:
            self.procs["floor"] = start_floor(self.cluster, self.workdir / "floor", self.pool_size)

    def endpoint(self, name: str) -> Endpoint:
        if name == "direct":
            return direct_endpoint(self.cluster)
        proc = self.procs[name]
        if not proc.alive():
            code = proc.stop()
            tail = "\n".join(proc.log_text().splitlines()[-15:])
            self.run.anomalies.append(
                f"{name} had exited (code {code}) and was restarted; log tail:\n{tail}"
            )
            restart_dir = self.workdir / f"{name}-restart-{time.monotonic_ns()}"
            if name == "pgbouncer":
                proc = start_pgbouncer(self.cluster, restart_dir, self.pool_size, self.workers)
            elif name == "floor":
                proc = start_floor(self.cluster, restart_dir, self.pool_size)
            else:
                proc = start_pgrouter(
                    self.cluster, restart_dir, self.pool_size, self.src_dir, self.workers
                )
            self.procs[name] = proc
        return proc.endpoint

    def stop(self) -> None:
        for name, proc in self.procs.items():
            code = proc.stop_unclean()
            if code is not None:
                self.run.anomalies.append(f"{name} exited with code {code} on SIGTERM")


# --------------------------------------------------------------------------- 1. pgbench


def run_one(
    cluster: LocalCluster, targets: Targets, workload: Workload, target: str, round_no: int,
    seconds: int,
) -> PgbenchResult:  # fmt: skip
    endpoint = targets.endpoint(target)
    proc = targets.procs.get(target)
    user_before, sys_before = proc.cpu_seconds() if proc else (0.0, 0.0)
    wait_before = proc.runqueue_wait_seconds() if proc else 0.0
    bench = pgbench.start(cluster.bindir / "pgbench", endpoint, workload, seconds)
    result = pgbench.finish(bench, workload, target, round_no, seconds)
    if proc is not None and proc.alive():
        user, sys_ = proc.cpu_seconds()
        result.proxy_cpu_s = user + sys_ - user_before - sys_before
        result.proxy_sys_s = sys_ - sys_before
        result.proxy_wait_s = proc.runqueue_wait_seconds() - wait_before
    return result


def run_tps(cluster: LocalCluster, targets: Targets, opts: Options, run: Run) -> None:
    order = bench_targets(opts)
    for target in order:  # warm-up: fill the pools, page in the tables; not recorded
        warm = run_one(cluster, targets, Workload("select-only", "simple", 10), target, 0, 2)
        if not warm.ok:
            run.anomalies.append(f"warm-up against {target} failed: {warm.error}")
    total = opts.rounds * len(workloads()) * len(order)
    done = 0
    for round_no in range(1, opts.rounds + 1):
        for workload in workloads():
            for target in order:
                result = run_one(cluster, targets, workload, target, round_no, opts.seconds)
                run.tps.append(result)
                done += 1
                status = "ok" if result.ok else f"ERROR {result.error}"
                print(
                    f"  [{done}/{total}] round {round_no} {workload.key:<28} {target:<9} "
                    f"tps={num(result.tps, 1):>10} lat={num(result.latency_ms, 3):>7} ms "
                    f"{status}",
                    flush=True,
                )
                if not result.ok:
                    run.anomalies.append(
                        f"pgbench {workload.key} against {target} (round {round_no}): "
                        f"{result.error}"
                    )
    for name, proc in targets.procs.items():
        if proc.alive():
            run.rss_after_tps_kb[name] = proc.rss_kb()


# --------------------------------------------------------------------------- 2. memory


def _idle_memory(proc: ManagedProcess, count: int) -> MemoryResult:
    ep = proc.endpoint

    async def scenario() -> MemoryResult:
        warm, _ = await idleconns.open_many(
            ep.host, ep.port, ep.user, ep.password, ep.dbname, 1, concurrency=1, timeout=30
        )
        await idleconns.close_all(warm)
        await asyncio.sleep(1.0)
        baseline = proc.rss_kb()
        conns, report = await idleconns.open_many(
            ep.host, ep.port, ep.user, ep.password, ep.dbname, count, timeout=300
        )
        await asyncio.sleep(2.0)  # let the proxy settle before reading its memory
        with_idle = proc.rss_kb() if proc.alive() else None
        alive = await idleconns.check_alive(conns)
        await idleconns.close_all(conns)
        await asyncio.sleep(2.0)
        after = proc.rss_kb() if proc.alive() else None
        hwm = proc.hwm_kb() if proc.alive() else None
        return MemoryResult(
            proc.name, baseline, with_idle, after, hwm, count, report.opened, report.seconds,
            alive, dict(report.errors),
        )  # fmt: skip

    return _run_async(scenario())


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_memory(
    cluster: LocalCluster, workdir: Path, opts: Options, run: Run, src_dir: Path
) -> None:
    for name in PROXIES:
        if name == "pgbouncer":
            proc = start_pgbouncer(cluster, workdir / "pgbouncer-memory", opts.pool_size)
        else:
            proc = start_pgrouter(cluster, workdir / "pgrouter-memory", opts.pool_size, src_dir)
        try:
            result = _idle_memory(proc, opts.idle_clients)
            run.memory.append(result)
            print(
                f"  {name}: baseline {result.baseline_kb / 1024:.1f} MB, with "
                f"{result.opened}/{result.requested} idle clients "
                f"{num(result.with_idle_kb and result.with_idle_kb / 1024, 1)} MB "
                f"(opened in {result.open_seconds:.1f}s)",
                flush=True,
            )
            if result.errors:
                run.anomalies.append(f"{name}: idle-client logins failed: {result.errors}")
            if result.alive_checked[0] != result.alive_checked[1]:
                run.anomalies.append(
                    f"{name}: only {result.alive_checked[0]}/{result.alive_checked[1]} sampled "
                    "idle clients answered SELECT 1"
                )
        finally:
            code = proc.stop_unclean()
            if code is not None:
                run.anomalies.append(f"{name} (memory instance) exited with code {code}")
            _scan_log(proc, run)


# --------------------------------------------------------------------------- 3. connect


def run_cycles(endpoint: Endpoint, cycles: int) -> CycleResult:
    times: list[float] = []
    errors: Counter[str] = Counter()
    conninfo = endpoint.conninfo(connect_timeout=10)
    began = time.perf_counter()
    for _ in range(cycles):
        start = time.perf_counter()
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute("SELECT 1").fetchone()
        except psycopg.Error as exc:
            errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
            continue
        times.append((time.perf_counter() - start) * 1000)
    total = time.perf_counter() - began
    return CycleResult(endpoint.name, cycles, len(times), total, times, dict(errors))


def run_connect(targets: Targets, opts: Options, run: Run) -> None:
    for target in TARGETS:
        result = run_cycles(targets.endpoint(target), opts.connect_cycles)
        run.cycles.append(result)
        print(
            f"  {target}: {result.ok}/{result.cycles} cycles in {result.total_s:.2f}s "
            f"(p50 {num(result.pct(0.5), 2)} ms)",
            flush=True,
        )
        if result.errors:
            run.anomalies.append(f"connect cycles against {target}: {result.errors}")


# --------------------------------------------------------------------------- 4. profile


def run_profile(cluster: LocalCluster, targets: Targets, opts: Options, run: Run) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    raw = OUT_DIR / "pgrouter-profile.raw.txt"
    endpoint = targets.endpoint("pgrouter")
    proc = targets.procs["pgrouter"]
    workload = Workload("select-only", "simple", 50)
    seconds = opts.profile_seconds
    bench = pgbench.start(cluster.bindir / "pgbench", endpoint, workload, seconds + 4)
    try:
        time.sleep(2.0)  # connections up, steady state
        cpu_before = sum(proc.cpu_seconds())
        wait_before = proc.runqueue_wait_seconds()
        spy = pyspy.start_record(proc.pid, raw, seconds, rate_hz=100)
        pyspy.finish_record(spy, seconds)
        cpu_used = sum(proc.cpu_seconds()) - cpu_before
        wait = proc.runqueue_wait_seconds() - wait_before
    finally:
        result = pgbench.finish(bench, workload, "pgrouter", 0, seconds + 4)
    if not result.ok:
        run.anomalies.append(f"pgbench during profiling: {result.error}")
    prof = pyspy.aggregate(raw, 100, seconds)
    run.profile = ProfileResult(
        prof.samples, seconds, 100, cpu_used, wait, result.tps, str(raw.relative_to(REPO_ROOT)),
        prof.self_counts.most_common(15), prof.inclusive_counts.most_common(15),
        prof.file_counts.most_common(12),
    )  # fmt: skip


# --------------------------------------------------------------------------- logs


def _scan_log(proc: ManagedProcess, run: Run) -> None:
    words = ("WARNING", "ERROR", "Traceback", "CRITICAL", "FATAL")
    lines = [ln for ln in proc.log_text().splitlines() if any(w in ln for w in words)]
    if lines:
        distinct = list(dict.fromkeys(_strip_timestamp(ln) for ln in lines))
        run.anomalies.append(
            f"{proc.name} log ({proc.log_path.name}): {len(lines)} warning/error lines, "
            f"{len(distinct)} distinct, first ones:\n" + "\n".join(distinct[:8])
        )


def _strip_timestamp(line: str) -> str:
    parts = line.split(" ", 2)
    if len(parts) == 3 and parts[0][:2].isdigit():
        return parts[2]
    return line


# --------------------------------------------------------------------------- report


def _by(run: Run) -> dict[tuple[str, str], list[PgbenchResult]]:
    grouped: dict[tuple[str, str], list[PgbenchResult]] = {}
    for r in run.tps:
        grouped.setdefault((r.workload, r.target), []).append(r)
    return grouped


def _per_round_ratio(
    results: dict[tuple[str, str], list[PgbenchResult]], key: str, num_t: str, den_t: str
) -> float | None:
    a = {r.round: r.tps for r in results.get((key, num_t), []) if r.ok}
    b = {r.round: r.tps for r in results.get((key, den_t), []) if r.ok}
    ratios = [divide(a[k], b[k]) for k in a if k in b]
    return median(ratios)


def _per_txn_us(seconds: float | None, result: PgbenchResult) -> float | None:
    return divide(None if seconds is None else seconds * 1e6, result.processed)


def tables(run: Run) -> list[Table]:
    out: list[Table] = []
    grouped = _by(run)
    opts = run.options
    if run.tps:
        tps = Table(
            f"Throughput: median TPS over {opts.rounds} interleaved rounds of {opts.seconds}s",
            ["workload", "direct", "pgbouncer", "pgrouter", "rtr/bnc", "rtr/bnc (rounds)",
             "rtr/direct", "rtr/direct (rounds)"],
            note="rtr/bnc and rtr/direct: ratio of the medians; (rounds): median of the "
            "per-round ratios.",
        )  # fmt: skip
        lat = Table(
            "Latency: median of pgbench's mean latency per run (ms)",
            ["workload", "direct", "pgbouncer", "pgrouter", "rtr - bnc", "rtr/bnc"],
        )
        rounds = Table(
            "TPS of every round (drift check)",
            ["workload", "direct", "pgbouncer", "pgrouter"],
        )
        cpu = Table(
            "Proxy CPU: median CPU time per transaction, cores busy, run-queue wait",
            ["workload", "pgbouncer us/txn", "pgrouter us/txn", "pgbouncer sys us/txn",
             "pgrouter sys us/txn", "pgbouncer cores", "pgrouter cores", "pgbouncer runq",
             "pgrouter runq"],
            note="us/txn: the proxy process's utime+stime (/proc/<pid>/stat) over a run / "
            "transactions; sys us/txn: the stime part alone (syscalls, including the loopback "
            "TCP work a send does for the receiver). cores: CPU seconds / wall seconds "
            "(1.00 = one core saturated). "
            "runq: share of the run's wall time the proxy was runnable but waiting for a CPU "
            "(/proc/<pid>/task/*/schedstat); cores + runq near 1.00 means its one thread "
            "always had work.",
        )  # fmt: skip
        for w in workloads():
            med = {t: median(r.tps for r in grouped.get((w.key, t), []) if r.ok) for t in TARGETS}
            mlat = {
                t: median(r.latency_ms for r in grouped.get((w.key, t), []) if r.ok)
                for t in TARGETS
            }
            tps.add(
                w.key, num(med["direct"]), num(med["pgbouncer"]), num(med["pgrouter"]),
                ratio(divide(med["pgrouter"], med["pgbouncer"])),
                ratio(_per_round_ratio(grouped, w.key, "pgrouter", "pgbouncer")),
                ratio(divide(med["pgrouter"], med["direct"])),
                ratio(_per_round_ratio(grouped, w.key, "pgrouter", "direct")),
            )  # fmt: skip
            diff = None
            if mlat["pgrouter"] is not None and mlat["pgbouncer"] is not None:
                diff = mlat["pgrouter"] - mlat["pgbouncer"]
            lat.add(
                w.key, num(mlat["direct"], 3), num(mlat["pgbouncer"], 3),
                num(mlat["pgrouter"], 3), num(diff, 3),
                ratio(divide(mlat["pgrouter"], mlat["pgbouncer"])),
            )  # fmt: skip
            rounds.add(
                w.key,
                *(" / ".join(num(r.tps) for r in grouped.get((w.key, t), [])) for t in TARGETS),
            )
            per_txn, sys_txn, cores, runq = [], [], [], []
            for t in PROXIES:
                runs = [
                    r for r in grouped.get((w.key, t), []) if r.ok and r.proxy_cpu_s is not None
                ]
                per_txn.append(num(median(_per_txn_us(r.proxy_cpu_s, r) for r in runs), 1))
                sys_txn.append(num(median(_per_txn_us(r.proxy_sys_s, r) for r in runs), 1))
                cores.append(num(median((r.proxy_cpu_s or 0) / opts.seconds for r in runs), 2))
                runq.append(num(median((r.proxy_wait_s or 0) / opts.seconds for r in runs), 2))
            cpu.add(w.key, *per_txn, *sys_txn, *cores, *runq)
        out += [tps, lat, rounds, cpu]
        if opts.floor:
            out.append(floor_table(run))
    if run.memory:
        mem = Table(
            "Resident memory (VmRSS) holding idle client connections",
            ["proxy", "baseline MB", "with idle clients MB", "per client KB",
             "after close MB", "peak (VmHWM) MB", "clients opened", "login time s"],
            note="Fresh proxy instances (pool size as above, transaction mode), SCRAM-SHA-256 "
            "logins by a raw-protocol asyncio client (50 concurrent); baseline is after one "
            "login/logout. A sample of 20 idle clients ran SELECT 1 afterwards.",
        )  # fmt: skip
        for m in run.memory:
            per_client = None
            if m.with_idle_kb is not None and m.opened:
                per_client = (m.with_idle_kb - m.baseline_kb) / m.opened
            mem.add(
                m.target, num(m.baseline_kb / 1024, 1),
                num(m.with_idle_kb and m.with_idle_kb / 1024, 1), num(per_client, 1),
                num(m.after_close_kb and m.after_close_kb / 1024, 1),
                num(m.hwm_kb and m.hwm_kb / 1024, 1), f"{m.opened}/{m.requested}",
                num(m.open_seconds, 1),
            )  # fmt: skip
        out.append(mem)
    if run.cycles:
        cyc = Table(
            f"{opts.connect_cycles} sequential connect -> SELECT 1 -> close cycles (psycopg, "
            "SCRAM-SHA-256)",
            ["target", "total s", "mean ms", "p50 ms", "p95 ms", "p99 ms", "ok"],
        )
        for c in run.cycles:
            mean = statistics.fmean(c.per_cycle_ms) if c.per_cycle_ms else None
            cyc.add(
                c.target, num(c.total_s, 2), num(mean, 2), num(c.pct(0.5), 2),
                num(c.pct(0.95), 2), num(c.pct(0.99), 2), f"{c.ok}/{c.cycles}",
            )  # fmt: skip
        out.append(cyc)
    if run.profile:
        p = run.profile
        expected = p.rate_hz * p.seconds
        note = (
            f"py-spy --native {p.rate_hz} Hz for {p.seconds}s (compiled functions under their "
            "Python names, other C code bucketed; idle samples excluded; entry frames up to "
            f"asyncio's Runner.run cut off): {p.samples} samples "
            f"of {expected} possible; pgrouter used "
            f"{p.cpu_seconds:.2f} CPU s ({p.cpu_seconds / p.seconds:.2f} cores) and waited "
            f"{p.runqueue_wait_seconds:.2f} s runnable for a CPU; samples are wall-clock, so "
            f"a function's share includes time pgrouter was preempted in it (most of all the "
            "system calls that wake a peer: for on-CPU time, benchmarks/cpuprofile.py samples "
            f"with perf). pgbench TPS while sampled: {num(p.tps_during)}. Raw stacks: "
            f"{p.raw_path} (not in git)."
        )
        for title, rows in (
            ("top functions by self time", p.top_self),
            ("top functions by inclusive time", p.top_inclusive),
            ("self time by source file", p.by_file),
        ):
            prof = Table(
                f"pgrouter profile, pgbench -S -M simple -c 50: {title}",
                ["function (file)" if "functions" in title else "file", "samples",
                 "% of samples"],
                note=note if title.startswith("self time by") else "",
            )  # fmt: skip
            for name, count in rows:
                prof.add(f"`{name}`", count, num(100 * count / max(1, p.samples), 1))
            out.append(prof)
    return out


def floor_table(run: Run) -> Table:
    """PgBouncer, pgrouter and the floor side by side: TPS and proxy CPU per transaction."""
    grouped = _by(run)
    table = Table(
        "The floor (benchmarks/floor.py): the least a Python + uvloop transaction pooler "
        "does, in the same rounds",
        ["workload", "floor", "floor/bnc", "rtr/floor", "rtr/floor (rounds)",
         "pgbouncer us/txn", "floor us/txn", "pgrouter us/txn", "floor user us/txn",
         "pgrouter user us/txn"],
        note="floor: one process; no client authentication, canned startup reply, no "
        "parsing but the last bytes of each answer (ReadyForQuery 'I' releases the server "
        "connection). us/txn as in the proxy CPU table; user: utime alone.",
    )  # fmt: skip

    def cpu(key: str, target: str, user_only: bool) -> str:
        runs = [r for r in grouped.get((key, target), []) if r.ok and r.proxy_cpu_s is not None]
        user = [(r.proxy_cpu_s or 0.0) - (r.proxy_sys_s or 0.0) for r in runs]
        seconds = user if user_only else [r.proxy_cpu_s for r in runs]
        return num(median(_per_txn_us(s, r) for s, r in zip(seconds, runs, strict=True)), 1)

    for w in workloads():
        med = {
            t: median(r.tps for r in grouped.get((w.key, t), []) if r.ok)
            for t in ("pgbouncer", "pgrouter", "floor")
        }
        table.add(
            w.key, num(med["floor"]), ratio(divide(med["floor"], med["pgbouncer"])),
            ratio(divide(med["pgrouter"], med["floor"])),
            ratio(_per_round_ratio(grouped, w.key, "pgrouter", "floor")),
            cpu(w.key, "pgbouncer", False), cpu(w.key, "floor", False),
            cpu(w.key, "pgrouter", False), cpu(w.key, "floor", True),
            cpu(w.key, "pgrouter", True),
        )  # fmt: skip
    return table


def target_checks(run: Run) -> list[str]:
    grouped = _by(run)
    lines = []
    for proto in ("simple", "extended"):
        key = Workload("select-only", proto, 50).key
        b = median(r.tps for r in grouped.get((key, "pgbouncer"), []) if r.ok)
        r_ = median(r.tps for r in grouped.get((key, "pgrouter"), []) if r.ok)
        rr = divide(r_, b)
        if rr is None:
            continue
        verdict = "MET" if rr >= TPS_TARGET_RATIO else "NOT MET"
        lines.append(
            f"- select-only TPS at 50 clients (-M {proto}) >= {TPS_TARGET_RATIO}x PgBouncer: "
            f"{ratio(rr)} ({num(r_)} vs {num(b)}) -> **{verdict}**"
        )
    for m in run.memory:
        if m.target == "pgrouter" and m.with_idle_kb is not None:
            mb = m.with_idle_kb / 1024
            verdict = "MET" if mb < RSS_TARGET_MB and m.opened == m.requested else "NOT MET"
            lines.append(
                f"- pgrouter RSS with {m.opened} idle clients < {RSS_TARGET_MB:.0f} MB: "
                f"{mb:.1f} MB -> **{verdict}**"
            )
    return lines


def _workers_note(workers: int, pool_size: int) -> str:
    if workers <= 1:
        return " (pgrouter: one process, like PgBouncer)"
    per = max(1, pool_size // workers)
    return (
        f" (pgrouter: `workers: {workers}`; PgBouncer: {workers} processes with "
        f"`so_reuseport`; {per} server connections per process for both, the same total; "
        "the idle-memory test runs one process of each)"
    )


def markdown(run: Run) -> str:
    e, o = run.env, run.options
    out = [
        f"## Pooling benchmark, {e.get('date', '?')}"
        + (f", {o.workers} processes of each proxy" if o.workers > 1 else ""),
        "",
        f"Command: `.venv/bin/python benchmarks/run.py --seconds {o.seconds} --rounds "
        f"{o.rounds} --pool-size {o.pool_size} --workers {o.workers} "
        f"--pgrouter-source {o.pgrouter_source}{' --with-floor' if o.floor else ''}` "
        f"(parts: {', '.join(o.parts)}); "
        f"wall time {run.timings.get('total', 0) / 60:.1f} min.",
        "",
        "| | |",
        "| --- | --- |",
    ]
    for key in ("nproc", "cpu", "ram", "kernel", "loadavg_start", "loadavg_end", "postgresql",
                "pgbench", "pgbouncer", "python", "uvloop", "psycopg", "py-spy",
                "pgrouter_commit", "pgrouter_worktree", "pgrouter_code"):  # fmt: skip
        if key in e:
            out.append(f"| {key} | {e[key]} |")
    out += [
        "",
        f"Setup: one PostgreSQL primary (LocalCluster, fsync off, shared_buffers 32MB), "
        f"`pgbench -i -s {o.scale}`; PgBouncer and pgrouter in transaction mode, pool size "
        f"{o.pool_size}{_workers_note(o.workers, o.pool_size)}, SCRAM-SHA-256 for clients and "
        "servers, loopback TCP, no TLS. pgbench "
        "-n, -j = min(clients, 2). Everything (pgbench, proxies, PostgreSQL) shares the same "
        "cores, so a proxy's CPU use is taken from the same budget as the server's.",
        "",
        "### Targets",
        "",
        *(target_checks(run) or ["- (not measured in this run)"]),
        "",
    ]
    for table in tables(run):
        out += [table.markdown(), ""]
    if run.rss_after_tps_kb:
        parts = ", ".join(f"{k} {v / 1024:.1f} MB" for k, v in run.rss_after_tps_kb.items())
        out += [f"RSS of the main proxy instances after the pgbench runs: {parts}.", ""]
    out += ["### Anomalies seen during the run", ""]
    if run.anomalies:
        for item in run.anomalies:
            first, _, rest = item.partition("\n")
            out.append(f"- {first}")
            if rest:
                out += ["", "  ```", *("  " + ln for ln in rest.splitlines()), "  ```"]
    else:
        out.append("- none (no pgbench errors, no warning/error lines in the proxies' logs)")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- main


@contextlib.contextmanager
def _phase(run: Run, name: str) -> Iterator[None]:
    print(f"== {name}", flush=True)
    began = time.monotonic()
    try:
        yield
    finally:
        run.timings[name] = time.monotonic() - began
        print(f"   ({name}: {run.timings[name]:.0f}s)", flush=True)


def _guarded(run: Run, name: str, fn: Callable[[], None]) -> None:
    """Run one part; an exception there is recorded and the other parts still run."""
    with _phase(run, name):
        try:
            fn()
        except Exception as exc:
            log.exception("%s failed", name)
            run.anomalies.append(f"part '{name}' failed: {type(exc).__name__}: {exc}")


def main(opts: Options) -> int:
    raise_nofile()
    run = Run(opts)
    began = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="pgrouter-bench-"))
    try:
        cluster = LocalCluster(base / "pg", replicas=0, extra_conf={"max_connections": "300"})
        with cluster:
            with _phase(run, "pgbench -i"):
                pgbench.initialize(cluster.bindir / "pgbench", direct_endpoint(cluster), opts.scale)
            run.env = collect_env(cluster)
            src_dir = base / "pgrouter-src"
            run.env["pgrouter_code"] = snapshot_pgrouter(src_dir, opts.pgrouter_source)
            targets = Targets(
                cluster, base / "proxies", opts.pool_size, run, src_dir, opts.workers, opts.floor
            )
            try:
                targets.start()
                if "tps" in opts.parts:
                    _guarded(run, "pgbench rounds", lambda: run_tps(cluster, targets, opts, run))
                if "connect" in opts.parts:
                    _guarded(run, "connect cycles", lambda: run_connect(targets, opts, run))
                if "profile" in opts.parts:
                    _guarded(run, "profile", lambda: run_profile(cluster, targets, opts, run))
            finally:
                targets.stop()
                for proc in targets.procs.values():
                    _scan_log(proc, run)
            if "memory" in opts.parts:
                _guarded(run, "idle memory", lambda: run_memory(cluster, base, opts, run, src_dir))
    finally:
        run.timings["total"] = time.monotonic() - began
        if os.environ.get("PGROUTER_KEEP_CLUSTER") != "1":
            subprocess.run(["rm", "-rf", str(base)], check=False, timeout=60)
    run.env["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return finish(run)


def load_run(path: Path) -> Run:
    """A Run back from the JSON that ``finish`` wrote (to re-render its report)."""
    data = json.loads(path.read_text())
    options = data["options"]
    options["parts"] = tuple(options["parts"])
    options["results_path"] = None
    run = Run(Options(**options))
    run.env = data["env"]
    run.tps = [PgbenchResult(**r) for r in data["tps"]]
    run.memory = [
        MemoryResult(**{**m, "alive_checked": tuple(m["alive_checked"])}) for m in data["memory"]
    ]
    run.cycles = [CycleResult(**c) for c in data["cycles"]]
    if data.get("profile"):
        prof = data["profile"]
        for key in ("top_self", "top_inclusive", "by_file"):
            prof[key] = [tuple(item) for item in prof.get(key, [])]
        raw = REPO_ROOT / prof["raw_path"]
        if not prof["by_file"] and raw.exists():  # written before by_file existed
            counts = pyspy.aggregate(raw, prof["rate_hz"], prof["seconds"]).file_counts
            prof["by_file"] = counts.most_common(12)
        run.profile = ProfileResult(**prof)
    run.rss_after_tps_kb = data["rss_after_tps_kb"]
    run.anomalies = data["anomalies"]
    run.timings = data["timings"]
    return run


def report_only(json_path: Path, results_path: Path | None) -> int:
    """Re-render stdout tables and the RESULTS.md section from a saved run."""
    run = load_run(json_path)
    run.options.results_path = results_path
    return finish(run, save_json=False)


def finish(run: Run, save_json: bool = True) -> int:
    print()
    for table in tables(run):
        print(table.text())
        print()
    for line in target_checks(run):
        print(line.replace("**", ""))
    if run.anomalies:
        print("\nAnomalies:")
        for item in run.anomalies:
            print(" - " + item)
    if save_json:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        data = asdict(run)
        data["options"]["results_path"] = str(run.options.results_path)
        (OUT_DIR / f"pooling-{stamp}.json").write_text(json.dumps(data, indent=1, default=str))
        print(f"\nwrote benchmarks/out/pooling-{stamp}.json")
    if run.options.results_path is not None:
        markers: tuple[str, ...] = ()
        if run.options.workers > 1:  # a section of its own, beside the one-process run
            name = f"pooling-results-{run.options.workers}-processes"
            markers = (f"<!-- {name}:begin (written by benchmarks/run.py --workers "
                       f"{run.options.workers}) -->", f"<!-- {name}:end -->")  # fmt: skip
        write_results_section(
            run.options.results_path, markdown(run), "Benchmark results", *markers
        )
        print(f"wrote {run.options.results_path.relative_to(REPO_ROOT)}")
    return 0
