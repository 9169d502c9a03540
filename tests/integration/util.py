"""Helpers shared by the foundation integration tests (auth, TLS, pooling, bad input, CLI).

Owns: psycopg shortcuts, polling with a deadline, a raw-socket v3 client built on the
``protocol`` codec (psycopg cannot report the SQLSTATE of a failed connection attempt, so
login errors are read off the wire), counting a proxy's server connections in
``pg_stat_activity``, and a self-signed certificate made with the ``openssl`` CLI.
Must not touch: the proxy's own modules; the proxy is tested from outside, over sockets.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from protocol import backend as be
from protocol import frontend as fe
from protocol.framing import FrameReader
from protocol.md5 import md5_response
from protocol.scram import SCRAM_SHA_256, ScramClient
from protocol.startup import PROTOCOL_3_0, StartupMessage
from router.localcluster import LocalCluster, PgInstance

T = TypeVar("T")

CHECKER_APP = "pgrouter-test-checker"
OPENSSL_HINT = "apt-get install -y openssl"

Frame = tuple[str, bytes]


# --------------------------------------------------------------------------- psycopg


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    kwargs.setdefault("connect_timeout", 5)
    return psycopg.connect(dsn, autocommit=True, **kwargs)


def scalar(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None, f"no row from {sql!r}"
    return row[0]


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


class Background:
    """Run ``fn`` in a thread; keep its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self._fn = fn
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:
            self.error = exc
        self.finished_at = time.monotonic()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"background call still running after {timeout}s"
        if self.error is not None:
            raise self.error
        return self.result


# --------------------------------------------------------------------------- server side view


class Backends:
    """Counts the proxy's server connections on one PostgreSQL server.

    Only backends started after this object was made are counted, so server connections
    of proxies from earlier tests (still exiting) never confuse a test.
    """

    def __init__(self, inst: PgInstance) -> None:
        self.conn = connect(inst.dsn("postgres"), application_name=CHECKER_APP)
        self.since = scalar(self.conn, "SELECT clock_timestamp()")

    def pids(self, users: Iterable[str] = (LocalCluster.APP_USER,), **where: str) -> set[int]:
        sql = (
            "SELECT pid FROM pg_stat_activity WHERE usename = ANY(%s)"
            " AND backend_type = 'client backend' AND application_name <> %s"
            " AND backend_start >= %s"
        )
        params: list[Any] = [list(users), CHECKER_APP, self.since]
        for column, value in where.items():
            sql += f" AND {column} = %s"
            params.append(value)
        return {row[0] for row in self.conn.execute(sql, params)}

    def count(self, users: Iterable[str] = (LocalCluster.APP_USER,), **where: str) -> int:
        return len(self.pids(users, **where))

    def close(self) -> None:
        self.conn.close()


class Sampler:
    """Samples ``Backends.count`` in a thread; ``peak`` is the highest count seen."""

    def __init__(self, inst: PgInstance, users: Iterable[str], interval: float = 0.02) -> None:
        self.backends = Backends(inst)
        self.users = list(users)
        self.peak = 0
        self.samples = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.backends.count(self.users))
            self.samples += 1
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.backends.close()


# --------------------------------------------------------------------------- raw protocol


@dataclass
class LoginResult:
    """What a raw login received: every message, the auth requests, and the error if any."""

    frames: list[Frame]
    auth: list[be.BackendMessage]
    error: be.ErrorResponse | None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.frames) and self.frames[-1][0] == "Z"

    def parameters(self) -> dict[str, str]:
        out = {}
        for tag, body in self.frames:
            if tag == "S":
                ps = be.ParameterStatus.decode(body)
                out[ps.name] = ps.value
        return out


class RawClient:
    """A v3 client on a plain socket, speaking through the ``protocol`` encoders."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        local = self.sock.getsockname()
        self.address = f"{local[0]}:{local[1]}"  # as the proxy sees (and logs) this client
        self.timeout = timeout
        self._reader = FrameReader()
        self._frames: deque[Frame] = deque()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float | None = None) -> Frame | None:
        """The next message, or None once the proxy has closed the connection."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no message from the proxy in time")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError("no message from the proxy in time") from None
            except ConnectionResetError:
                return None
            if not data:
                return None
            self._frames.extend(self._reader.feed(data))
        return self._frames.popleft()

    def read_until_closed(self, timeout: float | None = None) -> list[Frame]:
        """Every message up to EOF; fails if the proxy keeps the connection open."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        frames = []
        while (frame := self.recv(max(deadline - time.monotonic(), 0.001))) is not None:
            frames.append(frame)
        return frames

    def startup(self, user: str, database: str = LocalCluster.APP_DB, **params: str) -> None:
        packet = StartupMessage({"user": user, "database": database, **params}, PROTOCOL_3_0)
        self.send(packet.encode())

    def login(
        self,
        user: str,
        password: str | None,
        database: str = LocalCluster.APP_DB,
        **params: str,
    ) -> LoginResult:
        """Send a StartupMessage and answer authentication until ReadyForQuery or an error."""
        self.startup(user, database, **params)
        return self.authenticate(user, password)

    def authenticate(self, user: str, password: str | None) -> LoginResult:
        frames: list[Frame] = []
        auth: list[be.BackendMessage] = []
        scram: ScramClient | None = None
        while True:
            frame = self.recv()
            if frame is None:
                raise AssertionError(f"proxy closed the connection during login after {frames}")
            frames.append(frame)
            tag, body = frame
            if tag == "E":
                return LoginResult(frames, auth, be.ErrorResponse.decode(body))
            if tag == "Z":
                return LoginResult(frames, auth, None)
            if tag != "R":
                continue
            request = be.decode_backend(tag, body)
            auth.append(request)
            scram = self._answer(request, user, password, scram)

    def _answer(
        self, request: be.BackendMessage, user: str, password: str | None, scram: ScramClient | None
    ) -> ScramClient | None:
        secret = password if password is not None else ""
        if isinstance(request, be.AuthenticationMD5Password):
            self.send(fe.PasswordMessage(md5_response(user, secret, request.salt)).encode())
        elif isinstance(request, be.AuthenticationCleartextPassword):
            self.send(fe.PasswordMessage(secret).encode())
        elif isinstance(request, be.AuthenticationSASL):
            assert SCRAM_SHA_256 in request.mechanisms
            scram = ScramClient(password=secret)
            self.send(fe.SASLInitialResponse(SCRAM_SHA_256, scram.client_first()).encode())
        elif isinstance(request, be.AuthenticationSASLContinue):
            assert scram is not None
            self.send(fe.SASLResponse(scram.handle_server_first(request.data)).encode())
        elif isinstance(request, be.AuthenticationSASLFinal):
            assert scram is not None
            scram.verify_server_final(request.data)
        return scram

    def query(self, sql: str) -> list[Frame]:
        """Simple query; every message up to and including ReadyForQuery."""
        self.send(fe.Query(sql).encode())
        frames = []
        while True:
            frame = self.recv()
            assert frame is not None, f"connection closed while running {sql!r}"
            frames.append(frame)
            if frame[0] == "Z":
                return frames


def login_error(
    port: int, user: str, password: str | None, database: str = LocalCluster.APP_DB, **params: str
) -> be.ErrorResponse:
    """The ErrorResponse a raw login gets; fails if the login succeeds."""
    with RawClient(port) as client:
        result = client.login(user, password, database, **params)
        assert result.error is not None, f"login as {user} unexpectedly succeeded"
        return result.error


def errors_in(frames: list[Frame]) -> list[be.ErrorResponse]:
    return [be.ErrorResponse.decode(body) for tag, body in frames if tag == "E"]


def data_values(frames: list[Frame]) -> list[tuple[bytes | None, ...]]:
    return [be.DataRow.decode(body).values for tag, body in frames if tag == "D"]


# --------------------------------------------------------------------------- certificates


def _make_traversable(path: Path) -> None:
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def self_signed_cert(directory: Path) -> CertPair:
    """A self-signed cert/key for CN=localhost, usable by the postgres OS user too.

    PostgreSQL insists that its key file belongs to the server's OS user with mode 0600;
    when the tests run as root the pair is handed to ``postgres`` (root can still read it
    for the proxy's own TLS).
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail(f"the openssl CLI is needed to make a test certificate: {OPENSSL_HINT}")
    directory.mkdir(parents=True, exist_ok=True)
    pair = CertPair(directory / "server.crt", directory / "server.key")
    argv = [
        openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
        "-subj", "/CN=localhost", "-keyout", str(pair.key), "-out", str(pair.cert),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"openssl failed: {proc.stderr}"
    os.chmod(pair.key, 0o600)
    os.chmod(pair.cert, 0o644)
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in (directory, pair.cert, pair.key):
            os.chown(path, user.pw_uid, user.pw_gid)
        _make_traversable(directory)
        os.chmod(directory, 0o755)
    return pair
