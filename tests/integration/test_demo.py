"""``pgrouter demo``: runs to the end with no stale reads, shows the pause, reads on the
replica, and leaves nothing behind, also when stopped with SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import REPO_ROOT

from router.localcluster import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# "  5s  paused       6.6 kB  0.90s        54        17 (22)        32 (32)      0  why..."
LINE = re.compile(
    r"^\s*(?P<t>\d+)s\s+(?P<phase>normal|paused|resumed)\s+"
    r"(?:(?P<lag>[\d.]+) (?P<unit>B|kB|MB|GB)\s+(?P<lag_s>[\d.]+)s|down)\s+"
    r"(?P<writes>\d+)\s+(?P<replica>\d+) \((?P<replica_seen>\d+)\)\s+"
    r"(?P<primary>\d+) \((?P<primary_seen>\d+)\)\s+(?P<stale>\d+)\s+(?P<why>.*)$"
)
UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3}


@dataclass
class Second:
    t: int
    phase: str
    lag_bytes: float | None
    writes: int
    replica: int
    replica_seen: int
    primary: int
    primary_seen: int
    stale: int
    why: str


def parse(output: str) -> list[Second]:
    seconds = []
    for text in output.splitlines():
        m = LINE.match(text)
        if m is None:
            continue
        lag = None if m["lag"] is None else float(m["lag"]) * UNITS[m["unit"]]
        seconds.append(
            Second(
                int(m["t"]),
                m["phase"],
                lag,
                int(m["writes"]),
                int(m["replica"]),
                int(m["replica_seen"]),
                int(m["primary"]),
                int(m["primary_seen"]),
                int(m["stale"]),
                m["why"],
            )
        )
    return seconds


def demo_argv(seconds: int, *extra: str) -> list[str]:
    port = str(free_port())
    return [
        sys.executable,
        "-m",
        "router",
        "demo",
        "--seconds",
        str(seconds),
        "--port",
        port,
        *extra,
    ]


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGROUTER_"))}
    return {**env, "PYTHONUNBUFFERED": "1"}


def temp_dir_of(output: str) -> Path:
    match = re.search(r"under (/\S+) \.\.\.", output)
    assert match, output
    return Path(match.group(1))


def postgres_running_under(path: Path) -> list[str]:
    proc = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False)
    return [line for line in proc.stdout.splitlines() if str(path) in line]


def test_demo_runs_the_three_phases_without_a_stale_read() -> None:
    proc = subprocess.run(
        demo_argv(12),
        cwd=REPO_ROOT,
        env=demo_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output

    seconds = parse(proc.stdout)
    assert [s.t for s in seconds] == list(range(1, 13)), output
    phases = [s.phase for s in seconds]
    assert phases == ["normal"] * 4 + ["paused"] * 4 + ["resumed"] * 4, output
    assert "SELECT pg_wal_replay_pause()" in output
    assert "SELECT pg_wal_replay_resume()" in output

    # While replay is paused, the replica falls behind the primary.
    paused = [s for s in seconds if s.phase == "paused"]
    assert any((s.lag_bytes or 0) > 0 for s in paused), output
    # ... so the read-backs (which need the client's own write) go to the primary.
    assert sum(s.primary_seen for s in paused) > 0, output
    assert any("replica-stale" in s.why for s in paused), output

    # In the normal phase the replica serves reads, as pgrouter counts them and as the
    # clients see them (inet_server_port()).
    normal = [s for s in seconds if s.phase == "normal"]
    assert sum(s.replica for s in normal) > 0, output
    assert sum(s.replica_seen for s in normal) > 0, output
    assert sum(s.writes for s in seconds) > 0, output

    # No stale read, ever; the summary says so.
    assert all(s.stale == 0 for s in seconds), output
    assert re.search(r"^\s*stale reads\s+0$", proc.stdout, re.MULTILINE), output
    assert re.search(r"^\s*errors\s+0$", proc.stdout, re.MULTILINE), output
    assert "result: OK" in proc.stdout
    assert "psql" in proc.stdout.split("summary")[-1]  # how to connect, at the end

    # Everything is cleaned up.
    base = temp_dir_of(output)
    assert not base.exists(), f"{base} was left behind"
    assert postgres_running_under(base) == []


def test_sigterm_stops_the_demo_and_removes_everything() -> None:
    proc = subprocess.Popen(
        demo_argv(120),
        cwd=REPO_ROOT,
        env=demo_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 150
    try:
        for line in proc.stdout:  # until the workload has run for two seconds
            lines.append(line)
            if re.match(r"^\s*2s\s", line) or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines) + rest
    assert any(re.match(r"^\s*2s\s", line) for line in lines), output
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "SIGTERM: stopping" in output
    base = temp_dir_of(output)
    assert not base.exists(), f"{base} was left behind"
    assert postgres_running_under(base) == []
