"""router.config: durations, sizes, loading pgrouter.yaml and its error messages."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.config import (
    ADMIN_DATABASE,
    ConfigError,
    PoolSettings,
    Settings,
    load_settings,
    parse_duration,
    parse_size,
)

APP = """
databases:
  app:
    primary: {host: 127.0.0.1}
"""


@pytest.fixture(autouse=True)
def _no_pgrouter_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Overrides from the caller's environment must not leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("PGROUTER_"):
            monkeypatch.delenv(name)
    yield


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pgrouter.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> Settings:
    return load_settings(write(tmp_path, text))


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, text)
    return str(raised.value)


# ---------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (5, 5.0),
        (2.5, 2.5),
        ("5", 5.0),
        ("100ms", 0.1),
        ("5s", 5.0),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        (" 10 s ", 10.0),
        ("0ms", 0.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize(
    "value", [-1, -0.5, "-1s", "5x", "", "s", "1.5.3s", "5 sec", True, False, None, [5], "1e3"]
)
def test_parse_duration_invalid(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1024, 1024),
        ("5", 5),
        ("5b", 5),
        ("1kb", 1024),
        ("1KiB", 1024),
        ("64MB", 64 * 1024**2),
        ("64 mib", 64 * 1024**2),
        ("2GB", 2 * 1024**3),
        ("2gib", 2 * 1024**3),
        (" 3 KB ", 3 * 1024),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", [-1, "-1", "1.5MB", "64TB", "MB", "", True, None, 1.5, "6 4MB"])
def test_parse_size_invalid(value: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(value)


# ---------------------------------------------------------------- loading


def test_no_file_gives_defaults() -> None:
    settings = load_settings(None)
    assert settings.listen.port == 6432
    assert settings.pool.mode == "session" and settings.pool.size == 20
    assert settings.databases == {}


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "").pool.size == 20


def test_values_parsed(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        listen: {port: 7432, max_message_size: 1MB, client_login_timeout: 500ms}
        pool: {mode: transaction, size: 5, query_wait_timeout: 2m}
        databases:
          app:
            primary: {host: db1}
            replicas:
              - {host: db2, port: 5433, weight: 2}
        """,
    )
    assert settings.listen.port == 7432
    assert settings.listen.max_message_size == 1024**2
    assert settings.listen.client_login_timeout == pytest.approx(0.5)
    assert settings.pool.query_wait_timeout == 120.0
    assert settings.databases["app"].replicas[0].port == 5433
    assert settings.databases["app"].primary.port == 5432


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load(tmp_path, APP)
    with pytest.raises(Exception, match="frozen"):
        settings.pool.size = 3  # type: ignore[misc]


def test_error_names_field_path(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        """
        databases:
          app:
            primary: {host: db1}
            replicas:
              - {host: db2, port: 0}
        """,
    )
    assert message.startswith("invalid configuration:")
    assert "databases.app.replicas.0.port" in message


def test_every_problem_listed(tmp_path: Path) -> None:
    message = load_error(tmp_path, "listen: {port: 70000}\npool: {size: 0}\n")
    assert "listen.port" in message
    assert "pool.size" in message


def test_invalid_duration_names_field(tmp_path: Path) -> None:
    message = load_error(tmp_path, "pool: {server_idle_timeout: soon}\n")
    assert "pool.server_idle_timeout" in message
    assert "invalid duration" in message


def test_unknown_field_rejected(tmp_path: Path) -> None:
    message = load_error(tmp_path, "pool: {sizee: 3}\n")
    assert "pool.sizee" in message


def test_unknown_top_level_field_rejected(tmp_path: Path) -> None:
    assert "poool" in load_error(tmp_path, "poool: {}\n")


def test_missing_primary_named(tmp_path: Path) -> None:
    assert "databases.app.primary" in load_error(tmp_path, "databases: {app: {}}\n")


def test_invalid_pool_mode(tmp_path: Path) -> None:
    assert "pool.mode" in load_error(tmp_path, "pool: {mode: sometimes}\n")


def test_min_size_above_size_rejected(tmp_path: Path) -> None:
    message = load_error(tmp_path, "pool: {size: 2, min_size: 3}\n")
    assert "min_size (3) is larger than size (2)" in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yaml_not_a_mapping(tmp_path: Path, text: str) -> None:
    message = load_error(tmp_path, text)
    assert "top level must be a mapping" in message


def test_invalid_yaml(tmp_path: Path) -> None:
    assert "is not valid YAML" in load_error(tmp_path, "pool: [\n")


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read") as raised:
        load_settings(missing)
    assert str(missing) in str(raised.value)


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGROUTER_POOL__SIZE", "50")
    settings = load(tmp_path, "pool: {size: 10, mode: transaction}\n")
    assert settings.pool.size == 50
    assert settings.pool.mode == "transaction"  # the rest of the file's pool section stays


def test_environment_override_without_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGROUTER_POOL__SIZE", "7")
    monkeypatch.setenv("PGROUTER_LOG_LEVEL", "debug")
    settings = load_settings(None)
    assert settings.pool.size == 7
    assert settings.log_level == "debug"


def test_invalid_environment_override_names_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGROUTER_POOL__SIZE", "0")
    with pytest.raises(ConfigError, match=r"pool\.size"):
        load_settings(None)


# ---------------------------------------------------------------- pool_for


POOLS = """
auth:
  users:
    bob: {pool_mode: statement}
    carol: {password: x}
pool: {mode: session, size: 20, query_wait_timeout: 30s}
databases:
  app:
    primary: {host: db1}
    pool: {mode: transaction, size: 5}
  other:
    primary: {host: db2}
"""


def test_pool_for_merges_database_overrides(tmp_path: Path) -> None:
    settings = load(tmp_path, POOLS)
    pool = settings.pool_for("app")
    assert isinstance(pool, PoolSettings)
    assert (pool.mode, pool.size, pool.query_wait_timeout) == ("transaction", 5, 30.0)
    assert settings.pool.size == 20  # the top-level snapshot is unchanged


def test_pool_for_without_overrides_is_the_top_level_pool(tmp_path: Path) -> None:
    settings = load(tmp_path, POOLS)
    assert settings.pool_for("other") is settings.pool
    assert settings.pool_for("other", "carol") is settings.pool


def test_pool_for_user_pool_mode_wins(tmp_path: Path) -> None:
    settings = load(tmp_path, POOLS)
    assert settings.pool_for("app", "bob").mode == "statement"
    assert settings.pool_for("app", "bob").size == 5
    assert settings.pool_for("other", "bob").mode == "statement"
    assert settings.pool_for("app", "carol").mode == "transaction"
    assert settings.pool_for("app", "unknown").mode == "transaction"


def test_pool_for_unknown_database_raises(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        load(tmp_path, POOLS).pool_for("nope")


# ---------------------------------------------------------------- cross-field rules


def test_admin_database_name_reserved(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        f"""
        databases:
          {ADMIN_DATABASE}:
            primary: {{host: db1}}
        """,
    )
    assert "reserved" in message and repr(ADMIN_DATABASE) in message


def test_auth_user_without_password_rejected(tmp_path: Path) -> None:
    message = load_error(tmp_path, "auth: {auth_user: lookup, users: {lookup: {}}}\n")
    assert "auth_user 'lookup' needs an entry with a password" in message


def test_auth_user_not_listed_rejected(tmp_path: Path) -> None:
    assert "auth_user 'lookup'" in load_error(tmp_path, "auth: {auth_user: lookup}\n")


def test_auth_user_with_password_accepted(tmp_path: Path) -> None:
    settings = load(tmp_path, "auth: {auth_user: lookup, users: {lookup: {password: s}}}\n")
    assert settings.auth.auth_user == "lookup"


@pytest.mark.parametrize("mode", ["require", "allow"])
def test_tls_client_mode_without_certificate_rejected(tmp_path: Path, mode: str) -> None:
    message = load_error(tmp_path, f"tls: {{client_mode: {mode}, cert_file: c.pem}}\n")
    assert f"client_mode '{mode}' needs cert_file and key_file" in message


def test_tls_client_mode_with_certificate_accepted(tmp_path: Path) -> None:
    settings = load(tmp_path, "tls: {client_mode: require, cert_file: c.pem, key_file: k.pem}\n")
    assert settings.tls.cert_file == Path("c.pem")


# ---------------------------------------------------------------- regressions


def test_database_size_override_below_min_size_rejected(tmp_path: Path) -> None:
    # pool_for merges with model_copy, which skips validation: a database's
    # `size: 5` under a top-level `min_size: 10` made the janitor keep 10 connections
    # open in a pool limited to 5.
    message = load_error(
        tmp_path,
        """
        pool: {size: 20, min_size: 10}
        databases:
          app:
            primary: {host: db1}
            pool: {size: 5}
        """,
    )
    assert "databases.app" in message and "min_size" in message


def test_workers_need_a_fixed_port() -> None:
    with pytest.raises(ValueError, match=r"workers > 1 needs a fixed listen\.port"):
        Settings.model_validate({"workers": 2, "listen": {"port": 0}})
    assert Settings.model_validate({"workers": 2, "listen": {"port": 6432}}).workers == 2
    assert Settings.model_validate({}).workers == 1
