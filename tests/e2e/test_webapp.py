"""The example web app (examples/webapp): two processes behind pgrouter, where a write in
one request hands its LSN token to the browser in a cookie and a read in the next request,
served by the other process, presents it. With WAL replay paused on every replica, the
read with the cookie must still see the write; a read without it may not, but then only
because a replica served it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import REPO_ROOT, ProxyProcess, base_config

from e2e.util import superuser_conn, unique_name, wait_for
from router.localcluster import LocalCluster, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

APP = REPO_ROOT / "examples" / "webapp" / "app.py"
COOKIE = "pgrouter_lsn"
LSN = re.compile(r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$")

ProxyFactory = Callable[..., ProxyProcess]


@dataclass
class Answer:
    status: int
    body: Any
    cookie: str | None  # the pgrouter_lsn cookie the answer set
    headers: dict[str, str]

    @property
    def names(self) -> set[str]:
        return {item["name"] for item in self.body["items"]}

    @property
    def port(self) -> int:
        return int(self.body["served_by"]["port"])


def call(
    url: str,
    *,
    data: dict[str, str] | None = None,
    cookie: str | None = None,
    form: bool = False,
) -> Answer:
    payload = None
    kind = "application/json"
    if data is not None:
        payload = (urllib.parse.urlencode(data) if form else json.dumps(data)).encode()
        kind = "application/x-www-form-urlencoded" if form else kind
    req = urllib.request.Request(url, data=payload, method="POST" if data is not None else "GET")
    req.add_header("Content-Type", kind)
    if cookie is not None:
        req.add_header("Cookie", f"{COOKIE}={cookie}")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=30) as resp:
            status, headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, exc.headers, exc.read()
    jar: SimpleCookie = SimpleCookie()
    for header in headers.get_all("Set-Cookie") or []:
        jar.load(header)
    morsel = jar.get(COOKIE)
    is_json = headers.get("Content-Type", "").startswith("application/json")
    body = json.loads(raw) if is_json else raw.decode()
    return Answer(status, body, morsel.value if morsel else None, dict(headers.items()))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def lsn(token: str) -> int:
    high, low = token.split("/")
    return (int(high, 16) << 32) | int(low, 16)


# --------------------------------------------------------------------------- fixtures


@dataclass
class WebApp:
    urls: list[str]
    logs: list[Path]

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            for log in self.logs
        )


@pytest.fixture(params=["wait", "primary"], ids=["on_stale-wait", "on_stale-primary"])
def webapp(
    request: pytest.FixtureRequest,
    pg_cluster: LocalCluster,
    start_proxy: ProxyFactory,
    tmp_path: Path,
) -> Iterator[WebApp]:
    """pgrouter (transaction pooling, the on_stale of the param) and two app processes:
    web1 presents tokens with SET pgrouter.min_lsn, web2 with a statement comment."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\n"
        "defaults:\n"
        "  route: replica\n"
        "  consistency: read_your_writes\n"
        f"  on_stale: {request.param}\n"
        "  wait_timeout: 200ms\n"
    )
    proxy = start_proxy(
        base_config(
            pg_cluster,
            pool={"mode": "transaction"},
            monitor={"user": LocalCluster.APP_USER},
            routing={"policy_file": str(policy)},
        )
    )
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    urls: list[str] = []
    for number, present in ((1, "set"), (2, "comment")):
        port = free_port()
        log = tmp_path / f"web{number}.log"
        with log.open("ab") as out:
            argv = [sys.executable, str(APP), "--port", str(port), "--name", f"web{number}"]
            argv += ["--present", present, "--dsn", proxy.dsn()]
            procs.append(
                subprocess.Popen(
                    argv,
                    cwd=REPO_ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        logs.append(log)
        urls.append(f"http://127.0.0.1:{port}")
    app = WebApp(urls, logs)
    try:
        for proc, url in zip(procs, urls, strict=True):
            _wait_healthy(url, proc, app)
        yield app
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], app: WebApp) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{url}: the app exited with {proc.returncode}\n{app.log_tails()}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"{url} did not answer within 60s\n{app.log_tails()}")
            time.sleep(0.1)


@contextmanager
def replay_paused(cluster: LocalCluster) -> Iterator[None]:
    """WAL replay paused on every replica (they answer, but stop moving forward)."""
    conns = [superuser_conn(r, "postgres") for r in cluster.replicas]
    try:
        for conn in conns:
            conn.execute("SELECT pg_wal_replay_pause()")
        wait_for(lambda: all(_paused(c) for c in conns), 10, "WAL replay to pause")
        yield
    finally:
        for conn in conns:
            conn.execute("SELECT pg_wal_replay_resume()")
            conn.close()


def _paused(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_is_wal_replay_paused()").fetchone()
    return row is not None and row[0] is True


# --------------------------------------------------------------------------- tests


def test_the_cookie_makes_the_other_process_read_the_write(
    webapp: WebApp, pg_cluster: LocalCluster
) -> None:
    web1, web2 = webapp.urls
    primary = pg_cluster.primary.port
    replicas = {r.port for r in pg_cluster.replicas}
    pg_cluster.wait_replicated()  # the replicas have the table before they stop replaying
    with replay_paused(pg_cluster):
        first = unique_name("item")
        wrote = call(web1 + "/items", data={"name": first})
        assert wrote.status == 201, (wrote.body, webapp.log_tails())
        assert wrote.cookie is not None and LSN.match(wrote.cookie), wrote.headers
        assert wrote.body["token"] == wrote.cookie
        token = wrote.cookie

        # The other process, presenting the cookie (comment form): it sees the item, which
        # only the primary has.
        read = call(web2 + "/items", cookie=token)
        assert read.status == 200, (read.body, webapp.log_tails())
        assert first in read.names, read.body
        assert read.port == primary, read.body
        assert read.body["min_lsn"] == token

        # A client without the cookie never wrote anything: it may be served a replica's
        # older view. Guaranteed only: a server without the item is a replica.
        fresh = call(web2 + "/items")
        assert fresh.status == 200, (fresh.body, webapp.log_tails())
        assert fresh.cookie is None
        if first not in fresh.names:
            assert fresh.port in replicas, fresh.body

        # The other way round (web1 presents with SET), the browser sending the cookie it
        # has: the new token only ever moves forward.
        second = unique_name("item")
        wrote = call(web2 + "/items", data={"name": second}, cookie=token)
        assert wrote.status == 201, (wrote.body, webapp.log_tails())
        assert wrote.cookie is not None and lsn(wrote.cookie) > lsn(token)
        token = wrote.cookie
        read = call(web1 + "/items", cookie=token)
        assert read.status == 200, (read.body, webapp.log_tails())
        assert {first, second} <= read.names, read.body
        assert read.port == primary, read.body

        # A malformed cookie is ignored, not an error.
        read = call(web1 + "/items", cookie="not-an-lsn")
        assert read.status == 200, (read.body, webapp.log_tails())

    # Replay resumed: the replicas catch up, and serve the read with the cookie again.
    def from_a_replica() -> Answer | None:
        answer = call(web2 + "/items", cookie=token)
        assert {first, second} <= answer.names, answer.body
        return answer if answer.port in replicas else None

    wait_for(from_a_replica, 15, "a replica to serve the read that presents the token")


def test_a_browser_form_gets_the_cookie_and_the_page_shows_the_item(
    webapp: WebApp, pg_cluster: LocalCluster
) -> None:
    web1, web2 = webapp.urls
    name = unique_name("form")
    with replay_paused(pg_cluster):
        posted = call(web1 + "/items", data={"name": name}, form=True)
        assert posted.status == 303, (posted.body, webapp.log_tails())
        assert posted.headers.get("Location") == "/"
        assert posted.cookie is not None and LSN.match(posted.cookie)
        page = call(web2 + "/", cookie=posted.cookie)
        assert page.status == 200
        assert name in page.body
        assert f"port {pg_cluster.primary.port}" in page.body
