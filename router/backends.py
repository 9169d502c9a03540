"""Backends: where server connections go, and with which credentials.

Owns: the immutable description of one PostgreSQL server a database maps to (its role,
address and server-side database name) and the credentials used to log in to it.
Must not touch: sockets, pools, replica health (later issues add a monitor beside this).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from router.config import BackendSettings, DatabaseSettings

Role = Literal["primary", "replica"]


@dataclass(frozen=True, slots=True)
class Backend:
    """One server of a database: the primary or one replica."""

    name: str  # "primary", "replica1", ...
    role: Role
    host: str
    port: int
    dbname: str
    weight: float = 1.0

    @property
    def label(self) -> str:
        return f"{self.name} {self.host}:{self.port}"


def backends_of(database: str, settings: DatabaseSettings) -> list[Backend]:
    """The primary first, then the replicas in config order."""

    def make(name: str, role: Role, entry: BackendSettings) -> Backend:
        return Backend(name, role, entry.host, entry.port, entry.dbname or database, entry.weight)

    result = [make("primary", "primary", settings.primary)]
    result += [make(f"replica{i}", "replica", r) for i, r in enumerate(settings.replicas, 1)]
    return result


@dataclass(frozen=True, slots=True)
class ServerCredentials:
    """How the proxy logs in to servers as ``user``.

    ``password`` is a plaintext password; ``md5_hash`` is the ``md5...`` form stored by
    PostgreSQL, enough for md5 authentication; ``scram_keys`` are the ClientKey and
    ServerKey recovered from a client's SCRAM exchange, enough for SCRAM pass-through.
    """

    user: str
    password: str | None = None
    md5_hash: str | None = None
    scram_keys: tuple[bytes, bytes] | None = None

    def usable(self) -> bool:
        return bool(self.password is not None or self.md5_hash or self.scram_keys)
