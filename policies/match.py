"""Rule matching: from what is known about a statement to the route it asks for.

Owns: ``StatementFacts`` (the input), ``RouteRequest`` (the output), ``decide()`` and the
precompiled form of a policy that makes it cheap. Pure: no clocks, no I/O, no replica
state; choosing a concrete server from a ``RouteRequest`` is the router's job.
Must not touch: sockets, files, ``router/``.

Theory of operation: rules are tried in file order and the first whose every condition
holds wins; the fields it leaves unset come from ``defaults``. Only a read may leave the
primary: for any other kind the target is ``primary`` and the reason is the kind, whatever
the rule says, but the matching rule's name is still reported so SHOW ROUTE can explain.
Compiled once per ``Policy``: for each field some rule has a condition on, a
``_FieldIndex`` turns the statement's value into a bit mask of the rules whose condition
holds (bit ``i`` is ``rules[i]``), memoized per value; ANDing the masks leaves the matching
rules, and the lowest set bit is the winner. Every answer a rule can give is built in
advance. So a decision costs a few dictionary lookups, however many rules there are.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from policies.model import (
    STATEMENT_KINDS,
    Consistency,
    Defaults,
    LagBound,
    OnStale,
    Policy,
    Route,
    Rule,
)

READ: Final = "read"
DEFAULT_REASON: Final = "default"
_NOTHING: Final[frozenset[str]] = frozenset()

_Matcher = Callable[[str], object]
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(slots=True)
class StatementFacts:
    """What the router knows about one statement or routing unit.

    ``kind`` is the classifier's kind of the whole unit: ``read`` only if it may run on a
    replica (an autocommit read, a read-only transaction, a pipeline of reads).
    ``client_addr`` is the client's IP address as text, ``None`` for a Unix socket.
    Made per routed unit: a written-out __init__ that compiles (the generated one is
    interpreted code). Treat it as immutable.
    """

    kind: str
    tables: frozenset[str]
    functions: frozenset[str]
    tags: frozenset[str]
    database: str
    user: str
    application_name: str
    client_addr: str | None

    def __init__(
        self,
        kind: str,
        tables: frozenset[str] = _NOTHING,
        functions: frozenset[str] = _NOTHING,
        tags: frozenset[str] = _NOTHING,
        database: str = "",
        user: str = "",
        application_name: str = "",
        client_addr: str | None = None,
    ) -> None:
        self.kind = kind
        self.tables = tables
        self.functions = functions
        self.tags = tags
        self.database = database
        self.user = user
        self.application_name = application_name
        self.client_addr = client_addr


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a statement asks of the router. ``rule`` is the matching rule's name (``None``
    when the defaults applied); ``reason`` is ``rule:<name>`` or ``default`` for a read,
    the kind (``write``, ``transaction``, ...) for anything else."""

    target: Route
    max_lag: LagBound
    consistency: Consistency
    on_stale: OnStale
    wait_timeout: float
    rule: str | None
    reason: str


def _matcher(patterns: Iterable[str]) -> _Matcher | None:
    """One case-insensitive regex for a list of globs, as a bound ``match``."""
    translated = [fnmatch.translate(pattern) for pattern in patterns]
    if not translated:
        return None
    return re.compile("|".join(translated), re.IGNORECASE).match


_Test = Callable[[Any], bool]
_MEMO_LIMIT: Final = 4096


def _glob_test(patterns: list[str]) -> _Test:
    """Whether a whole value (database, user, application name, tag) matches a glob."""
    match = _matcher(patterns)
    assert match is not None  # the model rejects empty lists
    return lambda value: match(value) is not None


def _name_test(patterns: list[str]) -> _Test:
    """Whether an object name that may be schema-qualified (a table, a function) matches.

    A pattern with a dot is matched against the name as the statement wrote it
    (``reports.*`` matches ``reports.daily``); a pattern without one against the name
    without its schema (``audit_*`` matches ``audit_log`` and ``public.audit_log``).
    """
    qualified = _matcher(pattern for pattern in patterns if "." in pattern)
    bare = _matcher(pattern for pattern in patterns if "." not in pattern)

    def test(name: str) -> bool:
        if qualified is not None and qualified(name) is not None:
            return True
        return bare is not None and bare(name.rpartition(".")[2]) is not None

    return test


def _network_test(cidrs: list[str]) -> _Test:
    networks = tuple(ipaddress.ip_network(cidr) for cidr in cidrs)

    def test(text: str | None) -> bool:
        if text is None:  # a Unix-socket client has no address
            return False
        address = _address(text)
        return address is not None and any(address in network for network in networks)

    return test


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> _Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack listener reports ::ffff:10.1.2.3
    return address


# StatementFacts attribute, Match field, whether the attribute is a set, how to test one
# value. In this order because kind, tags and the session fields usually rule most rules
# out before any table name is looked at.
_FIELDS: Final[tuple[tuple[str, str, bool, Callable[[list[str]], _Test]], ...]] = (
    ("kind", "kind", False, lambda kinds: frozenset(kinds).__contains__),
    ("tags", "tag", True, _glob_test),
    ("database", "database", False, _glob_test),
    ("user", "user", False, _glob_test),
    ("application_name", "application_name", False, _glob_test),
    ("client_addr", "client_addr", False, _network_test),
    ("tables", "tables", True, _name_test),
    ("functions", "functions", True, _name_test),
)


class _FieldIndex:
    """For one ``StatementFacts`` field, the rules whose condition on it holds, as a bit
    mask (bit ``i`` is ``rules[i]``). Rules without a condition on the field always hold.

    Masks are memoized per value: the session fields are the same for every statement of
    a client, and table and function names recur; so a decision costs a few dictionary
    lookups however many rules there are.
    """

    __slots__ = ("_always", "_memo", "_tests", "attribute", "many")

    def __init__(self, attribute: str, many: bool, tests: list[_Test | None]) -> None:
        self.attribute = attribute
        self.many = many
        self._always = sum(1 << index for index, test in enumerate(tests) if test is None)
        self._tests = [(1 << index, test) for index, test in enumerate(tests) if test is not None]
        self._memo: dict[object, int] = {}

    def mask(self, facts: StatementFacts) -> int:
        value = getattr(facts, self.attribute)
        memo = self._memo
        if not self.many:
            mask = memo.get(value)
            return self._remember(value, self._always | self._test(value)) if mask is None else mask
        mask = self._always
        for item in value:
            item_mask = memo.get(item)
            mask |= self._remember(item, self._test(item)) if item_mask is None else item_mask
        return mask

    def _test(self, value: object) -> int:
        mask = 0
        for bit, test in self._tests:
            if test(value):
                mask |= bit
        return mask

    def _remember(self, value: object, mask: int) -> int:
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[value] = mask
        return mask


class _Answers:
    """Every ``RouteRequest`` one rule (or the defaults) can produce, built in advance."""

    __slots__ = ("_by_kind", "_read")

    def __init__(self, rule: Rule | None, defaults: Defaults) -> None:
        self._read = _request(rule, defaults, None)
        self._by_kind = {kind: _request(rule, defaults, kind) for kind in STATEMENT_KINDS}

    def for_kind(self, kind: str) -> RouteRequest:
        if kind == READ:
            return self._read
        answer = self._by_kind.get(kind)
        return answer if answer is not None else _non_read(self._read, kind)


def _request(rule: Rule | None, defaults: Defaults, kind: str | None) -> RouteRequest:
    read = RouteRequest(
        target=defaults.route if rule is None or rule.route is None else rule.route,
        max_lag=defaults.max_lag if rule is None or rule.max_lag is None else rule.max_lag,
        consistency=defaults.consistency
        if rule is None or rule.consistency is None
        else rule.consistency,
        on_stale=defaults.on_stale if rule is None or rule.on_stale is None else rule.on_stale,
        wait_timeout=defaults.wait_timeout
        if rule is None or rule.wait_timeout is None
        else rule.wait_timeout,
        rule=None if rule is None else rule.name,
        reason=DEFAULT_REASON if rule is None else f"rule:{rule.name}",
    )
    return read if kind is None or kind == READ else _non_read(read, kind)


def _non_read(read: RouteRequest, kind: str) -> RouteRequest:
    # Only a read may leave the primary, whatever a rule or the defaults say.
    return RouteRequest(
        target="primary",
        max_lag=read.max_lag,
        consistency=read.consistency,
        on_stale=read.on_stale,
        wait_timeout=read.wait_timeout,
        rule=read.rule,
        reason=kind,
    )


class CompiledPolicy:
    """A ``Policy`` with its globs and networks compiled; ``Policy.compiled`` builds one."""

    __slots__ = ("_all", "_answers", "_default", "_indexes", "policy")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        rules = policy.rules
        self._all = (1 << len(rules)) - 1
        self._answers = tuple(_Answers(rule, policy.defaults) for rule in rules)
        self._default = _Answers(None, policy.defaults)
        indexes = []
        for attribute, field, many, build in _FIELDS:
            tests = _tests(rules, field, build)
            if any(test is not None for test in tests):  # else nothing to check
                indexes.append(_FieldIndex(attribute, many, tests))
        self._indexes = tuple(indexes)

    def decide(self, facts: StatementFacts) -> RouteRequest:
        mask = self._matching(facts)
        if not mask:
            return self._default.for_kind(facts.kind)
        first = (mask & -mask).bit_length() - 1
        return self._answers[first].for_kind(facts.kind)

    @property
    def needs_facts(self) -> bool:
        """Whether some rule looks at a statement's or client's facts; when none does,
        ``decide_kind`` gives the same answer without building them."""
        return bool(self._indexes)

    def decide_kind(self, kind: str) -> RouteRequest:
        """``decide`` for a policy whose rules look at no facts (``needs_facts`` False)."""
        mask = self._all
        if not mask:
            return self._default.for_kind(kind)
        return self._answers[0].for_kind(kind)

    def matching_rules(self, facts: StatementFacts) -> list[str]:
        """Every rule that matches, in order: the first decides, the rest are shadowed."""
        mask = self._matching(facts)
        return [rule.name for index, rule in enumerate(self.policy.rules) if mask >> index & 1]

    def _matching(self, facts: StatementFacts) -> int:
        mask = self._all
        for index in self._indexes:
            mask &= index.mask(facts)
            if not mask:
                break
        return mask


def _tests(
    rules: list[Rule], field: str, build: Callable[[list[str]], _Test]
) -> list[_Test | None]:
    tests: list[_Test | None] = []
    for rule in rules:
        patterns: list[str] | None = getattr(rule.match, field)
        tests.append(None if patterns is None else build(patterns))
    return tests


def compile_policy(policy: Policy) -> CompiledPolicy:
    """The compiled form of ``policy``, built on first use and kept on the policy."""
    return policy.compiled


def decide(policy: Policy, facts: StatementFacts) -> RouteRequest:
    """The route ``facts`` ask for under ``policy``: the first matching rule, else defaults."""
    return policy.compiled.decide(facts)
