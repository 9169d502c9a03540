"""The routing benchmark: read scale-out through pgrouter against Pgpool-II and the primary.

Owns: one run on one machine: a local primary with two streaming replicas (LocalCluster),
``pgbench -i`` on the primary, pg_stat_statements for server-side counting, then
``pgbench -S -M simple`` at 50 clients, interleaved over rounds, against

- **direct**: the primary itself;
- **pgrouter**: transaction pooling, routing on, both replicas in the read set;
- **pgpool**: Pgpool-II 4.3 in streaming-replication mode with load balancing over the
  primary (weight 0) and both replicas (weight 1 each), connection cache on;

and the share of the benchmark's SELECTs each server executed, counted on the servers
(pg_stat_statements ``calls`` deltas, which are updated in shared memory at once, unlike
pg_stat_database's counters). Also the helpers the consistency benchmark shares: starting
pgrouter from an arbitrary config dict, and rewriting a marker-delimited RESULTS.md section.
Must not touch: pgrouter's code (it runs as a subprocess from a snapshot of the source).
Every wait is bounded; everything started here is stopped in ``finally`` blocks.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks import pgbench
from benchmarks.pgbench import PgbenchResult, Workload
from benchmarks.pooling import collect_env
from benchmarks.report import Table, divide, median, num, ratio
from benchmarks.targets import (
    REPO_ROOT,
    Endpoint,
    ManagedProcess,
    TargetError,
    direct_endpoint,
    pgrouter_config,
    raise_nofile,
    snapshot_pgrouter,
    venv_python,
)
from router.localcluster import LocalCluster, PgInstance, free_port

OUT_DIR = REPO_ROOT / "benchmarks" / "out"
BEGIN = "<!-- routing-results:begin (written by benchmarks/run.py --parts routing) -->"
END = "<!-- routing-results:end -->"


def markers(workers: int) -> tuple[str, str]:
    """RESULTS.md markers: a run with worker processes gets a section of its own."""
    if workers == 1:
        return BEGIN, END
    name = f"routing-results-{workers}-workers"
    return (f"<!-- {name}:begin (written by benchmarks/run.py --parts routing --workers "
            f"{workers}) -->", f"<!-- {name}:end -->")  # fmt: skip
TARGETS = ("direct", "pgrouter", "pgpool")
SELECT_PATTERN = "select abalance from pgbench_accounts%"


@dataclass
class Options:
    seconds: int = 12
    rounds: int = 3
    clients: int = 50
    pool_size: int = 20
    workers: int = 1  # pgrouter's worker processes (the pool size is split between them)
    scale: int = 10
    pgrouter_source: str = "worktree"
    results_path: Path | None = REPO_ROOT / "benchmarks" / "RESULTS.md"


@dataclass
class RoutedRun:
    """One pgbench run plus the per-server count of its SELECTs (server-side)."""

    result: PgbenchResult
    server_calls: dict[str, int] = field(default_factory=dict)


@dataclass
class Run:
    options: Options
    env: dict[str, str] = field(default_factory=dict)
    runs: list[RoutedRun] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    pgpool_choices: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- shared helpers


def write_section(path: Path, begin: str, end: str, body: str) -> None:
    """Replace the text between ``begin`` and ``end`` in ``path`` (or append the section)."""
    section = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def replicated_config(
    cluster: LocalCluster, port: int, pool_size: int, *, replicas: bool = True, workers: int = 1
) -> dict[str, Any]:
    """pgrouter's benchmark config (targets.pgrouter_config) plus both replicas."""
    config = pgrouter_config(cluster, port, pool_size, workers)
    db = config["databases"][cluster.APP_DB]
    db["replicas"] = (
        [{"host": r.host, "port": r.port, "dbname": cluster.APP_DB} for r in cluster.replicas]
        if replicas
        else []
    )
    config["monitor"] = {"user": cluster.APP_USER}
    return config


def start_pgrouter_config(
    name: str,
    cluster: LocalCluster,
    config: dict[str, Any],
    workdir: Path,
    src_dir: Path,
    policy: dict[str, Any] | None = None,
) -> ManagedProcess:
    """pgrouter as ``python -m router serve`` with ``config`` (its listen.port is used)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if policy is not None:
        policy_path = workdir / "policies.yaml"
        policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
        config.setdefault("routing", {})["policy_file"] = str(policy_path)
    config_path = workdir / "pgrouter.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = int(config["listen"]["port"])
    endpoint = Endpoint(
        name, "127.0.0.1", port, cluster.APP_USER, cluster.APP_PASSWORD, cluster.APP_DB
    )
    proc = ManagedProcess(name, endpoint, workdir / "pgrouter.log", (0, -15))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGROUTER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)
    argv = [venv_python(), "-m", "router", "serve", "-c", str(config_path)]
    proc._spawn(argv, env=env, cwd=src_dir)
    return proc


def start_replicated_cluster(base: Path, scale: int) -> LocalCluster:
    """Primary + 2 replicas, pgbench tables (scale), pg_stat_statements, replicas caught up."""
    cluster = LocalCluster(base, replicas=2, extra_conf={"max_connections": "300"})
    cluster.start()
    cluster.primary.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", dbname=cluster.APP_DB)
    pgbench.initialize(cluster.bindir / "pgbench", direct_endpoint(cluster), scale)
    cluster.primary.psql("CHECKPOINT")
    cluster.wait_replicated(timeout=120)
    return cluster


def statement_calls(inst: PgInstance, pattern: str) -> int:
    """Executions on ``inst`` of statements whose normalized text matches ``pattern``."""
    out = inst.psql(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements "
        f"WHERE query ILIKE '{pattern}'",
        dbname=LocalCluster.APP_DB,
    )
    return int(out or 0)


def calls_by_server(cluster: LocalCluster, pattern: str) -> dict[str, int]:
    return {inst.name: statement_calls(inst, pattern) for inst in cluster.instances}


def share_text(calls: dict[str, int], names: list[str]) -> str:
    total = sum(calls.values())
    if total <= 0:
        return "n/a"
    return " / ".join(f"{100 * calls.get(n, 0) / total:.1f}%" for n in names)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- Pgpool-II


def find_pgpool() -> str:
    found = shutil.which("pgpool") or (
        "/usr/sbin/pgpool" if os.access("/usr/sbin/pgpool", os.X_OK) else None
    )
    if found is None:
        raise TargetError("pgpool not found: run ./scripts/bootstrap.sh --bench (pgpool2)")
    return found


def pgpool_version() -> str:
    out = subprocess.run(
        [find_pgpool(), "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    return (out.stdout or out.stderr).strip() or "unknown"


PGPOOL_CHOICES = [
    "backend_clustering_mode = streaming_replication, load_balance_mode = on",
    "backend 0 = primary (weight 0, ALLOW_TO_FAILOVER), backends 1-2 = replicas "
    "(weight 1 each): reads only on replicas, as pgrouter's primary_reads_weight 0",
    "statement_level_load_balance = off (Pgpool's default: the replica is chosen per "
    "client session; pgbench keeps one session per client for the whole run)",
    "connection_cache = on, max_pool = 1, num_init_children = clients + 10 "
    "(process per client), child_life_time = 0",
    "auth: enable_pool_hba = off, pool_passwd with the app user's cleartext password "
    "(`app:TEXT...`), so Pgpool runs SCRAM with the client and with the servers; the "
    "servers' pg_hba is unchanged (scram-sha-256)",
    "sr_check and health_check every 10 s as postgres; delay_threshold 0 (no lag "
    "check); failover_on_backend_error off; log_statement/log_connections off",
]


def pgpool_conf(cluster: LocalCluster, workdir: Path, port: int, children: int) -> str:
    lines = [
        "backend_clustering_mode = 'streaming_replication'",
        "listen_addresses = '127.0.0.1'",
        f"port = {port}",
        f"unix_socket_directories = '{workdir}'",
        "pcp_listen_addresses = ''",
        f"pcp_port = {free_port()}",
        f"pcp_socket_dir = '{workdir}'",
        f"pid_file_name = '{workdir / 'pgpool.pid'}'",
        f"logdir = '{workdir}'",
        "log_destination = 'stderr'",
        "log_connections = off",
        "log_statement = off",
        "log_per_node_statement = off",
        "enable_pool_hba = off",
        f"pool_passwd = '{workdir / 'pool_passwd'}'",
        "allow_clear_text_frontend_auth = off",
        f"num_init_children = {children}",
        "max_pool = 1",
        "connection_cache = on",
        "child_life_time = 0",
        "child_max_connections = 0",
        "connection_life_time = 0",
        "client_idle_limit = 0",
        "load_balance_mode = on",
        "statement_level_load_balance = off",
        "delay_threshold = 0",
        "sr_check_period = 10",
        "sr_check_user = 'postgres'",
        f"sr_check_password = '{cluster.SUPERUSER_PASSWORD}'",
        "sr_check_database = 'postgres'",
        "health_check_period = 10",
        "health_check_user = 'postgres'",
        f"health_check_password = '{cluster.SUPERUSER_PASSWORD}'",
        "health_check_database = 'postgres'",
        "failover_on_backend_error = off",
        "use_watchdog = off",
        "memory_cache_enabled = off",
        "ssl = off",
    ]
    for i, inst in enumerate(cluster.instances):
        weight = 0 if i == 0 else 1
        lines += [
            f"backend_hostname{i} = '{inst.host}'",
            f"backend_port{i} = {inst.port}",
            f"backend_weight{i} = {weight}",
            f"backend_data_directory{i} = '{inst.datadir}'",
            f"backend_flag{i} = 'ALLOW_TO_FAILOVER'",
            f"backend_application_name{i} = '{inst.name}'",
        ]
    return "\n".join(lines) + "\n"


def start_pgpool(cluster: LocalCluster, workdir: Path, children: int) -> ManagedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "pgpool.conf"
    conf.write_text(pgpool_conf(cluster, workdir, port, children))
    (workdir / "pool_passwd").write_text(
        f"{cluster.APP_USER}:TEXT{cluster.APP_PASSWORD}\n"
        f"{cluster.SUPERUSER}:TEXT{cluster.SUPERUSER_PASSWORD}\n"
    )
    (workdir / "pcp.conf").write_text("")
    (workdir / "pool_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
    user: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(workdir, 0o700)
        os.chmod(workdir / "pool_passwd", 0o600)
    endpoint = Endpoint(
        "pgpool", "127.0.0.1", port, cluster.APP_USER, cluster.APP_PASSWORD, cluster.APP_DB
    )
    proc = ManagedProcess("pgpool", endpoint, workdir / "pgpool.log", (0, -15, 1))
    argv = [
        find_pgpool(), "-n", "-f", str(conf), "-F", str(workdir / "pcp.conf"),
        "-a", str(workdir / "pool_hba.conf"),
    ]  # fmt: skip
    with proc.log_path.open("ab") as log:
        proc._proc = subprocess.Popen(
            argv,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )
    deadline = time.monotonic() + 30
    last = ""
    while time.monotonic() < deadline:  # listening is not enough: wait for a real query
        if not proc.alive():
            raise TargetError(f"pgpool exited; log tail:\n{proc.log_text()[-3000:]}")
        try:
            import psycopg

            with psycopg.connect(endpoint.conninfo(connect_timeout=3), autocommit=True) as c:
                c.execute("SELECT 1").fetchone()
            return proc
        except Exception as exc:  # any failure: not ready yet
            last = str(exc)
            time.sleep(0.3)
    proc.stop()
    raise TargetError(f"pgpool not usable in 30s ({last}); log tail:\n{proc.log_text()[-3000:]}")


# --------------------------------------------------------------------------- measuring


def run_one(
    cluster: LocalCluster, endpoint: Endpoint, proc: ManagedProcess | None, workload: Workload,
    round_no: int, seconds: int,
) -> RoutedRun:  # fmt: skip
    before = calls_by_server(cluster, SELECT_PATTERN)
    cpu_before = sum(proc.cpu_seconds()) if proc else 0.0
    bench = pgbench.start(cluster.bindir / "pgbench", endpoint, workload, seconds)
    result = pgbench.finish(bench, workload, endpoint.name, round_no, seconds)
    if proc is not None and proc.name == "pgrouter" and proc.alive():
        result.proxy_cpu_s = sum(proc.cpu_seconds()) - cpu_before
    after = calls_by_server(cluster, SELECT_PATTERN)
    return RoutedRun(result, {k: after[k] - before.get(k, 0) for k in after})


def measure(opts: Options, workdir: Path, run: Run) -> None:
    src_dir = workdir / "src"
    run.env["pgrouter_source"] = snapshot_pgrouter(src_dir, opts.pgrouter_source)
    cluster = start_replicated_cluster(workdir / "cluster", opts.scale)
    procs: dict[str, ManagedProcess] = {}
    try:
        run.env.update(collect_env(cluster))
        run.env["pgpool"] = pgpool_version()
        config = replicated_config(cluster, free_port(), opts.pool_size, workers=opts.workers)
        procs["pgrouter"] = start_pgrouter_config(
            "pgrouter", cluster, config, workdir / "pgrouter", src_dir
        )
        procs["pgpool"] = start_pgpool(cluster, workdir / "pgpool", opts.clients + 10)
        run.pgpool_choices = PGPOOL_CHOICES
        endpoints = {"direct": direct_endpoint(cluster)}
        endpoints.update({name: p.endpoint for name, p in procs.items()})
        workload = Workload("select-only", "simple", opts.clients)
        for target in TARGETS:  # warm-up, not recorded
            warm = run_one(cluster, endpoints[target], procs.get(target), workload, 0, 3)
            if not warm.result.ok:
                run.anomalies.append(f"warm-up against {target}: {warm.result.error}")
        for round_no in range(1, opts.rounds + 1):
            for target in TARGETS:
                one = run_one(
                    cluster, endpoints[target], procs.get(target), workload, round_no,
                    opts.seconds,
                )  # fmt: skip
                run.runs.append(one)
                r = one.result
                print(
                    f"  round {round_no} {target:<8} tps={num(r.tps, 1):>10} "
                    f"lat={num(r.latency_ms, 3):>7} ms  servers={one.server_calls} "
                    f"{'ok' if r.ok else 'ERROR ' + str(r.error)}",
                    flush=True,
                )
                if not r.ok:
                    run.anomalies.append(f"{target} round {round_no}: {r.error}")
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


def tables(run: Run) -> list[Table]:
    by_target: dict[str, list[RoutedRun]] = {t: [] for t in TARGETS}
    for one in run.runs:
        by_target[one.result.target].append(one)
    tps = {t: median(o.result.tps for o in rs) for t, rs in by_target.items()}
    lat = {t: median(o.result.latency_ms for o in rs) for t, rs in by_target.items()}
    opts = run.options
    main = Table(
        f"pgbench -S -M simple, {opts.clients} clients, -j 2, {opts.seconds} s x "
        f"{opts.rounds} rounds (medians)",
        ["target", "TPS", "mean latency ms", "vs direct", "TPS of every round"],
    )
    for t in TARGETS:
        rounds = ", ".join(num(o.result.tps) for o in by_target[t])
        main.add(t, num(tps[t]), num(lat[t], 3), ratio(divide(tps[t], tps["direct"])), rounds)
    per_round = [
        divide(a.result.tps, b.result.tps)
        for a, b in zip(by_target["pgrouter"], by_target["pgpool"], strict=False)
    ]
    cpu = [divide(o.result.proxy_cpu_s, o.result.processed) for o in by_target["pgrouter"]]
    cpu_us = median(c * 1e6 if c is not None else None for c in cpu)
    main.note = (
        f"pgrouter/Pgpool-II: {ratio(divide(tps['pgrouter'], tps['pgpool']))} on the medians, "
        f"{ratio(median(per_round))} median of per-round ratios; pgrouter/direct: "
        f"{ratio(divide(tps['pgrouter'], tps['direct']))}. pgrouter CPU: {num(cpu_us, 1)} "
        "µs per transaction (utime+stime of its process / transactions)."
    )
    names = ["primary", "replica1", "replica2"]
    share = Table(
        "Where the SELECTs ran (pg_stat_statements calls on each server, summed over rounds)",
        ["target", "primary", "replica1", "replica2", "SELECTs counted", "pgbench txns"],
    )
    for t in TARGETS:
        calls: dict[str, int] = {}
        for o in by_target[t]:
            for k, v in o.server_calls.items():
                calls[k] = calls.get(k, 0) + v
        total = sum(calls.values())
        cells = share_text(calls, names).split(" / ") if total else ["n/a"] * 3
        processed = sum(o.result.processed or 0 for o in by_target[t])
        share.add(t, *cells, f"{total:,}", f"{processed:,}")
    share.note = (
        "Counted on the servers: the delta of pg_stat_statements.calls for "
        "`SELECT abalance FROM pgbench_accounts WHERE aid = $1` on each server around each run."
    )
    return [main, share]


def render(run: Run) -> str:
    env = run.env
    opts = run.options
    out = [
        "## Read routing: pgrouter vs Pgpool-II vs the primary (issue 4)"
        + (f", pgrouter with {opts.workers} worker processes" if opts.workers > 1 else ""),
        "",
        f"Measured {env.get('date', '?')} with `python benchmarks/run.py --parts routing "
        f"--seconds {opts.seconds} --rounds {opts.rounds} --workers {opts.workers}`. "
        f"Machine: {env.get('nproc')} "
        f"CPUs ({env.get('cpu')}), {env.get('ram')}, load average at start "
        f"{env.get('loadavg_start')}; {env.get('postgresql')}, {env.get('pgpool')}. pgrouter "
        f"commit {env.get('pgrouter_commit')} ({env.get('pgrouter_source')}).",
        "",
        "Setup: a primary and two streaming replicas (LocalCluster: fsync off, "
        "shared_buffers 32MB, max_connections 300), `pgbench -i -s "
        f"{opts.scale}` on the primary, replicas caught up before the first run. pgrouter: "
        f"transaction pooling, pool.size {opts.pool_size} per backend"
        + (
            f" split over `workers: {opts.workers}` processes"
            f" ({max(1, opts.pool_size // opts.workers)} each)"
            if opts.workers > 1
            else " (one process)"
        )
        + ", routing on, both "
        "replicas, primary_reads_weight 0, monitor as `app` every 100 ms, SCRAM for clients "
        "and servers. Targets interleaved direct → pgrouter → pgpool in every round, after "
        "an unrecorded 3-second warm-up of each. Everything shares the same CPUs.",
        "",
    ]
    for table in tables(run):
        out += [table.markdown("###"), ""]
    out += ["Pgpool-II configuration chosen:", ""]
    out += [f"- {c}" for c in run.pgpool_choices]
    out += [
        "",
        "Classification cost (the other half of issue 4's benchmark) is measured by "
        "`benchmarks/classify.py`: see the Classification section above.",
    ]
    if run.anomalies:
        out += ["", "Anomalies:", ""] + [f"- {a}" for a in run.anomalies]
    return "\n".join(out) + "\n"


def run_part(
    name: str,
    opts: Any,
    run: Any,
    measure_in: Callable[[Path], None],
    records: Callable[[], dict[str, Any]],
    tables_of: Callable[[], list[Table]],
    render_run: Callable[[], str],
    markers: tuple[str, str],
) -> None:
    """What every part does around its measurements: a private work directory, the
    tables on stdout, raw results in benchmarks/out/<name>-<time>.json, and (unless
    disabled) its section of RESULTS.md."""
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix=f"pgr-{name}-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        measure_in(workdir)
    for table in tables_of():
        print("\n" + table.text())
    for anomaly in run.anomalies:
        print("ANOMALY:", anomaly)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    data: dict[str, Any] = {"options": {**asdict(opts), "results_path": str(opts.results_path)}}
    data.update(env=run.env, anomalies=run.anomalies, **records())
    (OUT_DIR / f"{name}-{stamp}.json").write_text(json.dumps(data, indent=2, default=str))
    if opts.results_path is not None:
        write_section(opts.results_path, *markers, render_run())


def main(opts: Options) -> int:
    run = Run(opts)
    run_part(
        "routing",
        opts,
        run,
        lambda workdir: measure(opts, workdir, run),
        lambda: {
            "runs": [{**asdict(o.result), "server_calls": o.server_calls} for o in run.runs]
        },
        lambda: tables(run),
        lambda: render(run),
        markers(opts.workers),
    )
    return 0 if all(o.result.ok for o in run.runs) else 1
