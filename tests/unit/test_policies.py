"""Unit tests for policies/: units, the model, YAML loading and its errors, matching,
decide(), and PolicyFile reloading."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies import (
    LagBound,
    Policy,
    PolicyError,
    PolicyFile,
    StatementFacts,
    compile_policy,
    decide,
    load_policy,
    parse_lag,
    parse_policy,
)
from policies.units import format_duration, format_size, parse_duration, parse_size

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policies.yaml"


def facts(
    kind: str = "read",
    *,
    tables: Iterable[str] = (),
    functions: Iterable[str] = (),
    tags: Iterable[str] = (),
    database: str = "",
    user: str = "",
    application_name: str = "",
    client_addr: str | None = None,
) -> StatementFacts:
    return StatementFacts(
        kind=kind,
        tables=frozenset(tables),
        functions=frozenset(functions),
        tags=frozenset(tags),
        database=database,
        user=user,
        application_name=application_name,
        client_addr=client_addr,
    )


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "test.yaml")
    assert str(caught.value).startswith("invalid policy test.yaml:\n")
    return caught.value.problems


def only_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# --- units ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (2, 2.0),
        (0.5, 0.5),
        ("2", 2.0),
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("5min", 300.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        (" 3 S ", 3.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [-1, "-1s", "soon", "5mb", True, None, float("inf"), "1 week"])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0),
        (1048576, 1048576),
        ("512", 512),
        ("512B", 512),
        ("512kB", 512 * 1024),
        ("16MB", 16 * 1024**2),
        ("16mib", 16 * 1024**2),
        ("1.5GB", 3 * 1024**3 // 2),
        ("1TB", 1024**4),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", [-5, "-5MB", "5m", "0.5B", "lots", 1.5, False])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_round_trips() -> None:
    assert format_duration(0.5) == "500ms"
    assert format_duration(120) == "2min"
    assert format_duration(0) == "0s"
    assert format_duration(1.25) == "1250ms"
    assert format_size(16 * 1024**2) == "16MB"
    assert format_size(1000) == "1000B"
    for seconds in (0.0, 0.001, 0.5, 2.0, 90.0, 7200.0):
        assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
    for size in (0, 1, 1024, 1536, 16 * 1024**2, 3 * 1024**3):
        assert parse_size(format_size(size)) == size


# --- lag bounds ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "bound"),
    [
        (1048576, LagBound(bytes=1048576)),
        ("16MB", LagBound(bytes=16 * 1024**2)),
        ("1024", LagBound(bytes=1024)),
        ("500ms", LagBound(seconds=0.5)),
        ("2s", LagBound(seconds=2.0)),
        ("unbounded", LagBound()),
        ({"bytes": "1MB", "seconds": "2s"}, LagBound(bytes=1024**2, seconds=2.0)),
        ({"seconds": 3}, LagBound(seconds=3.0)),
    ],
)
def test_parse_lag(value: object, bound: LagBound) -> None:
    assert parse_lag(value) == bound


@pytest.mark.parametrize("value", [1.5, True, "fast", "-2s", {}, {"secs": 1}, [1]])
def test_parse_lag_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_lag(value)


def test_lag_bound_admits() -> None:
    both = LagBound(bytes=1000, seconds=2.0)
    assert both.admits(1000, 2.0)
    assert not both.admits(1001, 0.0)
    assert not both.admits(0, 2.1)
    assert not LagBound(seconds=1.0).admits(0, None)  # an unknown lag is never fresh enough
    assert LagBound(seconds=1.0).admits(None, 0.5)  # ... unless it is not checked
    assert LagBound().admits(None, None)
    assert str(both) == "1000B and 2s"
    assert str(LagBound()) == "unbounded"


# --- loading valid files -------------------------------------------------------------


def test_empty_file_is_the_default_policy() -> None:
    for text in ("", "\n", "# only a comment\n", "---\n"):
        assert parse_policy(text) == Policy()
    default = Policy()
    assert default.defaults.route == "replica"
    assert default.defaults.max_lag == LagBound(seconds=10.0)
    assert default.defaults.consistency == "read_your_writes"
    assert default.defaults.on_stale == "primary"
    assert default.defaults.wait_timeout == 1.0
    assert default.defaults.sticky_after_write == 0.0
    assert default.rules == []


def test_example_file_loads() -> None:
    policy = load_policy(EXAMPLE)
    names = [rule.name for rule in policy.rules]
    assert names == [
        "audit",
        "billing",
        "reports",
        "dashboard",
        "analytics",
        "internal-etl",
        "admin-db",
    ]
    billing = policy.rules[1]
    assert (billing.consistency, billing.on_stale, billing.wait_timeout) == ("strong", "wait", 0.5)
    assert policy.rules[2].max_lag == LagBound(seconds=30.0)
    assert policy.rules[3].max_lag == LagBound(bytes=64 * 1024**2, seconds=5.0)
    assert policy.rules[5].match.client_addr == ["10.0.0.0/8", "fd00::/8"]


def test_example_file_decisions() -> None:
    policy = load_policy(EXAMPLE)
    report = decide(policy, facts(tables={"reports.daily"}))
    assert (report.target, report.max_lag, report.consistency) == (
        "any",
        LagBound(seconds=30.0),
        "eventual",
    )
    billing = decide(policy, facts(tables={"orders", "billing.accounts"}))
    assert (billing.consistency, billing.on_stale, billing.wait_timeout) == ("strong", "wait", 0.5)
    assert decide(policy, facts(functions={"audit_log_read"})).target == "primary"
    assert decide(policy, facts(application_name="analytics-worker")).reason == "rule:analytics"
    etl = decide(policy, facts(user="etl_nightly", client_addr="10.3.4.5"))
    assert (etl.rule, etl.on_stale) == ("internal-etl", "error")
    assert decide(policy, facts(user="etl_nightly", client_addr="192.168.1.1")).rule is None


def test_single_string_stands_for_a_list() -> None:
    policy = parse_policy("rules: [{name: a, match: {tables: 'audit_*', kind: read}}]")
    assert policy.rules[0].match.tables == ["audit_*"]
    assert policy.rules[0].match.kind == ["read"]


def test_durations_in_rules_and_defaults() -> None:
    policy = parse_policy(
        "defaults: {wait_timeout: 250ms, sticky_after_write: 2s}\n"
        "rules: [{name: a, wait_timeout: 3}]\n"
    )
    assert policy.defaults.wait_timeout == 0.25
    assert policy.defaults.sticky_after_write == 2.0
    assert policy.rules[0].wait_timeout == 3.0


def test_dump_round_trips() -> None:
    policy = load_policy(EXAMPLE)
    text = yaml.safe_dump(policy.model_dump(exclude_none=True))
    assert parse_policy(text) == policy


def test_policy_is_immutable() -> None:
    policy = parse_policy("rules: [{name: a}]")
    with pytest.raises(ValueError):
        policy.rules[0].name = "b"  # type: ignore[misc]


# --- error messages ------------------------------------------------------------------

RULES_HEAD = "rules:\n  - name: first\n  - name: reports\n    match:\n"


def test_bad_cidr() -> None:
    text = RULES_HEAD + "      client_addr: ['10.0.0.0/8', '10.0.0.300/8']\n"
    assert only_problem(text) == (
        "rules[1] (name 'reports').match.client_addr[1]: '10.0.0.300/8' is not a valid "
        "network (use a CIDR like '10.0.0.0/8') (line 5)"
    )


def test_bad_ipv6_cidr() -> None:
    problem = only_problem("rules: [{name: a, match: {client_addr: 'fd00::/129'}}]")
    assert problem.startswith("rules[0] (name 'a').match.client_addr[0]: 'fd00::/129' is not")


def test_bad_glob_type() -> None:
    problem = only_problem(RULES_HEAD + "      tables: [reports, 5]\n")
    assert problem == (
        "rules[1] (name 'reports').match.tables[1]: Input should be a valid string (got 5) (line 5)"
    )
    problem = only_problem("rules: [{name: a, match: {user: {admin: true}}}]")
    assert problem.startswith("rules[0] (name 'a').match.user: ")


def test_empty_list_and_pattern() -> None:
    assert "an empty list never matches" in only_problem("rules: [{name: a, match: {tag: []}}]")
    assert "an empty pattern never matches" in only_problem(
        "rules: [{name: a, match: {tables: ['']}}]"
    )


def test_unknown_keys() -> None:
    found = problems(
        "colour: red\n"
        "defaults: {rout: primary}\n"
        "rules:\n"
        "  - name: a\n"
        "    match: {table: x}\n"
        "    lag: 1s\n"
    )
    assert found == [
        "colour: unknown key; expected one of: version, defaults, rules (line 1)",
        "defaults.rout: unknown key; expected one of: route, max_lag, consistency, on_stale, "
        "wait_timeout, sticky_after_write (line 2)",
        "rules[0] (name 'a').match.table: unknown key; expected one of: kind, tables, "
        "functions, database, user, application_name, client_addr, tag (line 5)",
        "rules[0] (name 'a').lag: unknown key; expected one of: name, match, route, max_lag, "
        "consistency, on_stale, wait_timeout (line 6)",
    ]


def test_duplicate_rule_names_every_repeat() -> None:
    found = problems(
        "rules:\n  - name: a\n  - name: b\n  - name: a\n  - name: a\n    route: nowhere\n"
    )
    assert found == [
        "rules[2] (name 'a').name: duplicate rule name, first used by rules[0] (line 4)",
        "rules[3] (name 'a').name: duplicate rule name, first used by rules[0] (line 5)",
        "rules[3] (name 'a').route: Input should be 'primary', 'replica' or 'any' "
        "(got 'nowhere') (line 6)",
    ]


def test_duplicate_rule_names_without_the_loader() -> None:
    with pytest.raises(ValueError, match="duplicate rule name 'a'"):
        Policy.model_validate({"rules": [{"name": "a"}, {"name": "a"}]})


def test_duplicate_yaml_key() -> None:
    problem = only_problem("rules:\n  - name: a\n    route: replica\n    route: primary\n")
    assert problem == "rules[0] (name 'a').route: duplicate key; only one is allowed (line 4)"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("max_lag", "'30x'", "'30x' is not a lag bound: use bytes"),
        ("max_lag", "1.5", "1.5 is not a lag bound: a bare number means bytes; write '1.5s'"),
        ("max_lag", "'-1MB'", "'-1MB' is not a lag bound"),
        ("max_lag", "{bytes: 1MB, secs: 2}", "a lag mapping takes 'bytes' and/or 'seconds'"),
        ("wait_timeout", "-1", "a duration cannot be negative (-1)"),
        ("wait_timeout", "'-500ms'", "a duration cannot be negative ('-500ms')"),
        ("wait_timeout", "'soon'", "'soon' is not a duration"),
        ("route", "replicas", "Input should be 'primary', 'replica' or 'any' (got 'replicas')"),
        (
            "consistency",
            "causal",
            "Input should be 'eventual', 'read_your_writes' or 'strong' (got 'causal')",
        ),
        ("on_stale", "retry", "Input should be 'primary', 'wait' or 'error' (got 'retry')"),
        ("name", "'two words'", "'two words' is not a usable rule name"),
    ],
)
def test_rule_field_errors(field: str, value: str, reason: str) -> None:
    text = f"rules:\n  - name: first\n  - {field}: {value}\n"
    if field != "name":
        text += "    name: second\n"
    problem = only_problem(text)
    label = "rules[1] (name 'two words')" if field == "name" else "rules[1] (name 'second')"
    assert problem.startswith(f"{label}.{field}: {reason}"), problem
    assert problem.endswith("(line 3)")


def test_wrong_kind_value() -> None:
    assert only_problem("rules: [{name: a, match: {kind: [read, select]}}]") == (
        "rules[0] (name 'a').match.kind[1]: Input should be 'read', 'write', 'transaction', "
        "'session', 'utility' or 'unknown' (got 'select') (line 1)"
    )


def test_default_field_errors() -> None:
    found = problems("defaults:\n  route: replicas\n  sticky_after_write: -2\n")
    assert found == [
        "defaults.route: Input should be 'primary', 'replica' or 'any' (got 'replicas') (line 2)",
        "defaults.sticky_after_write: a duration cannot be negative (-2) (line 3)",
    ]


def test_missing_name_and_wrong_shapes() -> None:
    assert only_problem("rules:\n  - route: any\n") == "rules[0].name: Field required (line 2)"
    assert only_problem("rules: {name: a}").startswith("rules: Input should be a valid list")
    assert only_problem("- name: a\n") == (
        "(top level): the file must be a mapping, e.g. 'rules: [...]'"
    )


def test_version() -> None:
    assert parse_policy("version: 1").version == 1
    assert only_problem("version: 2\n") == (
        "version: unsupported policy version 2; this pgrouter reads version 1 (line 1)"
    )


def test_yaml_syntax_error() -> None:
    problem = only_problem("rules:\n  - name: [a\n")
    assert problem.startswith("(yaml): ")
    assert "(line 3, column 1)" in problem


def test_problems_are_sorted_by_line() -> None:
    found = problems(
        "rules:\n  - name: a\n    max_lag: nope\n    route: up\n    match: {client_addr: 'x'}\n"
    )
    assert [problem.rsplit("(line ", 1)[1] for problem in found] == ["3)", "4)", "5)"]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe rules")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(binary)


# --- matching ------------------------------------------------------------------------


def test_first_matching_rule_wins() -> None:
    policy = parse_policy(
        "rules:\n"
        "  - {name: narrow, match: {tables: [reports.daily]}, max_lag: 1s}\n"
        "  - {name: wide, match: {tables: ['reports.*']}, max_lag: 30s}\n"
        "  - {name: everything, route: any}\n"
    )
    assert decide(policy, facts(tables={"reports.daily"})).rule == "narrow"
    assert decide(policy, facts(tables={"reports.weekly"})).rule == "wide"
    assert decide(policy, facts(tables={"orders"})).rule == "everything"
    swapped = parse_policy(
        "rules:\n"
        "  - {name: wide, match: {tables: ['reports.*']}}\n"
        "  - {name: narrow, match: {tables: [reports.daily]}}\n"
    )
    assert decide(swapped, facts(tables={"reports.daily"})).rule == "wide"


def test_empty_match_matches_everything() -> None:
    policy = parse_policy("rules: [{name: all, match: {}}]")
    assert decide(policy, facts()).rule == "all"
    assert decide(policy, facts(client_addr=None, database="", user="")).rule == "all"


def test_all_conditions_must_hold() -> None:
    policy = parse_policy(
        "rules: [{name: r, match: {user: [web], database: [shop], tables: [orders]}}]"
    )
    assert decide(policy, facts(user="web", database="shop", tables={"orders"})).rule == "r"
    assert decide(policy, facts(user="web", database="shop", tables={"items"})).rule is None
    assert decide(policy, facts(user="etl", database="shop", tables={"orders"})).rule is None
    assert decide(policy, facts(user="web", database="blog", tables={"orders"})).rule is None


def one_rule(condition: str) -> Policy:
    return parse_policy(f"rules: [{{name: r, match: {{{condition}}}}}]")


def matched(policy: Policy, **kw: Any) -> bool:
    return decide(policy, facts(**kw)).rule == "r"


def test_match_kind() -> None:
    policy = one_rule("kind: [read, utility]")
    assert matched(policy, kind="read")
    assert matched(policy, kind="utility")
    assert not matched(policy, kind="write")


def test_match_tables() -> None:
    qualified = one_rule("tables: ['reports.*']")
    assert matched(qualified, tables={"orders", "reports.daily"})  # any touched table
    assert matched(qualified, tables={"Reports.Daily"})  # case-insensitive
    assert not matched(qualified, tables={"daily"})  # unqualified could be any schema
    assert not matched(qualified, tables={"reportsx.daily"})
    assert not matched(qualified, tables=set())
    bare = one_rule("tables: ['audit_*', orders]")
    assert matched(bare, tables={"audit_log"})
    assert matched(bare, tables={"public.audit_log"})  # a bare glob ignores the schema
    assert matched(bare, tables={"shop.ORDERS"})
    assert not matched(bare, tables={"orders_archive", "audit"})
    classes = one_rule("tables: ['part_20[0-9][0-9]']")
    assert matched(classes, tables={"part_2024"})
    assert not matched(classes, tables={"part_19xx"})


def test_match_functions() -> None:
    policy = one_rule("functions: ['audit_*', 'pg_catalog.pg_sleep']")
    assert matched(policy, functions={"lower", "audit_read"})
    assert matched(policy, functions={"app.audit_read"})
    assert matched(policy, functions={"pg_catalog.pg_sleep"})
    assert not matched(policy, functions={"pg_sleep"})
    assert not matched(policy, functions=set())


@pytest.mark.parametrize("field", ["database", "user", "application_name"])
def test_match_session_globs(field: str) -> None:
    policy = one_rule(f"{field}: ['report?', 'bi-*']")
    assert matched(policy, **{field: "reports"})
    assert matched(policy, **{field: "BI-Dashboard"})
    assert not matched(policy, **{field: "report"})
    assert not matched(policy, **{field: "the-bi-tool"})
    assert not matched(policy, **{field: ""})


def test_match_tag() -> None:
    policy = one_rule("tag: [reports, 'batch-*']")
    assert matched(policy, tags={"reports"})
    assert matched(policy, tags={"other", "batch-7"})
    assert not matched(policy, tags={"report"})
    assert not matched(policy, tags=set())


def test_match_client_addr_ipv4() -> None:
    policy = one_rule("client_addr: ['10.1.2.3/8', 192.168.7.7]")
    assert policy.rules[0].match.client_addr == ["10.0.0.0/8", "192.168.7.7/32"]
    assert matched(policy, client_addr="10.200.0.1")
    assert matched(policy, client_addr="192.168.7.7")
    assert matched(policy, client_addr="::ffff:10.0.0.9")  # IPv4 through a dual-stack socket
    assert not matched(policy, client_addr="192.168.7.8")
    assert not matched(policy, client_addr="11.0.0.1")
    assert not matched(policy, client_addr="::1")


def test_match_client_addr_ipv6() -> None:
    policy = one_rule("client_addr: ['fd00::/8', '::1']")
    assert matched(policy, client_addr="fd12:3456::1")
    assert matched(policy, client_addr="::1")
    assert not matched(policy, client_addr="fe80::1")
    assert not matched(policy, client_addr="10.0.0.1")


def test_unix_socket_client_never_matches_a_cidr() -> None:
    policy = one_rule("client_addr: ['0.0.0.0/0', '::/0']")
    assert matched(policy, client_addr="127.0.0.1")
    assert not matched(policy, client_addr=None)
    assert not matched(policy, client_addr="not-an-address")


# --- decisions -----------------------------------------------------------------------


def test_defaults_fill_unset_fields() -> None:
    policy = parse_policy(
        "defaults: {route: any, max_lag: 16MB, consistency: eventual, on_stale: error,"
        " wait_timeout: 2s}\n"
        "rules: [{name: strict, match: {tag: [strict]}, consistency: strong}]\n"
    )
    request = decide(policy, facts(tags={"strict"}))
    assert request.target == "any"
    assert request.max_lag == LagBound(bytes=16 * 1024**2)
    assert request.consistency == "strong"
    assert request.on_stale == "error"
    assert request.wait_timeout == 2.0
    assert (request.rule, request.reason) == ("strict", "rule:strict")


def test_no_rule_matches_gives_defaults() -> None:
    request = decide(Policy(), facts())
    assert request.target == "replica"
    assert request.max_lag == LagBound(seconds=10.0)
    assert (request.consistency, request.on_stale, request.wait_timeout) == (
        "read_your_writes",
        "primary",
        1.0,
    )
    assert (request.rule, request.reason) == (None, "default")


@pytest.mark.parametrize(
    "kind", ["write", "transaction", "session", "utility", "unknown", "not-a-known-kind"]
)
def test_non_reads_never_go_to_a_replica(kind: str) -> None:
    policy = parse_policy(
        "defaults: {route: replica}\n"
        "rules:\n"
        "  - {name: to-replica, match: {tables: [t]}, route: replica}\n"
        "  - {name: to-any, match: {tables: [u]}, route: any}\n"
    )
    for table, rule in (("t", "to-replica"), ("u", "to-any"), ("v", None)):
        request = decide(policy, facts(kind, tables={table}))
        assert request.target == "primary"
        assert request.reason == kind
        assert request.rule == rule  # still reported, so SHOW ROUTE can explain


def test_read_routes() -> None:
    policy = parse_policy(
        "rules:\n"
        "  - {name: p, match: {tag: [p]}, route: primary}\n"
        "  - {name: a, match: {tag: [a]}, route: any}\n"
    )
    assert decide(policy, facts(tags={"p"})).target == "primary"
    assert decide(policy, facts(tags={"a"})).target == "any"
    assert decide(policy, facts()).target == "replica"


def test_rule_limited_to_reads_by_kind() -> None:
    policy = parse_policy("rules: [{name: reads, match: {kind: [read]}, max_lag: 1s}]")
    assert decide(policy, facts("read")).rule == "reads"
    assert decide(policy, facts("write")).rule is None


def test_compiled_once_per_policy() -> None:
    policy = parse_policy("rules: [{name: a}]")
    assert compile_policy(policy) is compile_policy(policy)
    built = Policy.model_validate({"rules": [{"name": "b", "match": {"user": "x"}}]})
    assert decide(built, facts(user="x")).rule == "b"  # compiled on first use


def test_decide_timing() -> None:
    rules = "\n".join(
        f"  - {{name: r{index}, match: {{tables: ['schema{index}.*', 'audit{index}_*'],"
        f" user: ['svc{index}'], client_addr: ['10.{index}.0.0/16']}}, max_lag: 1s}}"
        for index in range(19)
    )
    policy = parse_policy(f"rules:\n{rules}\n  - {{name: last, match: {{tag: [t]}}}}\n")
    last = facts(tables={"public.orders", "public.items"}, tags={"t"}, user="svc19")
    late = facts(tables={"audit18_log"}, user="svc18", client_addr="10.18.1.2")
    assert decide(policy, last).rule == "last"
    assert decide(policy, late).rule == "r18"
    for name, statement in (("last rule (tables)", last), ("19th rule (every field)", late)):
        rounds, best = 10000, float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(rounds):
                decide(policy, statement)
            best = min(best, (time.perf_counter() - started) / rounds)
        print(f"decide over 20 rules, {name}: {best * 1e6:.2f} us (best of 5)")


def test_decide_with_many_distinct_values() -> None:
    # Memoized masks are bounded and must not change answers when the memo is cleared.
    policy = parse_policy("rules: [{name: r, match: {application_name: ['app-1*']}}]")
    for number in range(10000):
        expected = "r" if str(number).startswith("1") else None
        assert decide(policy, facts(application_name=f"app-{number}")).rule == expected


def test_matching_rules_lists_shadowed_rules() -> None:
    policy = parse_policy(
        "rules:\n"
        "  - {name: a, match: {tables: [orders]}}\n"
        "  - {name: b, match: {user: [web]}}\n"
        "  - {name: c}\n"
    )
    compiled = compile_policy(policy)
    assert compiled.matching_rules(facts(tables={"orders"}, user="web")) == ["a", "b", "c"]
    assert compiled.matching_rules(facts(user="etl")) == ["c"]


# --- PolicyFile ----------------------------------------------------------------------


def write(path: Path, text: str, bump: int) -> None:
    path.write_text(text, encoding="utf-8")
    # Filesystems with coarse timestamps could hide a quick rewrite; move mtime explicitly.
    stamp = 1_700_000_000_000_000_000 + bump * 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


def test_policy_file_reloads_on_change(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    write(path, "rules: [{name: a}]\n", 0)
    watched = PolicyFile(path)
    assert [rule.name for rule in watched.current.rules] == ["a"]
    assert watched.check() is None

    write(path, "rules: [{name: b}]\n", 1)
    new = watched.check()
    assert new is not None and new is watched.current
    assert [rule.name for rule in new.rules] == ["b"]
    assert watched.check() is None


def test_policy_file_keeps_policy_on_invalid_edit(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    write(path, "rules: [{name: a, route: any}]\n", 0)
    watched = PolicyFile(path)
    good = watched.current

    write(path, "rules: [{name: a, route: sideways}]\n", 1)
    with pytest.raises(PolicyError, match=r"rules\[0\] \(name 'a'\)\.route"):
        watched.check()
    assert watched.current is good
    assert watched.check() is None  # the same broken file is reported once...
    with pytest.raises(PolicyError):
        watched.check(force=True)  # ...and again on RELOAD
    assert watched.current is good

    write(path, "rules: [{name: a, route: primary}]\n", 2)
    fixed = watched.check()
    assert fixed is not None and fixed.rules[0].route == "primary"


def test_policy_file_ignores_touch_and_revert(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    write(path, "rules: [{name: a}]\n", 0)
    watched = PolicyFile(path)
    write(path, "rules: [{name: a}]\n", 1)  # touched, same content
    assert watched.check() is None
    write(path, "rules: [{name: a, route: nowhere}]\n", 2)
    with pytest.raises(PolicyError):
        watched.check()
    write(path, "rules: [{name: a}]\n", 3)  # reverted to what is running
    assert watched.check() is None
    assert watched.check(force=True) is None


def test_policy_file_removed_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    write(path, "rules: [{name: a}]\n", 0)
    watched = PolicyFile(path)
    path.unlink()
    with pytest.raises(PolicyError, match="cannot be read"):
        watched.check()
    assert watched.check() is None  # reported once while it stays missing
    assert [rule.name for rule in watched.current.rules] == ["a"]
    replacement = tmp_path / "new.yaml"
    write(replacement, "rules: [{name: c}]\n", 1)
    replacement.rename(path)  # how editors and config maps replace files
    new = watched.check()
    assert new is not None and [rule.name for rule in new.rules] == ["c"]


def test_policy_file_must_be_valid_at_start(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    write(path, "rules: [{name: a, colour: red}]\n", 0)
    with pytest.raises(PolicyError, match="colour: unknown key"):
        PolicyFile(path)
