"""Policy model: the schema of the routing-policy YAML file (see policies/README.md).

Owns: every policy field's name, type, default and validation, and ``LagBound``, the
replication-lag limit a route tolerates. Models are frozen pydantic models that reject
unknown keys; a reload builds a new ``Policy`` and the caller swaps it in one assignment.
Must not touch: files (``loader.py``), matching (``match.py``), sockets, ``router/``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    field_validator,
)
from pydantic_core import PydanticCustomError

from policies.lag import within
from policies.units import (
    format_duration,
    format_size,
    is_duration_text,
    parse_duration,
    parse_size,
)

if TYPE_CHECKING:
    from policies.match import CompiledPolicy

Route = Literal["primary", "replica", "any"]
Consistency = Literal["eventual", "read_your_writes", "strong"]
OnStale = Literal["primary", "wait", "error"]
Kind = Literal["read", "write", "transaction", "session", "utility", "unknown"]
STATEMENT_KINDS: frozenset[str] = frozenset(get_args(Kind))
POLICY_VERSION = 1
DUPLICATE_RULE_NAME = "duplicate_rule_name"

_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")
_UNBOUNDED = frozenset({"unbounded", "none", "off"})


@dataclass(frozen=True, slots=True)
class LagBound:
    """How far behind the primary a replica may be: in WAL bytes, in seconds, or both.

    A bound that is ``None`` is not checked; ``LagBound()`` admits any lag.
    """

    bytes: int | None = None
    seconds: float | None = None

    def admits(self, lag_bytes: int | None, lag_seconds: float | None) -> bool:
        """Whether a replica with this lag is within the bound. Unknown lag never is."""
        return within(self.bytes, self.seconds, lag_bytes, lag_seconds)

    def __str__(self) -> str:
        parts = []
        if self.bytes is not None:
            parts.append(format_size(self.bytes))
        if self.seconds is not None:
            parts.append(format_duration(self.seconds))
        return " and ".join(parts) or "unbounded"


def parse_lag(value: object) -> LagBound:
    """A ``LagBound`` from bytes (``16MB``, ``1048576``), a duration (``500ms``), both as a
    mapping (``{bytes: 16MB, seconds: 2s}``, both must hold), or ``unbounded``."""
    if isinstance(value, LagBound):
        return value
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{value!r} is not a lag bound")
    if isinstance(value, int):
        return LagBound(bytes=parse_size(value))
    if isinstance(value, float):
        raise ValueError(
            f"{value!r} is not a lag bound: a bare number means bytes; "
            f"write '{value:g}s' for seconds"
        )
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _UNBOUNDED:
            return LagBound()
        if is_duration_text(text):
            return LagBound(seconds=parse_duration(text))
        try:
            return LagBound(bytes=parse_size(text))
        except ValueError:
            raise ValueError(
                f"{value!r} is not a lag bound: use bytes ('16MB', 1048576), "
                "a duration ('500ms', '2s') or 'unbounded'"
            ) from None
    if isinstance(value, Mapping):
        unknown = sorted(str(key) for key in value if key not in ("bytes", "seconds"))
        if unknown or not value:
            raise ValueError(
                f"a lag mapping takes 'bytes' and/or 'seconds' (got {sorted(map(str, value))})"
            )
        size = value.get("bytes")
        duration = value.get("seconds")
        return LagBound(
            bytes=None if size is None else parse_size(size),
            seconds=None if duration is None else parse_duration(duration),
        )
    raise ValueError(f"{value!r} is not a lag bound")


def dump_lag(bound: LagBound) -> str | dict[str, str]:
    """The YAML spelling of a bound, which ``parse_lag`` reads back."""
    if bound.bytes is not None and bound.seconds is not None:
        return {"bytes": format_size(bound.bytes), "seconds": format_duration(bound.seconds)}
    return str(bound)


def _one_or_many(value: object) -> object:
    """Let a single string stand for a list of one: ``tables: audit_*``."""
    return [value] if isinstance(value, str) else value


def _not_empty(items: list[str]) -> list[str]:
    if not items:
        raise ValueError("an empty list never matches; leave the condition out to match anything")
    return items


def _glob(pattern: str) -> str:
    if not pattern.strip():
        raise ValueError("an empty pattern never matches")
    return pattern


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a valid network (use a CIDR like '10.0.0.0/8')"
        ) from None


def _rule_name(name: str) -> str:
    if not _RULE_NAME.match(name):
        raise ValueError(
            f"{name!r} is not a usable rule name: start with a letter or digit and use only "
            "letters, digits and _ . : / -"
        )
    return name


Duration = Annotated[float, BeforeValidator(parse_duration)]
Lag = Annotated[LagBound, PlainValidator(parse_lag), PlainSerializer(dump_lag)]
Globs = Annotated[
    list[Annotated[str, AfterValidator(_glob)]],
    BeforeValidator(_one_or_many),
    AfterValidator(_not_empty),
]
Networks = Annotated[
    list[Annotated[str, AfterValidator(_network)]],
    BeforeValidator(_one_or_many),
    AfterValidator(_not_empty),
]
Kinds = Annotated[list[Kind], BeforeValidator(_one_or_many), AfterValidator(_not_empty)]
RuleName = Annotated[str, AfterValidator(_rule_name)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Model):
    """Conditions on one statement (or routing unit). Every given condition must hold;
    within a condition, any listed pattern may match. An empty match matches everything."""

    kind: Kinds | None = None
    tables: Globs | None = None
    functions: Globs | None = None
    database: Globs | None = None
    user: Globs | None = None
    application_name: Globs | None = None
    client_addr: Networks | None = None
    tag: Globs | None = None


class Rule(_Model):
    """One ordered rule: when ``match`` holds, its set fields override the defaults."""

    name: RuleName
    match: Match = Field(default_factory=Match)
    route: Route | None = None
    max_lag: Lag | None = None
    consistency: Consistency | None = None
    on_stale: OnStale | None = None
    wait_timeout: Duration | None = None


class Defaults(_Model):
    """What applies to a read no rule matched, and to fields a matching rule leaves unset."""

    route: Route = "replica"
    max_lag: Lag = LagBound(seconds=10.0)
    consistency: Consistency = "read_your_writes"
    on_stale: OnStale = "primary"
    wait_timeout: Duration = 1.0
    sticky_after_write: Duration = 0.0


class Policy(_Model):
    """The whole policy file. Immutable: a reload builds a new one."""

    version: int = POLICY_VERSION
    defaults: Defaults = Field(default_factory=Defaults)
    rules: list[Rule] = Field(default_factory=list)

    @functools.cached_property
    def compiled(self) -> CompiledPolicy:
        """The precompiled matcher, built once per ``Policy`` (the loader builds it eagerly).

        Kept out of equality and dumps. Build a changed policy with ``model_validate``,
        not ``model_copy(update=...)``, which would carry the old matcher along.
        """
        from policies.match import CompiledPolicy  # match.py builds on this module

        return CompiledPolicy(self)

    @field_validator("version")
    @classmethod
    def _supported_version(cls, version: int) -> int:
        if version != POLICY_VERSION:
            raise ValueError(
                f"unsupported policy version {version}; this pgrouter reads version "
                f"{POLICY_VERSION}"
            )
        return version

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[Rule]) -> list[Rule]:
        first: dict[str, int] = {}
        for index, rule in enumerate(rules):
            if rule.name in first:
                raise PydanticCustomError(
                    DUPLICATE_RULE_NAME,
                    "rules[{index}]: duplicate rule name '{name}', first used by rules[{first}]",
                    {"index": index, "name": rule.name, "first": first[rule.name]},
                )
            first[rule.name] = index
        return rules
