"""Many idle client connections, logged in with a minimal raw v3-protocol client.

Owns: opening N client connections (bounded concurrency, bounded total time) that complete
startup + authentication (trust, cleartext, md5 or SCRAM-SHA-256) up to ReadyForQuery,
checking a sample of them still answers ``SELECT 1``, and closing them with Terminate.
Must not touch: the proxy (measured from outside through /proc by the caller).

The wire messages come from ``protocol/`` (StartupMessage, PasswordMessage, SASL
messages, ScramClient, decode_backend); only the socket handling lives here. A raw client
keeps per-connection memory in this process small, so 5,000 connections fit easily.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

from protocol import backend as be
from protocol import frontend as fe
from protocol.md5 import md5_response
from protocol.scram import SCRAM_SHA_256, ScramClient
from protocol.startup import StartupMessage

_HEADER = struct.Struct("!ci")


class LoginError(Exception):
    pass


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


@dataclass
class OpenReport:
    requested: int
    opened: int
    seconds: float
    errors: Counter[str] = field(default_factory=Counter)


async def _read_message(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    tag, length = _HEADER.unpack(await reader.readexactly(5))
    return tag.decode("ascii"), await reader.readexactly(length - 4)


def _error_text(body: bytes) -> str:
    err = be.ErrorResponse.decode(body)
    return f"{err.sqlstate} {err.message}"


async def login(host: str, port: int, user: str, password: str, dbname: str) -> Conn:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(StartupMessage({"user": user, "database": dbname}).encode())
        scram: ScramClient | None = None
        while True:
            tag, body = await _read_message(reader)
            if tag == "E":
                raise LoginError(_error_text(body))
            if tag == "Z":
                return Conn(reader, writer)
            if tag != "R":
                continue  # ParameterStatus, BackendKeyData, NoticeResponse
            msg = be.decode_backend(tag, body)
            if isinstance(msg, be.AuthenticationCleartextPassword):
                writer.write(fe.PasswordMessage(password).encode())
            elif isinstance(msg, be.AuthenticationMD5Password):
                writer.write(fe.PasswordMessage(md5_response(user, password, msg.salt)).encode())
            elif isinstance(msg, be.AuthenticationSASL):
                scram = ScramClient(password=password)
                first = scram.client_first()
                writer.write(fe.SASLInitialResponse(SCRAM_SHA_256, first).encode())
            elif isinstance(msg, be.AuthenticationSASLContinue) and scram is not None:
                writer.write(fe.SASLResponse(scram.handle_server_first(msg.data)).encode())
            elif isinstance(msg, be.AuthenticationSASLFinal) and scram is not None:
                scram.verify_server_final(msg.data)
            elif not isinstance(msg, be.AuthenticationOk):
                raise LoginError(f"unsupported authentication request {msg!r}")
    except BaseException:
        writer.close()
        raise


async def open_many(
    host: str,
    port: int,
    user: str,
    password: str,
    dbname: str,
    count: int,
    *,
    concurrency: int = 50,
    timeout: float = 300.0,
) -> tuple[list[Conn], OpenReport]:
    """Open ``count`` logged-in connections; failures are counted, not raised."""
    conns: list[Conn] = []
    report = OpenReport(count, 0, 0.0)
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            try:
                conn = await asyncio.wait_for(login(host, port, user, password, dbname), 30)
            except (TimeoutError, OSError, LoginError, asyncio.IncompleteReadError) as exc:
                report.errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
                return
            conns.append(conn)

    began = time.monotonic()
    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        report.errors[f"not finished within {timeout}s"] += len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    report.seconds = time.monotonic() - began
    report.opened = len(conns)
    return conns, report


async def check_alive(conns: list[Conn], sample: int = 20) -> tuple[int, int]:
    """Run ``SELECT 1`` on ``sample`` connections spread over the list; (ok, tried)."""
    if not conns:
        return 0, 0
    step = max(1, len(conns) // sample)
    picked = conns[::step][:sample]
    ok = 0
    for conn in picked:
        try:
            conn.writer.write(fe.Query("SELECT 1").encode())
            saw_row = False
            while True:
                tag, _ = await asyncio.wait_for(_read_message(conn.reader), 10)
                saw_row = saw_row or tag == "D"
                if tag == "Z":
                    break
            ok += saw_row
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass
    return ok, len(picked)


async def close_all(conns: list[Conn]) -> None:
    terminate = fe.Terminate().encode()
    for conn in conns:
        try:
            conn.writer.write(terminate)
            conn.writer.close()
        except OSError:
            pass
    await asyncio.gather(
        *(asyncio.wait_for(c.writer.wait_closed(), 10) for c in conns), return_exceptions=True
    )
