"""Running pgbench against one endpoint and reading its summary.

Owns: the pgbench command line for a workload, a bounded run (timeout = duration + a
margin), and parsing TPS, mean latency, processed and failed transaction counts.
Must not touch: which targets exist or in what order they run (pooling.py decides).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.targets import Endpoint

_TPS = re.compile(r"^tps = ([0-9.]+)", re.M)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)


@dataclass(frozen=True)
class Workload:
    """One pgbench configuration: script, query protocol and client count."""

    script: str  # "select-only" (-S) or "tpcb" (the built-in TPC-B-like script)
    protocol: str  # pgbench -M: simple | extended | prepared
    clients: int

    @property
    def key(self) -> str:
        return f"{self.script} -M {self.protocol} c={self.clients}"

    @property
    def threads(self) -> int:
        return min(self.clients, 2)  # the machine has 2 cores; more threads only contend

    def args(self, seconds: int) -> list[str]:
        argv = ["-n", "-T", str(seconds), "-c", str(self.clients), "-j", str(self.threads)]
        argv += ["-M", self.protocol]
        if self.script == "select-only":
            argv.append("-S")
        return argv


@dataclass
class PgbenchResult:
    workload: str
    target: str
    round: int
    tps: float | None
    latency_ms: float | None
    processed: int | None
    failed: int | None
    returncode: int
    error: str | None = None
    proxy_cpu_s: float | None = None  # CPU the proxy process used during the run
    proxy_sys_s: float | None = None  # ... of which in the kernel (syscalls, loopback TCP)
    proxy_wait_s: float | None = None  # time the proxy was runnable but not on a CPU

    @property
    def ok(self) -> bool:
        return self.error is None and self.tps is not None


def pgbench_env(endpoint: Endpoint) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=endpoint.password, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    return env


def connection_args(endpoint: Endpoint) -> list[str]:
    return ["-h", endpoint.host, "-p", str(endpoint.port), "-U", endpoint.user]


def parse_output(text: str) -> tuple[float | None, float | None, int | None, int | None]:
    def grab(pattern: re.Pattern[str]) -> str | None:
        match = pattern.search(text)
        return match.group(1) if match else None

    tps, latency, processed, failed = (grab(p) for p in (_TPS, _LATENCY, _PROCESSED, _FAILED))
    return (
        float(tps) if tps else None,
        float(latency) if latency else None,
        int(processed) if processed else None,
        int(failed) if failed else None,
    )


def start(
    pgbench: Path, endpoint: Endpoint, workload: Workload, seconds: int
) -> subprocess.Popen[str]:
    argv = [str(pgbench), *connection_args(endpoint), *workload.args(seconds), endpoint.dbname]
    return subprocess.Popen(
        argv,
        env=pgbench_env(endpoint),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd="/",
    )


def finish(
    proc: subprocess.Popen[str], workload: Workload, target: str, round_no: int, seconds: int
) -> PgbenchResult:
    """Wait (bounded) for a pgbench started by ``start`` and parse what it printed."""
    try:
        out, _ = proc.communicate(timeout=seconds + 90)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
        out += f"\n(pgbench killed after {seconds + 90}s)"
        proc.returncode = proc.returncode if proc.returncode is not None else -9
    tps, latency, processed, failed = parse_output(out)
    error = None
    if proc.returncode != 0 or tps is None or failed or not processed:
        lines = [ln for ln in out.splitlines() if ln.strip()]
        notable = [ln for ln in lines if "error" in ln.lower() or "abort" in ln.lower()]
        detail = " | ".join(notable or lines[-4:])[:600]
        if not processed and not notable:
            detail = "no transaction completed within -T (logins took the whole run?); " + detail
        error = f"exit {proc.returncode}: {detail}"
    return PgbenchResult(
        workload.key, target, round_no, tps, latency, processed, failed, proc.returncode, error
    )


def initialize(pgbench: Path, endpoint: Endpoint, scale: int) -> None:
    argv = [str(pgbench), *connection_args(endpoint), "-i", "-q", "-s", str(scale)]
    proc = subprocess.run(
        [*argv, endpoint.dbname],
        env=pgbench_env(endpoint),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd="/",
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {proc.stderr.strip()}")
