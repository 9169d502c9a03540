"""Test harness: run the proxy as a subprocess, build its config, drive Toxiproxy.

Owns: ``ProxyProcess`` (``python -m router serve -c config.yaml`` on a free port, with
its log), ``base_config()`` (the proxy config for a LocalCluster), and
``ToxiproxyHandle`` (a toxiproxy-python client bound to one ToxiproxyServer).
Fixtures that use these live in conftest.py. Must not import the proxy's own modules:
the proxy is tested from outside, over sockets.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import toxiproxy
import yaml

from router.localcluster import LocalCluster, PgInstance, free_port, libpq_dsn
from router.toxiproxy_server import ToxiproxyServer

REPO_ROOT = Path(__file__).resolve().parents[1]

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-pw"

Config = dict[str, Any]


class ProxyStartError(RuntimeError):
    """The proxy process exited or never listened; the message carries its log tail."""


class ProxyProcess:
    """One pgrouter process started from a config dict.

    ``argv`` replaces the default command (``python -m router serve -c {config}``);
    the tokens ``{config}`` and ``{port}`` in it are substituted.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        workdir: Path,
        *,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config: Config = copy.deepcopy(dict(config))
        listen = self.config.setdefault("listen", {})
        listen.setdefault("host", "127.0.0.1")
        if not listen.get("port"):
            listen["port"] = free_port()
        self.host: str = "127.0.0.1"
        self.port: int = int(listen["port"])
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "pgrouter.yaml"
        self.log_path = workdir / "pgrouter.log"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        template = argv or [sys.executable, "-m", "router", "serve", "-c", "{config}"]
        self.argv = [
            arg.replace("{config}", str(self.config_path)).replace("{port}", str(self.port))
            for arg in template
        ]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._proc: subprocess.Popen[bytes] | None = None

    # ---- lifecycle

    def start(self, timeout: float = 20.0) -> ProxyProcess:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_listening(timeout)
        return self

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.returncode
            if code is not None:
                raise ProxyStartError(
                    f"proxy exited with code {code} before listening on port {self.port}; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ProxyStartError(
            f"proxy did not listen on {self.host}:{self.port} within {timeout}s; "
            f"log tail:\n{self.log_tail()}"
        )

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("proxy not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def send_signal(self, sig: int) -> None:
        if self._proc is None:
            raise RuntimeError("proxy not started")
        self._proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        if self._proc is None:
            raise RuntimeError("proxy not started")
        return self._proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self._proc.returncode

    # ---- inspection

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def dsn(
        self,
        user: str = LocalCluster.APP_USER,
        password: str | None = LocalCluster.APP_PASSWORD,
        dbname: str = LocalCluster.APP_DB,
        **params: str | int | None,
    ) -> str:
        return libpq_dsn(
            host=self.host, port=self.port, dbname=dbname, user=user, password=password, **params
        )


# --------------------------------------------------------------------------- config


def _endpoint(inst: PgInstance, dbname: str) -> dict[str, Any]:
    return {"host": inst.host, "port": inst.port, "dbname": dbname}


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> Config:
    """``base`` updated with ``overrides``; nested dicts merge, anything else replaces."""
    merged: Config = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def base_config(cluster: LocalCluster, **overrides: Any) -> Config:
    """The proxy config for ``cluster``'s app database; ``overrides`` are deep-merged.

    ``listen.port`` is left out so ProxyProcess picks a free one. Example:
    ``base_config(c, pool={"mode": "transaction"}, log_level="debug")``.
    """
    db = cluster.APP_DB
    config: Config = {
        "listen": {
            "host": "127.0.0.1",
            "max_client_conn": 1000,
            "client_login_timeout": "15s",
            "max_message_size": 268435456,
        },
        "auth": {
            "type": "scram-sha-256",
            "admin_users": [ADMIN_USER],
            "users": {
                cluster.APP_USER: {"password": cluster.APP_PASSWORD},
                cluster.MD5_USER: {"password": cluster.MD5_PASSWORD},
                ADMIN_USER: {"password": ADMIN_PASSWORD},
            },
            "auth_user": None,
            "auth_query": "SELECT usename, passwd FROM pg_shadow WHERE usename = $1",
        },
        "tls": {
            "client_mode": "disable",
            "cert_file": None,
            "key_file": None,
            "server_mode": "disable",
            "server_ca_file": None,
        },
        "pool": {
            "mode": "session",
            "size": 10,
            "min_size": 0,
            "max_db_connections": 0,
            "server_connect_timeout": "5s",
            "server_idle_timeout": "10m",
            "server_lifetime": "1h",
            "server_reset_query": "DISCARD ALL",
            "query_wait_timeout": "30s",
        },
        "databases": {
            db: {
                "primary": _endpoint(cluster.primary, db),
                "replicas": [_endpoint(r, db) for r in cluster.replicas],
            }
        },
        "log_level": "info",
    }
    return deep_merge(config, overrides)


# --------------------------------------------------------------------------- toxiproxy


class ToxiproxyHandle:
    """A toxiproxy-python client bound to ``server``; tracks nothing, lists from the API."""

    def __init__(self, server: ToxiproxyServer) -> None:
        self.server = server
        self.client = toxiproxy.Toxiproxy()
        # toxiproxy-python keeps host/port in class attributes shared by every client.
        self.client.update_api_consumer(server.host, server.port)

    def make_proxy(self, name: str, upstream_host: str, upstream_port: int) -> tuple[Any, int]:
        """Create proxy ``name`` on a free loopback port; returns (proxy, listen_port)."""
        port = free_port()
        proxy = self.client.create(
            upstream=f"{upstream_host}:{upstream_port}",
            name=name,
            listen=f"127.0.0.1:{port}",
            enabled=True,
        )
        return proxy, port

    def destroy_all(self) -> None:
        self.client.destroy_all()
