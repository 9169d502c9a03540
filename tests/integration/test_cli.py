"""The command line: --version, check (validation, masking, env overrides), serve's logs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from harness import REPO_ROOT, ProxyProcess, base_config
from util import connect, scalar, wait_for

from router.localcluster import LocalCluster

pytestmark = pytest.mark.integration

ProxyFactory = Callable[..., ProxyProcess]

SECRET = "s3cret-app-pw"
DB_SECRET = "s3cret-db-pw"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PGROUTER_")}
    return subprocess.run(
        [sys.executable, "-m", "router", *args],
        cwd=REPO_ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def sample_config() -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 6543},
        "auth": {
            "type": "scram-sha-256",
            "users": {"app": {"password": SECRET}, "reporting": {"password": None}},
        },
        "pool": {"size": 5},
        "databases": {
            "app": {
                "primary": {"host": "127.0.0.1", "port": 5432},
                "replicas": [{"host": "127.0.0.1", "port": 5433}],
                "user": "app",
                "password": DB_SECRET,
            }
        },
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_version_prints_the_package_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"pgrouter {version('pgrouter')}"


def test_check_prints_the_effective_config_with_passwords_masked(tmp_path: Path) -> None:
    path = write_config(tmp_path / "pgrouter.yaml", sample_config())
    proc = run_cli("check", "-c", str(path))
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert DB_SECRET not in proc.stdout + proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["auth"]["users"]["app"]["password"] not in (None, "", SECRET)
    assert printed["databases"]["app"]["password"] not in (None, "", DB_SECRET)
    assert printed["auth"]["users"]["reporting"]["password"] is None
    # Effective: the file's values and every default the file left out.
    assert printed["listen"]["port"] == 6543
    assert printed["pool"]["size"] == 5
    assert printed["databases"]["app"]["replicas"][0]["port"] == 5433
    assert printed["pool"]["mode"] == "session"
    assert "server_reset_query" in printed["pool"]
    assert "max_message_size" in printed["listen"]


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda c: c["databases"]["app"]["replicas"][0].update(port=70000),
         "databases.app.replicas.0.port"),
        (lambda c: c["pool"].update(sise=3), "pool.sise"),
        (lambda c: c["listen"].update(client_login_timeout="soon"), "listen.client_login_timeout"),
    ],
    ids=["port-out-of-range", "unknown-field", "bad-duration"],
)  # fmt: skip
def test_check_rejects_an_invalid_config_naming_the_field(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], path: str
) -> None:
    config = sample_config()
    mutate(config)
    proc = run_cli("check", "-c", str(write_config(tmp_path / "bad.yaml", config)))
    assert proc.returncode == 2
    assert path in proc.stderr
    assert proc.stdout == ""


def test_check_warns_when_read_your_writes_routes_have_no_write_lsn(tmp_path: Path) -> None:
    config = sample_config()
    config["databases"]["app"]["capture_write_lsn"] = False
    proc = run_cli("check", "-c", str(write_config(tmp_path / "pgrouter.yaml", config)))
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["databases"]["app"]["capture_write_lsn"] is False
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, proc.stderr
    assert "databases.app.capture_write_lsn is off" in warnings[0]


def test_check_on_a_missing_file_exits_2(tmp_path: Path) -> None:
    proc = run_cli("check", "-c", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2
    assert "nope.yaml" in proc.stderr


def test_environment_overrides_show_in_the_checked_config(tmp_path: Path) -> None:
    path = write_config(tmp_path / "pgrouter.yaml", sample_config())
    proc = run_cli("check", "-c", str(path), env={"PGROUTER_POOL__SIZE": "7"})
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["pool"]["size"] == 7
    assert printed["listen"]["port"] == 6543  # the rest of the file still applies


def test_serve_logs_who_connected_from_where_and_why_it_ended(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(base_config(pg_cluster))
    with connect(proxy.dsn()) as conn:
        assert scalar(conn, "SELECT 1") == 1
        address = peer_address(conn)
    with pytest.raises(psycopg.OperationalError):
        connect(proxy.dsn(password="wrong"))

    def session_lines() -> list[str] | None:
        lines = [line for line in proxy.log_text().splitlines() if address in line]
        return lines if len(lines) >= 2 else None

    lines = wait_for(session_lines, 5, f"log lines about the client at {address}")
    login, end = lines[0], lines[-1]
    assert LocalCluster.APP_USER in login
    assert LocalCluster.APP_USER in end
    assert "Terminate" in end  # the reason: psycopg said goodbye

    rejected = wait_for(
        lambda: [line for line in proxy.log_text().splitlines() if "28P01" in line],
        5,
        "a log line about the failed login",
    )
    assert "password authentication failed" in rejected[-1]
    assert "127.0.0.1:" in rejected[-1]


def peer_address(conn: psycopg.Connection[Any]) -> str:
    """The client's own address, which is how the proxy names the peer in its log."""
    sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    try:
        local = sock.getsockname()
    finally:
        sock.close()
    return f"{local[0]}:{local[1]}"
