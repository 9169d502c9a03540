"""Client authentication through the proxy, login parameters, and query cancel."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import ProxyProcess, base_config
from util import Background, RawClient, connect, login_error, scalar, wait_for

from protocol import backend as be
from router.localcluster import LocalCluster, PgInstance

pytestmark = pytest.mark.integration

ProxyFactory = Callable[..., ProxyProcess]

APP = LocalCluster.APP_USER
APP_PW = LocalCluster.APP_PASSWORD
MD5_USER = LocalCluster.MD5_USER
MD5_PW = LocalCluster.MD5_PASSWORD


def failed_message(user: str) -> str:
    return f'password authentication failed for user "{user}"'


def without_message(error: be.ErrorResponse) -> list[tuple[str, str]]:
    return [(code, text) for code, text in error.fields if code != "M"]


# --------------------------------------------------------------------------- methods


def test_scram_login_with_plaintext_password_in_config(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(base_config(pg_cluster))
    with RawClient(proxy.port) as raw:
        result = raw.login(APP, APP_PW)
    assert result.ok, result.error
    assert [type(r).__name__ for r in result.auth] == [
        "AuthenticationSASL",
        "AuthenticationSASLContinue",
        "AuthenticationSASLFinal",
        "AuthenticationOk",
    ]
    with connect(proxy.dsn()) as conn:
        assert scalar(conn, "SELECT current_user") == APP
        assert scalar(conn, "SELECT current_database()") == LocalCluster.APP_DB


@pytest.mark.parametrize(
    ("user", "password"), [(APP, APP_PW), (MD5_USER, MD5_PW)], ids=["scram-stored", "md5-stored"]
)
def test_md5_client_auth(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, user: str, password: str
) -> None:
    proxy = start_proxy(base_config(pg_cluster, auth={"type": "md5"}))
    with RawClient(proxy.port) as raw:
        result = raw.login(user, password)
    assert result.ok, result.error
    assert [type(r).__name__ for r in result.auth] == [
        "AuthenticationMD5Password",
        "AuthenticationOk",
    ]
    with connect(proxy.dsn(user, password)) as conn:
        assert scalar(conn, "SELECT current_user") == user
        assert scalar(conn, "SELECT 40 + 2") == 42


def test_trust_mode_needs_no_password(pg_cluster: LocalCluster, start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(base_config(pg_cluster, auth={"type": "trust"}))
    with RawClient(proxy.port) as raw:
        result = raw.login(APP, None)
    assert result.ok, result.error
    assert [type(r).__name__ for r in result.auth] == ["AuthenticationOk"]
    with connect(proxy.dsn(password=None)) as conn:
        assert scalar(conn, "SELECT current_user") == APP


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("method", ["scram-sha-256", "md5"])
def test_wrong_password_and_unknown_user_fail_alike(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, method: str
) -> None:
    proxy = start_proxy(base_config(pg_cluster, auth={"type": method}))
    unknown = "nobody_" + uuid.uuid4().hex[:8]
    with RawClient(proxy.port) as raw:
        wrong = raw.login(APP, "not-the-password")
    with RawClient(proxy.port) as raw:
        missing = raw.login(unknown, "not-the-password")
    assert wrong.error is not None and missing.error is not None
    for error, user in ((wrong.error, APP), (missing.error, unknown)):
        assert error.sqlstate == "28P01"
        assert error.severity_nonlocalized == "FATAL"
        assert error.message == failed_message(user)
    # Nothing but the user name may tell the two apart: not the fields, not the dialogue.
    assert without_message(wrong.error) == without_message(missing.error)
    assert [type(r) for r in wrong.auth] == [type(r) for r in missing.auth]
    with pytest.raises(psycopg.OperationalError, match=failed_message(APP)):
        connect(proxy.dsn(password="not-the-password"))


def test_scram_verifier_in_config_passes_client_proof_through(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    verifier = pg_cluster.primary.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{APP}'")
    assert verifier.startswith("SCRAM-SHA-256$")
    config = base_config(pg_cluster, auth={"users": {APP: {"password": verifier}}})
    proxy = start_proxy(config)
    # Two clients at once: the second server connection also logs in with the learned keys.
    with connect(proxy.dsn()) as first, connect(proxy.dsn()) as second:
        pids = {scalar(first, "SELECT pg_backend_pid()"), scalar(second, "SELECT pg_backend_pid()")}
        assert len(pids) == 2
        assert scalar(second, "SELECT current_user") == APP
    with connect(proxy.dsn()) as third:
        assert scalar(third, "SELECT count(*) FROM pg_class WHERE relname = 'pg_class'") == 1
    with pytest.raises(psycopg.OperationalError, match=failed_message(APP)):
        connect(proxy.dsn(password="wrong"))


# --------------------------------------------------------------------------- auth_query


@pytest.fixture
def lookup_users(pg_cluster: LocalCluster) -> Iterator[dict[str, str]]:
    """Two roles that exist only on the primary: one SCRAM-stored, one md5-stored.

    The cluster's pg_hba.conf demands SCRAM from every user but app_md5, and an md5-stored
    role cannot do SCRAM, so the md5 role gets its own md5 line for the test's duration.
    """
    tag = uuid.uuid4().hex[:8]
    users = {f"aq_scram_{tag}": "scram-" + tag, f"aq_md5_{tag}": "md5-" + tag}
    scram_user, md5_user = users
    primary = pg_cluster.primary
    hba = primary.datadir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"host all {md5_user} 127.0.0.1/32 md5\n" + original)
    try:
        primary.psql(
            f"CREATE ROLE {scram_user} LOGIN PASSWORD '{users[scram_user]}';\n"
            "SET password_encryption = 'md5';\n"
            f"CREATE ROLE {md5_user} LOGIN PASSWORD '{users[md5_user]}';\n"
            "SELECT pg_reload_conf();\n"
        )
        stored = primary.psql(
            f"SELECT rolname, rolpassword FROM pg_authid WHERE rolname LIKE 'aq\\_%{tag}'"
        )
        verifiers = dict(line.split("|", 1) for line in stored.splitlines())
        assert verifiers[scram_user].startswith("SCRAM-SHA-256$")
        assert verifiers[md5_user].startswith("md5")
        wait_for(
            lambda: direct_login_works(primary, md5_user, users[md5_user]),
            5,
            "the primary to load the md5 line of pg_hba.conf",
        )
        yield users
    finally:
        hba.write_text(original)
        primary.psql(
            f"DROP ROLE IF EXISTS {scram_user};\nDROP ROLE IF EXISTS {md5_user};\n"
            "SELECT pg_reload_conf();\n"
        )


def direct_login_works(inst: PgInstance, user: str, password: str) -> bool:
    try:
        with connect(inst.dsn(user, password, dbname=LocalCluster.APP_DB)):
            return True
    except psycopg.OperationalError:
        return False


def auth_query_config(cluster: LocalCluster) -> dict[str, Any]:
    config: dict[str, Any] = base_config(
        cluster,
        auth={
            "auth_user": LocalCluster.SUPERUSER,
            "users": {LocalCluster.SUPERUSER: {"password": LocalCluster.SUPERUSER_PASSWORD}},
        },
    )
    return config


def test_auth_query_logs_in_users_missing_from_config(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, lookup_users: dict[str, str]
) -> None:
    proxy = start_proxy(auth_query_config(pg_cluster))
    for user, password in lookup_users.items():
        assert user not in proxy.config_path.read_text()
        with connect(proxy.dsn(user, password)) as conn:
            assert scalar(conn, "SELECT current_user") == user
            assert scalar(conn, "SELECT 6 * 7") == 42
        # A second login of the same user, now that its pool exists.
        with connect(proxy.dsn(user, password)) as conn:
            assert scalar(conn, "SELECT session_user") == user


def test_auth_query_rejects_wrong_password_and_unknown_user_alike(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, lookup_users: dict[str, str]
) -> None:
    proxy = start_proxy(auth_query_config(pg_cluster))
    scram_user, md5_user = lookup_users
    unknown = "aq_nobody_" + uuid.uuid4().hex[:8]
    errors = {
        user: login_error(proxy.port, user, "wrong-password")
        for user in (scram_user, md5_user, unknown)
    }
    for user, error in errors.items():
        assert error.sqlstate == "28P01", (user, error)
        assert error.message == failed_message(user)
    assert without_message(errors[scram_user]) == without_message(errors[unknown])
    assert without_message(errors[md5_user]) == without_message(errors[unknown])
    # The right password still works afterwards: the lookups left the pool healthy.
    with connect(proxy.dsn(scram_user, lookup_users[scram_user])) as conn:
        assert scalar(conn, "SELECT current_user") == scram_user


# --------------------------------------------------------------------------- parameters


REPORTED = (
    "server_version",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "integer_datetimes",
    "standard_conforming_strings",
)


def test_parameter_status_at_login_matches_the_server(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(base_config(pg_cluster))
    app_name = "auth-test-" + uuid.uuid4().hex[:6]
    direct_dsn = pg_cluster.primary.dsn(APP, dbname=LocalCluster.APP_DB)
    with connect(direct_dsn) as direct, connect(proxy.dsn(application_name=app_name)) as conn:
        for name in REPORTED:
            value = conn.info.parameter_status(name)
            assert value is not None, f"{name} not reported at login"
            assert value == direct.info.parameter_status(name), name
        assert conn.info.parameter_status("application_name") == app_name
        assert scalar(conn, "SHOW application_name") == app_name


def test_startup_options_are_applied(pg_cluster: LocalCluster, start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(base_config(pg_cluster))
    options = "-c statement_timeout=1234 -c search_path=auth_opts,public"
    direct_dsn = pg_cluster.primary.dsn(APP, dbname=LocalCluster.APP_DB)
    with connect(direct_dsn, options=options) as direct:
        expected_path = scalar(direct, "SHOW search_path")
    assert expected_path.startswith("auth_opts,")
    with connect(proxy.dsn(options=options)) as conn:
        assert scalar(conn, "SHOW statement_timeout") == "1234ms"
        assert scalar(conn, "SHOW search_path") == expected_path
    # And a client without options is not affected by the previous one's.
    with connect(proxy.dsn()) as plain:
        assert scalar(plain, "SHOW statement_timeout") == "0"


def test_unknown_startup_parameter_gets_the_servers_error(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(base_config(pg_cluster))
    error = login_error(proxy.port, APP, APP_PW, options="-c no_such_param=1")
    assert error.sqlstate == "42704"
    assert "no_such_param" in error.message
    with pytest.raises(psycopg.OperationalError, match="no_such_param"):
        connect(proxy.dsn(options="-c no_such_param=1"))
    with connect(proxy.dsn()) as conn:
        assert scalar(conn, "SELECT 1") == 1


# --------------------------------------------------------------------------- cancel


def test_cancel_stops_a_running_query(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = start_proxy(base_config(pg_cluster))
    with connect(proxy.dsn()) as conn:
        pid = scalar(conn, "SELECT pg_backend_pid()")
        sleeper = Background(lambda: conn.execute("SELECT pg_sleep(10)"))
        checker = connect(pg_cluster.primary.dsn("postgres"))
        try:
            deadline = time.monotonic() + 5
            while scalar(
                checker, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND "
                "query LIKE 'SELECT pg_sleep%%' AND state = 'active'", (pid,)
            ) == 0:  # fmt: skip
                assert time.monotonic() < deadline, "pg_sleep never started on the server"
                time.sleep(0.02)
        finally:
            checker.close()
        began = time.monotonic()
        conn.cancel()
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            sleeper.join(timeout=5)
        assert info.value.sqlstate == "57014"
        assert time.monotonic() - began < 4
        assert scalar(conn, "SELECT 'still usable'") == "still usable"
        assert scalar(conn, "SELECT pg_backend_pid()") == pid
