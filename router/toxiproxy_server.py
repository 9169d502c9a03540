"""Find, install and run a Toxiproxy server for network-fault tests.

Owns: locating the ``toxiproxy-server`` binary (or Go's ``server`` binary from
``go install``), installing the pinned version with ``go install``, and running one
server process on a loopback port until stopped.

Must not touch: the proxies and toxics inside the server (tests drive those through
toxiproxy-python) and the proxy under test.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from router.localcluster import free_port

log = logging.getLogger(__name__)

# The module proxy's version list stops at v2.5.0 (so "@latest" resolves there), but
# v2.12.0 is fetchable and is the newest release.
TOXIPROXY_VERSION = "v2.12.0"
TOXIPROXY_MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"
BIN_ENV = "PGROUTER_TOXIPROXY_BIN"
INSTALL_HINT = (
    f"go install {TOXIPROXY_MODULE}@{TOXIPROXY_VERSION} (or run scripts/bootstrap.sh; "
    f"or point {BIN_ENV} at a toxiproxy-server binary)"
)


def _find_go() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    fallback = Path("/usr/local/go/bin/go")
    return str(fallback) if fallback.is_file() else None


def _go_bin_dirs(go: str | None) -> list[Path]:
    dirs: list[Path] = []
    if go is not None:
        out = subprocess.run(
            [go, "env", "GOBIN", "GOPATH"], capture_output=True, text=True, check=False
        ).stdout.splitlines()
        if len(out) == 2:
            gobin, gopath = out
            if gobin:
                dirs.append(Path(gobin))
            dirs += [Path(p) / "bin" for p in gopath.split(os.pathsep) if p]
    dirs.append(Path.home() / "go" / "bin")
    return dirs


def _is_toxiproxy(path: Path) -> bool:
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    try:
        proc = subprocess.run(
            [str(path), "-version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "toxiproxy" in (proc.stdout + proc.stderr).lower()


def find_toxiproxy_server() -> Path | None:
    """The toxiproxy server binary: $PGROUTER_TOXIPROXY_BIN, PATH, or Go's bin dir."""
    env = os.environ.get(BIN_ENV)
    if env:
        return Path(env) if _is_toxiproxy(Path(env)) else None
    on_path = shutil.which("toxiproxy-server")
    if on_path:
        return Path(on_path)
    return _find_in_go_bin_dirs()


def _find_in_go_bin_dirs() -> Path | None:
    for bindir in _go_bin_dirs(_find_go()):
        # `go install .../cmd/server` names the binary after its package: "server".
        if _is_toxiproxy(bindir / "server"):
            return bindir / "server"
    return None


def install_toxiproxy_server() -> Path:
    """``go install`` the pinned Toxiproxy server and return its path."""
    go = _find_go()
    if go is None:
        raise RuntimeError(
            "Go is needed to install toxiproxy-server but `go` was not found; install Go "
            f"(apt-get install -y golang-go needs Go >= 1.23 for {TOXIPROXY_VERSION}), "
            f"then run: {INSTALL_HINT}"
        )
    target = f"{TOXIPROXY_MODULE}@{TOXIPROXY_VERSION}"
    proc = subprocess.run([go, "install", target], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`go install {target}` failed: {proc.stderr.strip()}")
    found = _find_in_go_bin_dirs()
    if found is None:
        raise RuntimeError(f"`go install {target}` succeeded but no server binary was found")
    return found


class ToxiproxyServer:
    """One toxiproxy server process with its HTTP API on ``host:port``."""

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        binary: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port()
        self.binary = binary
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._own_log = False

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        if self._proc is not None:
            return
        binary = self.binary or find_toxiproxy_server()
        if binary is None:
            raise RuntimeError(
                f"toxiproxy server binary not found; install it with: {INSTALL_HINT}"
            )
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="toxiproxy-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
            self._own_log = True
        with self.log_path.open("ab") as logfile:
            self._proc = subprocess.Popen(
                [str(binary), "-host", self.host, "-port", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready(timeout)
        log.info("toxiproxy %s listening on %s", binary, self.api_url)

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.api_url}/version", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"toxiproxy did not start on {self.api_url}:\n{tail}")

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._own_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None
            self._own_log = False

    def __enter__(self) -> ToxiproxyServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
