"""Configuration: the schema of ``pgrouter.yaml`` and how it is loaded.

Owns: every setting's name, type, default and validation; loading YAML with
``PGROUTER_*`` environment overrides (nested with ``__``, e.g. ``PGROUTER_POOL__SIZE=50``);
turning validation failures into messages that name the field's path.
Must not touch: sockets, running pools (they receive an immutable ``Settings`` snapshot).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ADMIN_DATABASE = "pgrouter"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {"b": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2, "gb": 1024**3}
_UNIT_BYTES["gib"] = 1024**3


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``100ms``, ``5s``, ``10m``, ``1h``."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '5s'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(
        f"invalid duration {value!r}: use seconds or a string like '100ms', '5s', '2m'"
    )


def parse_size(value: object) -> int:
    """Bytes from a number or a string such as ``64MB``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(match.group(1)) * _UNIT_BYTES[(match.group(2) or "b").lower()]
    raise ValueError(f"invalid size {value!r}: use bytes or a string like '64MB'")


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
PoolMode = Literal["session", "transaction", "statement"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(6432, ge=0, le=65535)
    max_client_conn: int = Field(1000, ge=1)
    client_login_timeout: Duration = 15.0
    max_message_size: Size = Field(256 * 1024 * 1024, ge=1024)


class UserSettings(_Model):
    password: str | None = None
    pool_mode: PoolMode | None = None


class AuthSettings(_Model):
    type: Literal["trust", "md5", "scram-sha-256"] = "scram-sha-256"
    users: dict[str, UserSettings] = Field(default_factory=dict)
    admin_users: list[str] = Field(default_factory=list)
    auth_user: str | None = None
    auth_query: str = "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1"

    @model_validator(mode="after")
    def _auth_user_known(self) -> AuthSettings:
        if self.auth_user is not None:
            entry = self.users.get(self.auth_user)
            if entry is None or entry.password is None:
                raise ValueError(
                    f"auth_user {self.auth_user!r} needs an entry with a password under auth.users"
                )
        return self


class TlsSettings(_Model):
    client_mode: Literal["disable", "allow", "require"] = "disable"
    cert_file: Path | None = None
    key_file: Path | None = None
    server_mode: Literal["disable", "prefer", "require", "verify-full"] = "disable"
    server_ca_file: Path | None = None

    @model_validator(mode="after")
    def _certificate_present(self) -> TlsSettings:
        if self.client_mode != "disable" and (self.cert_file is None or self.key_file is None):
            raise ValueError(f"client_mode {self.client_mode!r} needs cert_file and key_file")
        return self


class PoolSettings(_Model):
    mode: PoolMode = "session"
    size: int = Field(20, ge=1)
    min_size: int = Field(0, ge=0)
    max_db_connections: int = Field(0, ge=0)
    server_connect_timeout: Duration = 5.0
    server_idle_timeout: Duration = 600.0
    server_lifetime: Duration = 3600.0
    server_reset_query: str = "DISCARD ALL"
    query_wait_timeout: Duration = 120.0
    reserve_size: int = Field(0, ge=0)
    reserve_timeout: Duration = 5.0
    idle_transaction_timeout: Duration = 0.0
    server_check_query: str = "SELECT 1"
    server_check_delay: Duration = 30.0
    max_prepared_statements: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _min_within_size(self) -> PoolSettings:
        if self.min_size > self.size:
            raise ValueError(f"min_size ({self.min_size}) is larger than size ({self.size})")
        return self


class PoolOverrides(_Model):
    """Per-database pool settings; unset fields inherit the top-level ``pool``."""

    mode: PoolMode | None = None
    size: int | None = Field(None, ge=1)
    min_size: int | None = Field(None, ge=0)
    max_db_connections: int | None = Field(None, ge=0)
    server_reset_query: str | None = None
    query_wait_timeout: Duration | None = None
    reserve_size: int | None = Field(None, ge=0)
    idle_transaction_timeout: Duration | None = None


class BackendSettings(_Model):
    host: str
    port: int = Field(5432, ge=1, le=65535)
    dbname: str | None = None
    weight: float = Field(1.0, ge=0)


class DatabaseSettings(_Model):
    primary: BackendSettings
    replicas: list[BackendSettings] = Field(default_factory=list)
    user: str | None = None
    password: str | None = None
    pool: PoolOverrides = Field(default_factory=PoolOverrides)
    # Ask the primary for the write LSN after each writing transaction (only where there
    # are replicas). Off: read_your_writes relies on tokens and sticky_after_write only.
    capture_write_lsn: bool = True


class MonitorSettings(_Model):
    """The replica monitor: a dedicated connection per backend, probed periodically."""

    user: str | None = None  # default: auth.auth_user, else the first user with a password
    password: str | None = None
    probe_interval: Duration = 0.1
    probe_timeout: Duration = 1.0
    max_backoff: Duration = 30.0  # a down backend is re-probed with backoff up to this


class RoutingSettings(_Model):
    """Read/write splitting (transaction and statement modes)."""

    enabled: bool = True
    policy_file: Path | None = None
    primary_reads_weight: float = Field(0.0, ge=0)  # the primary's share in the read set
    write_functions: list[str] = Field(default_factory=list)
    read_functions: list[str] = Field(default_factory=list)
    function_refresh: Duration = 60.0  # re-read user functions' volatility from pg_proc


class MetricsSettings(_Model):
    """The HTTP endpoint for Prometheus (``/metrics``) and the live dashboard."""

    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=0, le=65535)  # None: no HTTP endpoint
    dashboard: bool = True  # serve the dashboard page and /api/state too


class Settings(BaseSettings):
    """The whole configuration. Immutable: a reload builds a new one."""

    model_config = SettingsConfigDict(
        env_prefix="PGROUTER_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    listen: ListenSettings = Field(default_factory=ListenSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    pool: PoolSettings = Field(default_factory=PoolSettings)
    databases: dict[str, DatabaseSettings] = Field(default_factory=dict)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_timeout: Duration = 30.0
    # Processes sharing listen.port (SO_REUSEPORT); each has its own pools, monitor and
    # admin console, so pool sizes are per worker. Read at start only.
    workers: int = Field(1, ge=1, le=256)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables override the file, which arrives as init kwargs.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _workers_share_a_port(self) -> Settings:
        if self.workers > 1 and self.listen.port == 0:
            raise ValueError("workers > 1 needs a fixed listen.port (0 picks one per process)")
        return self

    @model_validator(mode="after")
    def _database_names(self) -> Settings:
        if ADMIN_DATABASE in self.databases:
            raise ValueError(f"database name {ADMIN_DATABASE!r} is reserved for the admin console")
        for name, database in self.databases.items():
            overrides = database.pool.model_dump(exclude_none=True)
            if not overrides:
                continue
            try:  # pool_for merges with model_copy, which does not validate
                PoolSettings.model_validate({**self.pool.model_dump(), **overrides})
            except ValidationError as exc:
                problems = "; ".join(item["msg"] for item in exc.errors())
                raise ValueError(f"databases.{name}.pool: {problems}") from None
        return self

    def monitor_credentials(self) -> tuple[str, str | None] | None:
        """(user, password) the monitor logs in with, or None when no user is known."""
        if self.monitor.user is not None:
            entry = self.auth.users.get(self.monitor.user)
            password = self.monitor.password
            if password is None and entry is not None:
                password = entry.password
            return self.monitor.user, password
        if self.auth.auth_user is not None:
            return self.auth.auth_user, self.auth.users[self.auth.auth_user].password
        for name, entry in self.auth.users.items():
            if entry.password is not None and name not in self.auth.admin_users:
                return name, entry.password
        return None

    def pool_for(self, database: str, user: str | None = None) -> PoolSettings:
        """Effective pool settings for a database (and user, for ``pool_mode``)."""
        overrides = self.databases[database].pool.model_dump(exclude_none=True)
        if user is not None:
            entry = self.auth.users.get(user)
            if entry is not None and entry.pool_mode is not None:
                overrides["mode"] = entry.pool_mode
        return self.pool.model_copy(update=overrides) if overrides else self.pool


class ConfigError(Exception):
    """The configuration file cannot be used; the message lists every problem."""


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {path}: {item['msg']}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(path: Path | str | None) -> Settings:
    """Read ``path`` (YAML), apply ``PGROUTER_*`` overrides, validate."""
    data: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
