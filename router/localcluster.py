"""Throwaway local PostgreSQL clusters: one primary plus streaming replicas.

Owns: finding the PostgreSQL server binaries, creating a primary with ``initdb`` and
streaming replicas with ``pg_basebackup -R`` under one base directory, each on a free
loopback port, starting/stopping/restarting them, running setup SQL through the ``psql``
binary, and waiting for replication to catch up. Used by the test fixtures and by
``pgrouter demo``.

Must not touch: the proxy, the system's default cluster, or any directory outside
``base_dir`` (apart from making its parent directories traversable when run as root).
No asyncio and no runtime dependency on a driver: everything goes through subprocesses.

PostgreSQL refuses to run as root, so when the effective uid is 0 every server-side
binary (initdb, pg_ctl, pg_basebackup) runs as the ``postgres`` OS user via ``runuser``,
and ``base_dir`` is chowned to it. ``psql`` connects over TCP and runs as the caller.
"""

from __future__ import annotations

import atexit
import logging
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

INSTALL_HINT = "apt-get update && apt-get install -y postgresql"
PG_OS_USER = "postgres"
KEEP_ENV = "PGROUTER_KEEP_CLUSTER"
BINDIR_ENV = "PGROUTER_PG_BINDIR"

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "postgres-pw"
APP_USER = "app"
APP_PASSWORD = "app-pw"
MD5_USER = "app_md5"
MD5_PASSWORD = "md5-pw"
APP_DB = "app"

# Passwords filled in by PgInstance.psql()/dsn() when the caller gives none.
KNOWN_PASSWORDS: Mapping[str, str] = {
    SUPERUSER: SUPERUSER_PASSWORD,
    APP_USER: APP_PASSWORD,
    MD5_USER: MD5_PASSWORD,
}

_MAX_SOCKET_DIR_LEN = 90  # sun_path is 108 bytes and PostgreSQL appends "/.s.PGSQL.NNNNN"
_START_TIMEOUT_S = 60


class ClusterError(RuntimeError):
    """A local cluster could not be found, started, queried or replicated."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def libpq_dsn(**params: str | int | None) -> str:
    """Build a libpq key=value connection string, quoting values and dropping Nones."""
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        text = str(value)
        if text == "" or re.search(r"[\s'\\]", text):
            text = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _has_initdb(bindir: Path) -> bool:
    return (bindir / "initdb").is_file() and os.access(bindir / "initdb", os.X_OK)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)


def find_pg_bindir() -> Path:
    """Locate a directory holding the PostgreSQL server binaries (initdb, pg_ctl, ...)."""
    env = os.environ.get(BINDIR_ENV)
    if env:
        if _has_initdb(Path(env)):
            return Path(env)
        raise ClusterError(f"{BINDIR_ENV}={env} has no initdb; install with: {INSTALL_HINT}")
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        # Debian's /usr/bin/pg_config may belong to libpq-dev and name a client-only bindir.
        if out and _has_initdb(Path(out)):
            return Path(out)
    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    candidates += [p.parent for p in Path("/usr").glob("pgsql-*/bin/initdb")]
    candidates = [c for c in candidates if _has_initdb(c)]
    if candidates:
        return max(candidates, key=lambda c: _version_key(c))
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise ClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install them with: "
        f"{INSTALL_HINT} (or set {BINDIR_ENV})"
    )


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _pg_os_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        pass
    log.info("creating the %s OS user (PostgreSQL refuses to run as root)", PG_OS_USER)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", PG_OS_USER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(PG_OS_USER)


def _as_pg_user(argv: Sequence[str]) -> list[str]:
    """Prefix argv so that it runs as the postgres OS user when we are root."""
    if _running_as_root():
        return ["runuser", "-u", PG_OS_USER, "--", *argv]
    return list(argv)


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without PG* variables that could redirect a client."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra)
    return env


def _run(
    argv: Sequence[str],
    *,
    what: str,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
    timeout: float = 120.0,
    logfile: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            env=env if env is not None else _clean_env(),
            cwd="/",
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterError(f"{what} failed: {exc}") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        if logfile is not None:
            detail += f"\n--- last lines of {logfile} ---\n{_tail(logfile, 30)}"
        raise ClusterError(f"{what} failed (exit {proc.returncode}): {detail}")
    return proc


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _conf_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _append_conf(path: Path, settings: Mapping[str, str]) -> None:
    lines = [f"{key} = {_conf_value(value)}" for key, value in settings.items()]
    with path.open("a") as fh:
        fh.write("\n# pgrouter LocalCluster\n" + "\n".join(lines) + "\n")


def _make_traversable(path: Path) -> None:
    """Let the postgres OS user reach ``path``: add o+x to ancestors that lack it."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)


# --------------------------------------------------------------------------- instance


@dataclass
class PgInstance:
    """One PostgreSQL server (primary or standby) in a LocalCluster."""

    name: str
    host: str
    port: int
    datadir: Path
    bindir: Path
    logfile: Path
    extra_passwords: dict[str, str] = field(default_factory=dict)

    def _bin(self, tool: str) -> str:
        return str(self.bindir / tool)

    def start(self, wait: bool = True) -> None:
        if self.is_running():
            return
        argv = [self._bin("pg_ctl"), "start", "-D", str(self.datadir), "-l", str(self.logfile)]
        argv += ["-w", "-t", str(_START_TIMEOUT_S)] if wait else ["-W"]
        _run(_as_pg_user(argv), what=f"starting {self.name}", logfile=self.logfile)

    def stop(self, mode: str = "fast") -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        argv = [self._bin("pg_ctl"), "stop", "-D", str(self.datadir), "-m", mode, "-w"]
        try:
            _run(_as_pg_user(argv), what=f"stopping {self.name}", logfile=self.logfile)
        except ClusterError:
            if self.is_running():
                raise

    def restart(self) -> None:
        self.stop("fast")
        self.start()

    def is_running(self) -> bool:
        if not (self.datadir / "postmaster.pid").exists():
            return False
        argv = [self._bin("pg_ctl"), "status", "-D", str(self.datadir)]
        proc = subprocess.run(
            _as_pg_user(argv), capture_output=True, env=_clean_env(), cwd="/", check=False
        )
        return proc.returncode == 0

    def password_for(self, user: str) -> str | None:
        return self.extra_passwords.get(user) or KNOWN_PASSWORDS.get(user)

    def psql(
        self,
        sql: str,
        *,
        dbname: str = "postgres",
        user: str = SUPERUSER,
        password: str | None = None,
        timeout: float = 60.0,
    ) -> str:
        """Run SQL (several statements allowed, each in its own transaction) over TCP."""
        argv = [self._bin("psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-f", "-"]
        argv += ["-h", self.host, "-p", str(self.port), "-U", user, "-d", dbname]
        env = _clean_env(PGCONNECT_TIMEOUT="10", PGSSLMODE="disable")
        secret = password if password is not None else self.password_for(user)
        if secret is not None:
            env["PGPASSWORD"] = secret
        proc = _run(argv, what=f"psql on {self.name}", env=env, input_text=sql, timeout=timeout)
        return proc.stdout.strip()

    def dsn(
        self, user: str = SUPERUSER, password: str | None = None, dbname: str = "postgres"
    ) -> str:
        """libpq key=value DSN; a known user's password is filled in when none is given."""
        secret = password if password is not None else self.password_for(user)
        return libpq_dsn(host=self.host, port=self.port, dbname=dbname, user=user, password=secret)


# --------------------------------------------------------------------------- cluster


class LocalCluster:
    """A primary and ``replicas`` streaming standbys under ``base_dir``.

    Theory of operation: ``__init__`` only picks ports and paths. ``start()`` runs initdb
    for the primary, writes postgresql.conf/pg_hba.conf, starts it, creates the roles and
    database, then clones each replica with ``pg_basebackup -R`` (which writes
    ``standby.signal`` and ``primary_conninfo``), gives it its own port and starts it, and
    finally proves replication with a marker row. ``stop()`` stops everything;
    ``cleanup()`` (run by ``__exit__``) also deletes ``base_dir`` unless
    PGROUTER_KEEP_CLUSTER=1.
    """

    SUPERUSER = SUPERUSER
    SUPERUSER_PASSWORD = SUPERUSER_PASSWORD
    APP_USER = APP_USER
    APP_PASSWORD = APP_PASSWORD
    MD5_USER = MD5_USER
    MD5_PASSWORD = MD5_PASSWORD
    APP_DB = APP_DB

    def __init__(
        self, base_dir: Path, replicas: int = 2, *, extra_conf: dict[str, str] | None = None
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.bindir = find_pg_bindir()
        self.extra_conf = dict(extra_conf or {})
        self.primary = self._instance("primary")
        self.replicas = [self._instance(f"replica{i}") for i in range(1, replicas + 1)]
        self.socket_dir = self.base_dir / "run"
        self._own_socket_dir: Path | None = None
        self._atexit_registered = False

    def _instance(self, name: str) -> PgInstance:
        return PgInstance(
            name=name,
            host="127.0.0.1",
            port=free_port(),
            datadir=self.base_dir / name,
            bindir=self.bindir,
            logfile=self.base_dir / f"{name}.log",
        )

    @property
    def instances(self) -> list[PgInstance]:
        return [self.primary, *self.replicas]

    # ---- lifecycle

    def start(self) -> None:
        began = time.monotonic()
        self._prepare_base_dir()
        self._register_atexit()
        self._init_primary()
        self.primary.start()
        self._create_roles()
        self._clone_replicas()
        for replica in self.replicas:
            replica.start()
        self._verify_replication()
        log.info(
            "local cluster up in %.1fs: primary :%d, replicas %s",
            time.monotonic() - began,
            self.primary.port,
            [r.port for r in self.replicas],
        )

    def stop(self) -> None:
        errors = []
        for inst in [*self.replicas, self.primary]:
            try:
                inst.stop("immediate")
            except ClusterError as exc:
                errors.append(str(exc))
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False
        if errors:
            raise ClusterError("; ".join(errors))

    def cleanup(self) -> None:
        """Delete the cluster's files unless PGROUTER_KEEP_CLUSTER=1."""
        if os.environ.get(KEEP_ENV) == "1":
            log.info("keeping cluster files in %s", self.base_dir)
            return
        shutil.rmtree(self.base_dir, ignore_errors=True)
        if self._own_socket_dir is not None:
            shutil.rmtree(self._own_socket_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self._stop_quietly()
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self.cleanup()

    def _stop_quietly(self) -> None:
        try:
            self.stop()
        except ClusterError as exc:
            log.warning("stopping local cluster: %s", exc)

    def _register_atexit(self) -> None:
        # pg_ctl detaches the postmaster (setsid), so an interrupted test run would
        # otherwise leave servers behind.
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True

    # ---- replication

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Wait until every running replica has replayed the primary's current insert LSN."""
        target = self.primary.psql("SELECT pg_current_wal_insert_lsn()")
        deadline = time.monotonic() + timeout
        for replica in self.replicas:
            if not replica.is_running():
                continue
            sql = f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
            while replica.psql(sql) != "t":
                if time.monotonic() > deadline:
                    replayed = replica.psql("SELECT pg_last_wal_replay_lsn()")
                    raise ClusterError(
                        f"{replica.name} replayed only {replayed}, primary is at {target} "
                        f"after {timeout}s"
                    )
                time.sleep(0.02)

    # ---- start() steps

    def _prepare_base_dir(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for inst in self.instances:
            if inst.datadir.exists():
                raise ClusterError(
                    f"{inst.datadir} already exists; remove it or use an empty base_dir"
                )
        sockdir = self.socket_dir
        if len(str(sockdir)) > _MAX_SOCKET_DIR_LEN:
            sockdir = Path(tempfile.mkdtemp(prefix="pgr-"))
            self._own_socket_dir = sockdir
        sockdir.mkdir(exist_ok=True)
        self.socket_dir = sockdir
        if _running_as_root():
            user = _pg_os_user()
            for path in (self.base_dir, sockdir):
                _make_traversable(path)
                os.chown(path, user.pw_uid, user.pw_gid)

    def _init_primary(self) -> None:
        pwfile = self.base_dir / ".pwfile"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        if _running_as_root():
            user = _pg_os_user()
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        argv = [
            str(self.bindir / "initdb"),
            "-D", str(self.primary.datadir),
            "-U", SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",
        ]  # fmt: skip
        try:
            _run(_as_pg_user(argv), what="initdb")
        finally:
            pwfile.unlink(missing_ok=True)
        _append_conf(self.primary.datadir / "postgresql.conf", self._primary_conf())
        (self.primary.datadir / "pg_hba.conf").write_text(_PG_HBA)

    def _primary_conf(self) -> dict[str, str]:
        conf = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.primary.port),
            "unix_socket_directories": str(self.socket_dir),
            "cluster_name": self.primary.name,
            "wal_level": "replica",
            "max_wal_senders": "10",
            "hot_standby": "on",
            "wal_keep_size": "256MB",
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "max_connections": "200",
            "password_encryption": "scram-sha-256",
            "logging_collector": "off",
            "log_line_prefix": "%m [%p] %q%u@%d ",
        }
        if self._has_pg_stat_statements():
            conf["shared_preload_libraries"] = "pg_stat_statements"
        conf.update(self.extra_conf)
        return conf

    def _has_pg_stat_statements(self) -> bool:
        pg_config = self.bindir / "pg_config"
        if pg_config.is_file():
            out = subprocess.run(
                [str(pg_config), "--pkglibdir", "--sharedir"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            if len(out) == 2:
                libdir, sharedir = map(Path, out)
                return (libdir / "pg_stat_statements.so").exists() and (
                    sharedir / "extension" / "pg_stat_statements.control"
                ).exists()
        return (self.bindir.parent / "lib" / "pg_stat_statements.so").exists()

    def _create_roles(self) -> None:
        self.primary.psql(
            f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}';\n"
            "SET password_encryption = 'md5';\n"
            f"CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';\n"
            "RESET password_encryption;\n"
            f"CREATE DATABASE {APP_DB} OWNER {APP_USER};\n"
            f"GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {APP_DB} TO {MD5_USER};\n"
        )
        self.primary.psql(
            f"GRANT USAGE, CREATE ON SCHEMA public TO {MD5_USER};\n"
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {APP_USER} IN SCHEMA public\n"
            f"  GRANT ALL ON TABLES TO {MD5_USER};\n"
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {APP_USER} IN SCHEMA public\n"
            f"  GRANT ALL ON SEQUENCES TO {MD5_USER};\n",
            dbname=APP_DB,
        )

    def _clone_replicas(self) -> None:
        """pg_basebackup every replica at once: the copy is bound by file creation, not CPU."""
        env = _clean_env(PGPASSWORD=SUPERUSER_PASSWORD, PGSSLMODE="disable")
        procs = []
        for replica in self.replicas:
            argv = [
                str(self.bindir / "pg_basebackup"),
                "-D", str(replica.datadir),
                "-h", self.primary.host,
                "-p", str(self.primary.port),
                "-U", SUPERUSER,
                "-R", "-X", "stream", "-c", "fast", "--no-sync",
            ]  # fmt: skip
            procs.append(
                subprocess.Popen(
                    _as_pg_user(argv),
                    env=env,
                    cwd="/",
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        errors = []
        for replica, proc in zip(self.replicas, procs, strict=True):
            try:
                _, stderr = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, stderr = proc.communicate()
            if proc.returncode != 0:
                errors.append(f"pg_basebackup for {replica.name} failed: {stderr.strip()}")
        if errors:
            raise ClusterError("; ".join(errors))
        for replica in self.replicas:
            _append_conf(
                replica.datadir / "postgresql.conf",
                {"port": str(replica.port), "cluster_name": replica.name},
            )

    def _verify_replication(self, timeout: float = 30.0) -> None:
        marker = uuid.uuid4().hex
        self.primary.psql(
            "CREATE TABLE IF NOT EXISTS pgrouter_cluster_check (marker text PRIMARY KEY);\n"
            f"INSERT INTO pgrouter_cluster_check VALUES ('{marker}');"
        )
        query = f"SELECT count(*) FROM pgrouter_cluster_check WHERE marker = '{marker}'"
        deadline = time.monotonic() + timeout
        for replica in self.replicas:
            last_error = ""
            while True:
                try:
                    if replica.psql(query) == "1":
                        break
                except ClusterError as exc:
                    last_error = str(exc)
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"{replica.name} did not replicate a marker row within {timeout}s "
                        f"({last_error})\n--- {replica.logfile} ---\n{_tail(replica.logfile, 30)}"
                    )
                time.sleep(0.05)


_PG_HBA = """\
# pgrouter LocalCluster: TCP on loopback only; app_md5 keeps an md5 verifier.
# TYPE  DATABASE     USER      ADDRESS        METHOD
local   all          all                      trust
local   replication  all                      trust
host    all          app_md5   127.0.0.1/32   md5
host    all          all       127.0.0.1/32   scram-sha-256
host    replication  all       127.0.0.1/32   scram-sha-256
"""
