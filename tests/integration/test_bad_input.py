"""Malformed, oversized, missing and abandoned client input: only that client is closed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from harness import ProxyProcess, base_config
from util import RawClient, connect, errors_in, scalar, wait_for

from protocol import frontend as fe
from protocol.backend import ErrorResponse
from protocol.scram import SCRAM_SHA_256, ScramClient
from protocol.startup import StartupMessage
from router.localcluster import LocalCluster

pytestmark = pytest.mark.integration

ProxyFactory = Callable[..., ProxyProcess]

APP = LocalCluster.APP_USER
APP_PW = LocalCluster.APP_PASSWORD


@pytest.fixture
def proxy(pg_cluster: LocalCluster, start_proxy: ProxyFactory) -> ProxyProcess:
    config = base_config(
        pg_cluster, listen={"max_message_size": "64kB", "client_login_timeout": "1s"}
    )
    return start_proxy(config)


@pytest.fixture
def bystander(proxy: ProxyProcess) -> Iterator[psycopg.Connection[object]]:
    """A well-behaved client, connected before the misbehaving one, checked after it."""
    with connect(proxy.dsn()) as conn:
        assert scalar(conn, "SELECT 1") == 1
        yield conn


def the_fatal_error(frames: list[tuple[str, bytes]]) -> ErrorResponse:
    errors = errors_in(frames)
    assert len(errors) == 1, frames
    assert errors[0].severity_nonlocalized == "FATAL"
    return errors[0]


def assert_unaffected(proxy: ProxyProcess, conn: psycopg.Connection[object]) -> None:
    assert scalar(conn, "SELECT 'still here'") == "still here"
    with connect(proxy.dsn()) as fresh:
        assert scalar(fresh, "SELECT 2") == 2
    assert proxy.is_running()


def assert_close_logged(proxy: ProxyProcess, raw: RawClient) -> None:
    """The proxy noticed the departure and ended that session (nothing left dangling)."""
    address = raw.address

    def closed_line() -> list[str]:
        lines = proxy.log_text().splitlines()
        return [line for line in lines if "closed" in line and f"from {address} " in line]

    wait_for(closed_line, 5, f"the proxy to log the end of the session from {address}")


def logged_in(proxy: ProxyProcess) -> RawClient:
    client = RawClient(proxy.port)
    result = client.login(APP, APP_PW)
    assert result.ok, result.error
    return client


# --------------------------------------------------------------------------- startup phase


def test_garbage_instead_of_startup_gets_08p01_and_is_closed(
    proxy: ProxyProcess, bystander: psycopg.Connection[object]
) -> None:
    with RawClient(proxy.port) as raw:
        raw.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        error = the_fatal_error(raw.read_until_closed())
    assert error.sqlstate == "08P01"
    assert_unaffected(proxy, bystander)


def test_protocol_version_2_is_refused(
    proxy: ProxyProcess, bystander: psycopg.Connection[object]
) -> None:
    with RawClient(proxy.port) as raw:
        raw.send(StartupMessage({"user": APP, "database": "app"}, version=2 << 16).encode())
        frames = raw.read_until_closed()
    error = the_fatal_error(frames)
    assert error.sqlstate in ("0A000", "08P01"), error
    assert "protocol" in error.message
    assert [tag for tag, _ in frames] == ["E"]  # no authentication request before it
    assert_unaffected(proxy, bystander)


def test_silent_client_is_dropped_after_client_login_timeout(
    proxy: ProxyProcess, bystander: psycopg.Connection[object]
) -> None:
    with RawClient(proxy.port) as raw:
        began = time.monotonic()
        frames = raw.read_until_closed(timeout=5)
        elapsed = time.monotonic() - began
    error = the_fatal_error(frames)
    assert error.sqlstate.startswith("08"), error
    assert "client_login_timeout" in error.message
    assert 0.8 <= elapsed <= 3, elapsed
    assert_unaffected(proxy, bystander)


def test_half_a_startup_packet_then_disconnect(
    proxy: ProxyProcess, bystander: psycopg.Connection[object]
) -> None:
    packet = StartupMessage({"user": APP, "database": "app"}).encode()
    raw = RawClient(proxy.port)
    raw.send(packet[: len(packet) // 2])
    raw.close()
    assert_unaffected(proxy, bystander)
    assert_close_logged(proxy, raw)


def test_disconnect_in_the_middle_of_scram(
    proxy: ProxyProcess, bystander: psycopg.Connection[object]
) -> None:
    with RawClient(proxy.port) as raw:
        raw.startup(APP)
        first = raw.recv()
        assert first is not None and first[0] == "R"
        scram = ScramClient(password=APP_PW)
        raw.send(fe.SASLInitialResponse(SCRAM_SHA_256, scram.client_first()).encode())
        second = raw.recv()
        assert second is not None and second[0] == "R"  # AuthenticationSASLContinue
    assert_unaffected(proxy, bystander)
    assert_close_logged(proxy, raw)


# --------------------------------------------------------------------------- after login


def test_oversized_message_closes_only_that_client(
    proxy: ProxyProcess, bystander: psycopg.Connection[object]
) -> None:
    with logged_in(proxy) as raw:
        raw.send(b"Q" + (1024 * 1024).to_bytes(4, "big") + b"SELECT ")
        error = the_fatal_error(raw.read_until_closed())
    assert error.sqlstate == "08P01"
    assert_unaffected(proxy, bystander)


def test_message_just_under_the_limit_is_fine(
    proxy: ProxyProcess, bystander: psycopg.Connection[object]
) -> None:
    with logged_in(proxy) as raw:
        sql = "SELECT '" + "x" * (60 * 1024) + "' IS NOT NULL"
        frames = raw.query(sql)
    assert [tag for tag, _ in frames] == ["T", "D", "C", "Z"]
    assert_unaffected(proxy, bystander)


def test_unknown_message_type_gets_08p01(
    proxy: ProxyProcess, bystander: psycopg.Connection[object]
) -> None:
    with logged_in(proxy) as raw:
        raw.send(b"z" + (4).to_bytes(4, "big"))
        error = the_fatal_error(raw.read_until_closed())
    assert error.sqlstate == "08P01"
    assert "z" in error.message
    assert_unaffected(proxy, bystander)
