"""Explaining routing decisions: for ``pgrouter route`` and the admin console.

Owns: turning a statement into a readable account of its classification, the policy
rules it matches, the route requested and (with live state) the backend chosen.
Must not touch: sockets; it only reads snapshots.
"""

from __future__ import annotations

from policies.loader import load_policy
from policies.match import CompiledPolicy, StatementFacts, compile_policy
from policies.model import Policy
from protocol import frontend as fe
from router.classifier import Classifier, FunctionCatalog
from router.config import Settings
from router.deferred import begin_tag
from router.hints import read_comments
from router.lsn import format_lsn
from router.units import Planner

# How a bare BEGIN is routed in transaction mode when the database has replicas
# (router/deferred.py).
DEFERRED_BEGIN = (
    "answered by pgrouter and sent with the next statement: SET TRANSACTION READ ONLY "
    "makes the transaction read-only (a replica), anything else keeps it on the primary"
)


def explain_statement(
    classifier: Classifier, policy: CompiledPolicy, sql: str, facts: StatementFacts
) -> list[tuple[str, str]]:
    """(field, value) lines: classification, matching rules, requested route."""
    text, comment = read_comments(sql)
    result = classifier.classify(text)
    kind = result.kind.value
    # As the router plans it: a read-only transaction start is a read (a replica).
    query = [("Q", fe.Query(sql).encode())]
    unit = Planner(classifier, lambda name: None).plan(query)
    facts = StatementFacts(
        unit.kind,
        result.tables,
        result.functions,
        comment.tags,
        facts.database,
        facts.user,
        facts.application_name,
        facts.client_addr,
    )
    request = policy.decide(facts)
    rules = policy.matching_rules(facts)
    target: str = request.target
    if comment.hint == "primary" or (comment.hint == "replica" and unit.kind == "read"):
        target = comment.hint
    flags = [
        name
        for name in ("locking", "writable_cte", "select_into", "multi_statement", "read_only_begin")
        if getattr(result, name)
    ]
    lines = [
        ("kind", kind),
        ("reason", result.reason),
        *([("routed as", f"{unit.kind} ({unit.reason})")] if unit.kind != kind else []),
        *([("transaction", DEFERRED_BEGIN)] if begin_tag(query) else []),
        ("tables", ", ".join(sorted(result.tables)) or "-"),
        ("functions", ", ".join(sorted(result.functions)) or "-"),
        ("flags", ", ".join(flags) or "-"),
        ("matching rules", ", ".join(rules) or "(none: defaults)"),
        ("rule", request.rule or "(defaults)"),
        ("target", target),
        ("route reason", request.reason if target == request.target else f"hint:{target}"),
        ("max_lag", str(request.max_lag)),
        ("consistency", request.consistency),
        ("on_stale", request.on_stale),
    ]
    if comment.min_lsn is not None:
        lines.append(("min_lsn", format_lsn(comment.min_lsn)))
    return lines


def explain_offline(
    settings: Settings, sql: str, database: str | None, user: str, application_name: str
) -> str:
    routing = settings.routing
    classifier = Classifier(
        FunctionCatalog(
            write_functions=frozenset(f.lower() for f in routing.write_functions),
            read_functions=frozenset(f.lower() for f in routing.read_functions),
        )
    )
    policy = load_policy(routing.policy_file) if routing.policy_file else Policy()
    name = database or next(iter(settings.databases), "")
    facts = StatementFacts("read", database=name, user=user, application_name=application_name)
    lines = explain_statement(classifier, compile_policy(policy), sql, facts)
    width = max(len(field) for field, _ in lines)
    return "\n".join(f"{field:<{width}}  {value}" for field, value in lines)
