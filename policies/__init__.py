"""Routing policies: the policy model, loading and validating YAML, and rule matching.

Knows rules, never sockets; never imports ``router/`` (DESIGN section 2).
"""

import pgrouter_native.hook  # noqa: F401  (compiled modules first, when current)
from policies.loader import PolicyError, PolicyFile, load_policy, parse_policy
from policies.match import CompiledPolicy, RouteRequest, StatementFacts, compile_policy, decide
from policies.model import (
    STATEMENT_KINDS,
    Consistency,
    Defaults,
    LagBound,
    Match,
    OnStale,
    Policy,
    Route,
    Rule,
    parse_lag,
)

__all__ = [
    "STATEMENT_KINDS",
    "CompiledPolicy",
    "Consistency",
    "Defaults",
    "LagBound",
    "Match",
    "OnStale",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "Route",
    "RouteRequest",
    "Rule",
    "StatementFacts",
    "compile_policy",
    "decide",
    "load_policy",
    "parse_lag",
    "parse_policy",
]
