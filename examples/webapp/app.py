"""A small web app that reads its own writes through pgrouter, whichever process serves it.

    python examples/webapp/app.py --port 8001 --dsn "host=127.0.0.1 port=6432 dbname=app ..."

Run it as several processes (``run.py`` starts two, on 8001 and 8002). Every request
borrows a connection from the process's own small pool; the connections go through
pgrouter, which sends writes to the primary and reads to a replica.

- ``POST /items`` (JSON ``{"name": "..."}`` or a form field ``name``) inserts a row. pgrouter
  reports the write's WAL position as the ParameterStatus ``pgrouter.write_lsn``; psycopg
  exposes it as ``conn.info.parameter_status("pgrouter.write_lsn")``, with no extra round
  trip. The app hands it to the browser in a cookie, ``pgrouter_lsn=0/3000060``.
- ``GET /items`` presents the cookie's token before reading, with
  ``SET pgrouter.min_lsn = '<token>'`` (``--present set``, the default) or a statement
  comment ``/* pgrouter:min_lsn=<token> */`` (``--present comment``). pgrouter then lets a
  replica serve the read only once it has replayed that position; otherwise it waits for
  one or uses the primary, as the routing policy says. Either way the user sees their item,
  even when the read lands on another process than the write.
- ``GET /`` is the same as an HTML page with a form; ``GET /healthz`` answers ``ok``.

Every answer says which server ran the query (``inet_server_port()`` and the server's
``cluster_name``) and which process served the request.

Standard library and psycopg only. Not for production: no auth, no CSRF protection.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg

COOKIE = "pgrouter_lsn"
HEADER = "Pgrouter-Min-Lsn"  # for API clients that do not keep cookies
WRITE_LSN = "pgrouter.write_lsn"
_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS webapp_items (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    written_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)"""
INSERT = "INSERT INTO webapp_items (name, written_by) VALUES (%s, %s) RETURNING id"
READ = """
SELECT inet_server_port(), current_setting('cluster_name'),
       (SELECT coalesce(json_agg(i ORDER BY i.id DESC), '[]'::json)
          FROM (SELECT id, name, written_by, created_at
                  FROM webapp_items ORDER BY id DESC LIMIT 50) i)"""


# --------------------------------------------------------------------------- LSN tokens


def lsn_value(token: str | None) -> int | None:
    """``'0/3000060'`` -> an integer to compare; None for a missing or malformed token."""
    if not token or not _LSN.match(token):
        return None
    high, low = token.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def newest(*tokens: str | None) -> str | None:
    """The highest of some tokens: a token only ever raises the bar, never lowers it."""
    best: tuple[int, str] | None = None
    for token in tokens:
        value = lsn_value(token)
        if value is not None and token is not None and (best is None or value > best[0]):
            best = (value, token)
    return None if best is None else best[1]


# --------------------------------------------------------------------------- database


class Pool:
    """A minimal connection pool: a thread borrows a connection for one request."""

    def __init__(self, dsn: str, size: int) -> None:
        self.dsn = dsn
        self._idle: queue.LifoQueue[psycopg.Connection[Any] | None] = queue.LifoQueue()
        for _ in range(size):
            self._idle.put(None)  # a free slot; connected on first use

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self._idle.get(timeout=30)
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
            yield conn
        except psycopg.OperationalError:
            if conn is not None:
                conn.close()
            conn = None  # the slot reconnects next time
            raise
        finally:
            self._idle.put(conn)


class Store:
    def __init__(self, pool: Pool, process: str, present: str) -> None:
        self.pool = pool
        self.process = process
        self.present = present
        # The schema's token: reads never run on a replica that lacks the table.
        self.floor: str | None = None

    def setup(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.pool.connection() as conn:
                    conn.execute(SCHEMA)
                    self.floor = conn.info.parameter_status(WRITE_LSN)
                return
            except psycopg.Error as exc:  # pgrouter still starting, or a concurrent CREATE
                if time.monotonic() > deadline:
                    raise
                print(f"{self.process}: schema not ready yet ({exc}); retrying", file=sys.stderr)
                time.sleep(0.5)

    def add(self, name: str) -> tuple[int, str | None]:
        """Insert an item; (its id, the write's LSN token)."""
        with self.pool.connection() as conn:
            row = conn.execute(INSERT, (name, self.process)).fetchone()
            assert row is not None
            # Reported by pgrouter right before the ReadyForQuery that ended the INSERT.
            return int(row[0]), conn.info.parameter_status(WRITE_LSN)

    def items(self, token: str | None) -> dict[str, Any]:
        """The latest items, read by a server that has replayed at least ``token``."""
        token = newest(token, self.floor)
        with self.pool.connection() as conn:
            if token is None:
                row = conn.execute(READ).fetchone()
            elif self.present == "comment":
                row = conn.execute(f"/* pgrouter:min_lsn={token} */ {READ}").fetchone()
            else:
                # A simple-protocol statement (no parameters, never prepared), which pgrouter
                # answers itself; it lasts for the connection, so reset it before giving the
                # connection back to the pool.
                conn.execute(f"SET pgrouter.min_lsn = '{token}'", prepare=False)
                try:
                    row = conn.execute(READ).fetchone()
                finally:
                    conn.execute("RESET pgrouter.min_lsn", prepare=False)
        assert row is not None
        port, server, items = row
        return {
            "items": items,
            "served_by": {"port": port, "server": server},
            "process": self.process,
            "min_lsn": token,
        }


# --------------------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    server_version = "pgrouter-webapp/1"
    store: Store  # set on the subclass made by serve()

    # ---- routes

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            self.reply(HTTPStatus.OK, b"ok\n", "text/plain")
        elif path == "/items":
            self.reply_json(HTTPStatus.OK, self.store.items(self.token()))
        elif path == "/":
            self.reply(HTTPStatus.OK, self.page(self.store.items(self.token())), "text/html")
        else:
            self.reply_json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/items":
            self.reply_json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        is_form, name = self.read_name()
        if not name:
            self.reply_json(HTTPStatus.BAD_REQUEST, {"error": "a non-empty 'name' is required"})
            return
        item_id, written = self.store.add(name)
        token = newest(written, self.token())
        cookie = self.cookie_header(token)
        if is_form:  # a browser: back to the list, which presents the new cookie
            self.reply(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": "/", **cookie})
            return
        body = {"id": item_id, "name": name, "written_by": self.store.process, "token": token}
        self.reply_json(HTTPStatus.CREATED, body, cookie)

    # ---- the token

    def token(self) -> str | None:
        """The request's LSN token: the cookie, else the header; malformed ones are ignored."""
        cookies: SimpleCookie = SimpleCookie()
        with suppress(CookieError):
            cookies.load(self.headers.get("Cookie", ""))
        morsel = cookies.get(COOKIE)
        return newest(morsel.value if morsel else None, self.headers.get(HEADER))

    @staticmethod
    def cookie_header(token: str | None) -> dict[str, str]:
        if token is None:
            return {}
        # A few minutes is plenty: replicas catch up in milliseconds to seconds.
        return {"Set-Cookie": f"{COOKIE}={token}; Path=/; Max-Age=300; HttpOnly; SameSite=Lax"}

    # ---- plumbing

    def read_name(self) -> tuple[bool, str]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        kind = self.headers.get("Content-Type", "")
        if kind.startswith("application/x-www-form-urlencoded"):
            values = parse_qs(raw.decode("utf-8", "replace")).get("name", [""])
            return True, values[0].strip()
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            return False, ""
        name = data.get("name") if isinstance(data, dict) else None
        return False, name.strip() if isinstance(name, str) else ""

    def reply_json(
        self, status: HTTPStatus, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body, default=str, indent=1).encode() + b"\n"
        self.reply(status, data, "application/json", headers)

    def reply(
        self,
        status: HTTPStatus,
        data: bytes,
        kind: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def page(self, result: dict[str, Any]) -> bytes:
        rows = "".join(
            f"<li>{html.escape(str(i['name']))} <small>(#{i['id']}, by "
            f"{html.escape(str(i['written_by']))})</small></li>"
            for i in result["items"]
        )
        served = result["served_by"]
        text = f"""<!doctype html><title>pgrouter webapp</title>
<h1>Items</h1>
<form method=post action=/items><input name=name autofocus> <button>Add</button></form>
<p>Page from process <b>{html.escape(self.store.process)}</b>; query ran on
<b>{html.escape(str(served["server"]) or "?")}</b> (port {served["port"]}); token presented:
<code>{html.escape(str(result["min_lsn"]))}</code></p>
<ul>{rows}</ul>"""
        return text.encode()

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.store.process}: {format % args}\n")

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except psycopg.Error as exc:  # the database failed: answer 503, keep serving
            self.reply_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})


def serve(host: str, port: int, store: Store) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"store": store})
    return ThreadingHTTPServer((host, port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--dsn",
        default=os.environ.get("DATABASE_URL", ""),
        help="libpq connection string of pgrouter (default: $DATABASE_URL)",
    )
    parser.add_argument("--name", help="this process's name in answers (default: web-PORT)")
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument(
        "--present",
        choices=["set", "comment"],
        default="set",
        help="how a read presents the token: SET pgrouter.min_lsn, or a statement comment",
    )
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("give --dsn or set DATABASE_URL")
    store = Store(Pool(args.dsn, args.pool_size), args.name or f"web-{args.port}", args.present)
    store.setup()
    httpd = serve(args.host, args.port, store)
    print(f"{store.process}: listening on http://{args.host}:{args.port}", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=httpd.shutdown).start())
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
