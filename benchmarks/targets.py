"""The things a benchmark talks to: the primary itself, PgBouncer and pgrouter.

Owns: writing pgrouter's YAML and PgBouncer's ini/userlist, starting both as subprocesses
on free loopback ports, waiting (bounded) until they listen, stopping them (SIGTERM, then
SIGKILL), and reading a process's resident memory and CPU time from /proc.
Must not touch: the proxy's own modules (pgrouter is driven from outside, as a user
would run it), the PostgreSQL cluster's lifecycle (LocalCluster owns that).

PgBouncer refuses to run as root; when we are root it is started as root with
``user = postgres`` in its ini, so it drops privileges itself and the pid we hold is
PgBouncer's own (no ``runuser`` in between).
"""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from router.localcluster import LocalCluster, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
NOFILE = 20000  # 5,000 idle clients need one descriptor each, plus server connections
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class TargetError(RuntimeError):
    """A proxy could not be started, or exited early; the message carries its log tail."""


@dataclass(frozen=True)
class Endpoint:
    """Where a client connects to reach one target."""

    name: str
    host: str
    port: int
    user: str
    password: str
    dbname: str

    def conninfo(self, **extra: str | int) -> str:
        parts = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": self.dbname,
            "sslmode": "disable",
            **extra,
        }
        return " ".join(f"{key}={value}" for key, value in parts.items())


def raise_nofile(limit: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE of this process towards ``limit``; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < limit:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return limit
        except (ValueError, OSError):
            limit = hard
    if soft < limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    return max(soft, limit)


def _preexec_nofile() -> None:
    raise_nofile()


def proc_status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise TargetError(f"/proc/{pid}/status has no {field}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (pgrouter's workers run under a supervisor)."""
    found = [pid]
    for index in range(len(found) + 1_000):
        if index >= len(found):
            break
        current = found[index]
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        found += [int(child) for child in children]
    return found


def proc_cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU time of ``pid`` and its live descendants (all threads), in s."""
    user = system = 0.0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as fh:
                text = fh.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        user += int(fields[11]) / _CLK_TCK
        system += int(fields[12]) / _CLK_TCK
    return user, system


def proc_runqueue_wait_seconds(pid: int) -> float:
    """Time the threads of ``pid`` and its descendants spent runnable but waiting for a
    CPU (schedstat)."""
    total_ns = 0
    for member in process_tree(pid):
        try:
            tasks = list(Path(f"/proc/{member}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total_ns += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return total_ns / 1e9


def _wait_listening(
    host: str, port: int, timeout: float, exited: Callable[[], int | None], what: str, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = exited()
        if code is not None:
            raise TargetError(f"{what} exited with code {code}; log tail:\n{_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TargetError(f"{what} did not listen on {host}:{port} in {timeout}s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ManagedProcess:
    """A started proxy: its pid, log, endpoint, and a bounded stop()."""

    def __init__(
        self, name: str, endpoint: Endpoint, log_path: Path, clean_exit: tuple[int, ...] = (0,)
    ) -> None:
        self.name = name
        self.clean_exit = clean_exit  # exit codes after SIGTERM that mean a normal stop
        self.endpoint = endpoint
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def _spawn(
        self, argv: list[str], env: dict[str, str] | None = None, cwd: Path = REPO_ROOT
    ) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_preexec_nofile,
            )
        _wait_listening(
            self.endpoint.host,
            self.endpoint.port,
            30.0,
            self._proc.poll,
            self.name,
            self.log_path,
        )

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise TargetError(f"{self.name} not started")
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def rss_kb(self) -> int:
        return proc_status_kb(self.pid, "VmRSS")

    def hwm_kb(self) -> int:
        return proc_status_kb(self.pid, "VmHWM")

    def cpu_seconds(self) -> tuple[float, float]:
        """(user, system) CPU seconds so far."""
        return proc_cpu_seconds(self.pid)

    def runqueue_wait_seconds(self) -> float:
        return proc_runqueue_wait_seconds(self.pid)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop_unclean(self, timeout: float = 10.0) -> int | None:
        """Stop; the exit code if it was not a normal one for this program, else None."""
        code = self.stop(timeout)
        return None if code is None or code in self.clean_exit else code

    def stop(self, timeout: float = 10.0) -> int | None:
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)
        return self._proc.returncode


def venv_python() -> str:
    candidate = REPO_ROOT / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def pgrouter_config(
    cluster: LocalCluster, port: int, pool_size: int, workers: int = 1
) -> dict[str, Any]:
    """Transaction pooling, SCRAM for clients with the app user's plaintext password.
    With ``workers`` > 1 each worker gets ``pool_size // workers`` connections per pool,
    so the servers see the same number of connections in total."""
    db = cluster.APP_DB
    primary = cluster.primary
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port, "max_client_conn": 10000},
        "auth": {
            "type": "scram-sha-256",
            "users": {cluster.APP_USER: {"password": cluster.APP_PASSWORD}},
        },
        "pool": {
            "mode": "transaction",
            "size": max(1, pool_size // workers),
            "query_wait_timeout": "30s",
        },
        "databases": {db: {"primary": {"host": primary.host, "port": primary.port, "dbname": db}}},
        "log_level": "warning",
    }
    if workers > 1:
        config["workers"] = workers
    return config


PGROUTER_PACKAGES = ("router", "protocol", "policies", "pgrouter_native")
PGROUTER_FILES = ("pyproject.toml",)  # mypy's settings, for the compiled build


def snapshot_pgrouter(dest: Path, source: str) -> str:
    """Copy pgrouter's packages into ``dest`` and give them their compiled modules (copied
    from the working tree's build when the sources are the same, else built there);
    pgrouter then runs from there.

    ``source`` is "head" (the committed tree, ``git archive HEAD``) or "worktree" (the
    files as they are now, uncommitted edits included). A snapshot keeps a run coherent
    while someone edits the working tree. Returns a description for the report.
    """
    described = _copy_sources(dest, source)
    built = subprocess.run(
        [venv_python(), "-m", "pgrouter_native", "build", "--reuse",
         str(REPO_ROOT / "build" / "native")],
        cwd=dest, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if built.returncode != 0:
        raise TargetError(f"building pgrouter's compiled modules failed:\n{built.stderr[-2000:]}")
    status = subprocess.run(
        [venv_python(), "-m", "pgrouter_native", "status"],
        cwd=dest, capture_output=True, text=True, timeout=60, check=False,
    ).stdout.strip()  # fmt: skip
    return f"{described}; {status.split(' in ')[0]}"


def _copy_sources(dest: Path, source: str) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, timeout=20, check=True,
    ).stdout.strip()  # fmt: skip
    if source == "head":
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", "HEAD", *PGROUTER_PACKAGES,
             *PGROUTER_FILES],
            capture_output=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, timeout=60, check=True)
        return f"git HEAD {commit} (committed tree only)"
    for package in PGROUTER_PACKAGES:
        if (REPO_ROOT / package).is_dir():
            shutil.copytree(
                REPO_ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__")
            )
    for name in PGROUTER_FILES:
        shutil.copy2(REPO_ROOT / name, dest / name)
    status = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", *PGROUTER_PACKAGES],
        capture_output=True, text=True, timeout=20, check=False,
    ).stdout  # fmt: skip
    if not status.strip():
        return f"working tree = git HEAD {commit}"
    changed = len(status.splitlines())
    return f"working tree: git HEAD {commit} + {changed} uncommitted/untracked files"


def start_pgrouter(
    cluster: LocalCluster,
    workdir: Path,
    pool_size: int,
    src_dir: Path = REPO_ROOT,
    workers: int = 1,
) -> ManagedProcess:
    """pgrouter as ``python -m router serve``, importing its packages from ``src_dir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config_path = workdir / "pgrouter.yaml"
    config = pgrouter_config(cluster, port, pool_size, workers)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    endpoint = Endpoint(
        "pgrouter", "127.0.0.1", port, cluster.APP_USER, cluster.APP_PASSWORD, cluster.APP_DB
    )
    proc = ManagedProcess("pgrouter", endpoint, workdir / "pgrouter.log", (0, -15))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGROUTER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)
    argv = [venv_python(), "-m", "router", "serve", "-c", str(config_path)]
    # With -m, the working directory comes first on sys.path, ahead of the editable install.
    proc._spawn(argv, env=env, cwd=src_dir)
    return proc


def find_pgbouncer() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )
    if found is None:
        raise TargetError(
            "pgbouncer not found: run ./scripts/bootstrap.sh --bench (apt-get install pgbouncer)"
        )
    return found


def pgbouncer_version() -> str:
    out = subprocess.run(
        [find_pgbouncer(), "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    return out.splitlines()[0].strip() if out else "unknown"


def pgbouncer_ini(
    cluster: LocalCluster, workdir: Path, port: int, pool_size: int, reuseport: bool = False
) -> str:
    primary = cluster.primary
    lines = [
        "[databases]",
        f"{cluster.APP_DB} = host={primary.host} port={primary.port} dbname={cluster.APP_DB}",
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = scram-sha-256",
        f"auth_file = {workdir / 'userlist.txt'}",
        "pool_mode = transaction",
        f"default_pool_size = {pool_size}",
        "max_client_conn = 10000",
        "ignore_startup_parameters = extra_float_digits,options",
        f"logfile = {workdir / 'pgbouncer.log'}",
        f"pidfile = {workdir / 'pgbouncer.pid'}",
        # pgrouter at log_level warning logs no connections either.
        "log_connections = 0",
        "log_disconnections = 0",
        "query_wait_timeout = 30",
    ]
    if reuseport:  # several processes on one port: the kernel spreads connections
        lines.append("so_reuseport = 1")
    if os.geteuid() == 0:
        lines.append("user = postgres")
    return "\n".join(lines) + "\n"


def start_pgbouncer(
    cluster: LocalCluster, workdir: Path, pool_size: int, processes: int = 1
) -> ManagedProcess:
    """PgBouncer in transaction mode. With ``processes`` > 1, that many PgBouncers share
    the port (``so_reuseport``), ``pool_size // processes`` server connections each (the
    same total, as pgrouter's ``workers``), under a shell that stops them all on SIGTERM,
    so the process tree's CPU time is all of theirs."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    dirs = [workdir] if processes <= 1 else [workdir / f"p{i}" for i in range(processes)]
    size = max(1, pool_size // max(1, processes))
    for directory in dirs:
        directory.mkdir(parents=True, exist_ok=True)
        ini = pgbouncer_ini(cluster, directory, port, size, reuseport=processes > 1)
        (directory / "pgbouncer.ini").write_text(ini)
        (directory / "userlist.txt").write_text(
            f'"{cluster.APP_USER}" "{cluster.APP_PASSWORD}"\n'
        )
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (directory, *directory.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
            os.chmod(directory, 0o700)
    endpoint = Endpoint(
        "pgbouncer", "127.0.0.1", port, cluster.APP_USER, cluster.APP_PASSWORD, cluster.APP_DB
    )
    # stdout/stderr go to a file of their own: PgBouncer also writes `logfile`.
    # PgBouncer's SIGTERM is "immediate shutdown", which exits with status 1 by design.
    proc = ManagedProcess("pgbouncer", endpoint, workdir / "pgbouncer.stdout", (0, 1, 143))
    binary = find_pgbouncer()
    if processes <= 1:
        proc._spawn([binary, str(workdir / "pgbouncer.ini")], cwd=workdir)
        return proc
    starts = "; ".join(
        f"'{binary}' '{d / 'pgbouncer.ini'}' & p{i}=$!" for i, d in enumerate(dirs)
    )
    pids = " ".join(f"$p{i}" for i in range(len(dirs)))
    script = f'{starts}; trap "kill {pids} 2>/dev/null; wait" TERM INT; wait'
    proc._spawn(["/bin/sh", "-c", script], cwd=workdir)
    return proc


def start_floor(cluster: LocalCluster, workdir: Path, pool_size: int) -> ManagedProcess:
    """benchmarks/floor.py: the least a Python transaction pooler can do (see there)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    primary = cluster.primary
    endpoint = Endpoint(
        "floor", "127.0.0.1", port, cluster.APP_USER, cluster.APP_PASSWORD, cluster.APP_DB
    )
    proc = ManagedProcess("floor", endpoint, workdir / "floor.log", (0, -15))
    argv = [
        venv_python(), str(REPO_ROOT / "benchmarks" / "floor.py"), "--port", str(port),
        "--server-port", str(primary.port), "--user", cluster.APP_USER,
        "--password", cluster.APP_PASSWORD, "--dbname", cluster.APP_DB,
        "--pool-size", str(pool_size),
    ]  # fmt: skip
    proc._spawn(argv)
    return proc


def direct_endpoint(cluster: LocalCluster) -> Endpoint:
    primary = cluster.primary
    return Endpoint(
        "direct", primary.host, primary.port, cluster.APP_USER, cluster.APP_PASSWORD,
        cluster.APP_DB,
    )  # fmt: skip
