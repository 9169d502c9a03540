"""Start the example web app the way it runs in production, on one machine.

    examples/webapp/run.sh            # or: .venv/bin/python -m examples.webapp
    examples/webapp/run.sh --check    # walk through the scenario once and exit (0: it held)

Starts a local PostgreSQL primary and one streaming replica (from the PostgreSQL
binaries, in a temporary directory), ``pgrouter serve`` in front of them (transaction
pooling, reads to the replica, ``on_stale: wait``), and two processes of
``examples/webapp/app.py`` on two ports. Then it walks through the scenario the app exists
for: WAL replay paused on the replica, a POST to process 1, and GETs from process 2 with
and without the cookie process 1 set. Afterwards everything stays up until Ctrl-C (unless
``--check``), with curl commands to try. Everything is stopped and removed on exit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from http.cookies import SimpleCookie
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import yaml

from router.localcluster import ClusterError, LocalCluster, free_port, libpq_dsn

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
COOKIE = "pgrouter_lsn"

POLICY = """\
version: 1
defaults:
  route: replica
  consistency: read_your_writes  # a read needs the client's own writes and its token
  on_stale: wait                 # a replica not there yet: wait for it ...
  wait_timeout: 300ms            # ... this long at most, then read from the primary
"""


class Stop(Exception):
    """SIGINT or SIGTERM."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signum)


# --------------------------------------------------------------------------- HTTP


def request(
    url: str, *, data: dict[str, str] | None = None, cookie: str | None = None
) -> tuple[int, dict[str, Any], str | None]:
    """(status, JSON body, the pgrouter_lsn cookie the answer set, if any)."""
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, method="POST" if data is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if cookie:
        req.add_header("Cookie", f"{COOKIE}={cookie}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, exc.headers, exc.read()
    jar: SimpleCookie = SimpleCookie()
    for header in headers.get_all("Set-Cookie") or []:
        jar.load(header)
    morsel = jar.get(COOKIE)
    return status, json.loads(raw or b"{}"), morsel.value if morsel else None


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:g}s")


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pgrouter exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pgrouter did not listen on {port} within {timeout:g}s")


# --------------------------------------------------------------------------- the stack


class Stack:
    """The cluster, pgrouter and the two web processes, and how to stop them."""

    def __init__(self, base: Path, pgrouter_port: int, web_ports: list[int]) -> None:
        self.base = base
        self.cluster = LocalCluster(base / "cluster", replicas=1)
        self.pgrouter_port = pgrouter_port or free_port()
        self.web_ports = web_ports
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def dsn(self) -> str:
        c = self.cluster
        return libpq_dsn(
            host="127.0.0.1",
            port=self.pgrouter_port,
            dbname=c.APP_DB,
            user=c.APP_USER,
            password=c.APP_PASSWORD,
        )

    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.web_ports]

    def start(self) -> None:
        print(f"starting a PostgreSQL primary and a streaming replica under {self.base} ...")
        self.cluster.start()
        self.start_pgrouter()
        for number, port in enumerate(self.web_ports, 1):
            self.spawn(
                f"web{number}",
                [
                    sys.executable,
                    str(HERE / "app.py"),
                    "--port",
                    str(port),
                    "--name",
                    f"web{number}",
                    "--dsn",
                    self.dsn,
                ],
            )
        for proc, url in zip(self.procs[1:], self.urls(), strict=True):
            wait_http(url + "/healthz", proc)
        self.cluster.wait_replicated()

    def start_pgrouter(self) -> None:
        c = self.cluster
        policy = self.base / "policy.yaml"
        policy.write_text(POLICY)
        config = {
            "listen": {"host": "127.0.0.1", "port": self.pgrouter_port},
            "auth": {"type": "scram-sha-256", "users": {c.APP_USER: {"password": c.APP_PASSWORD}}},
            "pool": {"mode": "transaction", "size": 10},
            "databases": {
                c.APP_DB: {
                    "primary": {"host": c.primary.host, "port": c.primary.port},
                    "replicas": [{"host": r.host, "port": r.port} for r in c.replicas],
                }
            },
            "monitor": {"user": c.APP_USER},
            "routing": {"policy_file": str(policy)},
            "log_level": "warning",
        }
        path = self.base / "pgrouter.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        proc = self.spawn("pgrouter", [sys.executable, "-m", "router", "serve", "-c", str(path)])
        wait_port(self.pgrouter_port, proc)

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.base / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        return proc

    def set_replay(self, paused: bool) -> None:
        replica = self.cluster.replicas[0]
        with psycopg.connect(replica.dsn(), autocommit=True) as conn:
            if paused:
                conn.execute("SELECT pg_wal_replay_pause()")
                while conn.execute("SELECT pg_is_wal_replay_paused()").fetchone() != (True,):
                    time.sleep(0.02)
            else:
                conn.execute("SELECT pg_wal_replay_resume()")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            self.cluster.stop()
        except ClusterError as exc:
            print(exc, file=sys.stderr)
        self.cluster.cleanup()


# --------------------------------------------------------------------------- the scenario


def walk_through(stack: Stack) -> bool:
    """The scenario of the README; True if every guarantee held."""
    web1, web2 = stack.urls()
    primary = stack.cluster.primary.port
    ok = True

    def show(what: str, body: dict[str, Any]) -> None:
        served = body.get("served_by", {})
        print(
            f"    {what}: {len(body.get('items', []))} items, query ran on "
            f"{served.get('server')} (port {served.get('port')}), presented min_lsn "
            f"{body.get('min_lsn')}"
        )

    print("\n1. pause WAL replay on the replica: it keeps answering, but stops moving forward")
    stack.set_replay(paused=True)
    try:
        name = f"item-{time.time():.0f}"
        status, body, cookie = request(web1 + "/items", data={"name": name})
        print(f"2. POST {web1}/items {{'name': '{name}'}} -> {status}, cookie {COOKIE}={cookie}")
        ok &= status == 201 and cookie is not None

        _, body, _ = request(web2 + "/items", cookie=cookie)
        found = any(i["name"] == name for i in body["items"])
        print(f"3. GET {web2}/items with the cookie (another process): new item present: {found}")
        show("answer", body)
        ok &= found and body["served_by"]["port"] == primary

        _, body, _ = request(web2 + "/items")
        found = any(i["name"] == name for i in body["items"])
        print(
            f"4. GET {web2}/items without the cookie (some other user): new item present: "
            f"{found} (allowed to be behind: that user never saw the item)"
        )
        show("answer", body)
    finally:
        print("5. resume WAL replay")
        stack.set_replay(paused=False)
    deadline = time.monotonic() + 10
    while True:
        _, body, _ = request(web2 + "/items", cookie=cookie)
        found = any(i["name"] == name for i in body["items"])
        if (found and body["served_by"]["port"] != primary) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    print(
        f"6. GET {web2}/items with the cookie: new item present: {found}; the replica "
        "has caught up, so it serves the read again"
    )
    show("answer", body)
    ok &= found
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="examples/webapp/run.sh", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--web-ports", default="8001,8002", help="the two processes' ports")
    parser.add_argument("--pgrouter-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--check", action="store_true", help="walk through once, then exit")
    args = parser.parse_args(argv)
    web_ports = [int(p) for p in args.web_ports.split(",")]
    if len(web_ports) != 2:
        parser.error("--web-ports takes two ports, e.g. 8001,8002")
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    base = Path(tempfile.mkdtemp(prefix="pgrouter-webapp-"))
    stack = Stack(base, args.pgrouter_port, web_ports)
    try:
        stack.start()
        web1, web2 = stack.urls()
        print(
            f"pgrouter   127.0.0.1:{stack.pgrouter_port}  (primary :{stack.cluster.primary.port},"
            f" replica :{stack.cluster.replicas[0].port})"
        )
        print(f"web1       {web1}   (log: {base / 'web1.log'})")
        print(f"web2       {web2}   (log: {base / 'web2.log'})")
        ok = walk_through(stack)
        print("\nresult: " + ("OK, the other process read the write" if ok else "FAILED"))
        if args.check:
            return 0 if ok else 1
        print(f"""
Everything keeps running until Ctrl-C. Try:
  curl -si -c /tmp/jar -H 'Content-Type: application/json' -d '{{"name": "hello"}}' {web1}/items
  curl -s -b /tmp/jar {web2}/items
  open {web1}/ in a browser
  pause replay: PGPASSWORD={stack.cluster.SUPERUSER_PASSWORD} psql -h 127.0.0.1 \\
      -p {stack.cluster.replicas[0].port} -U {stack.cluster.SUPERUSER} \\
      -c 'SELECT pg_wal_replay_pause()'      (pg_wal_replay_resume() to resume)
""")
        while True:
            time.sleep(3600)
    except Stop as exc:
        print(f"\n{exc}: stopping")
        return 128 + exc.signum
    except (ClusterError, RuntimeError, OSError, psycopg.Error) as exc:
        print(f"failed: {exc}", file=sys.stderr)
        for log in sorted(base.glob("*.log")):
            print(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:]))
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping the web processes, pgrouter and PostgreSQL; removing the files ...")
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
