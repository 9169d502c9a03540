"""``pgrouter check``'s warnings about ``capture_write_lsn: false`` (router/cli.py)."""

from __future__ import annotations

from typing import Any

import pytest

from policies.loader import parse_policy
from policies.model import Policy
from router.cli import capture_warnings
from router.config import Settings


def settings(**database: Any) -> Settings:
    app = {
        "primary": {"host": "127.0.0.1"},
        "replicas": [{"host": "127.0.0.1", "port": 5433}],
        **database,
    }
    return Settings(databases={"app": app, "other": {"primary": {"host": "127.0.0.1"}}})


def test_no_warning_while_capture_is_on() -> None:
    assert capture_warnings(settings(), Policy()) == []


def test_capture_off_with_the_default_read_your_writes_route_warns() -> None:
    (warning,) = capture_warnings(settings(capture_write_lsn=False), Policy())
    assert "databases.app.capture_write_lsn is off" in warning
    assert "the defaults" in warning and "sticky_after_write (off)" in warning


def test_capture_off_without_replicas_or_routing_is_not_worth_a_warning() -> None:
    no_replicas = settings(capture_write_lsn=False, replicas=[])
    assert capture_warnings(no_replicas, Policy()) == []
    no_routing = settings(capture_write_lsn=False).model_copy(
        update={"routing": Settings().routing.model_copy(update={"enabled": False})}
    )
    assert capture_warnings(no_routing, Policy()) == []


POLICY = """\
version: 1
defaults: {consistency: eventual, sticky_after_write: 2s}
rules:
  - {name: mine, match: {tables: orders}, consistency: read_your_writes}
  - {name: elsewhere, match: {database: billing*}, consistency: read_your_writes}
  - {name: on-primary, match: {tag: p}, route: primary, consistency: read_your_writes}
  - {name: loose, match: {tag: l}}
"""


@pytest.mark.parametrize("capture", [True, False])
def test_only_read_your_writes_rules_that_reach_the_database_and_a_replica_are_named(
    capture: bool,
) -> None:
    warnings = capture_warnings(settings(capture_write_lsn=capture), parse_policy(POLICY))
    if capture:
        assert warnings == []
        return
    (warning,) = warnings
    assert "(rule 'mine')" in warning
    assert "sticky_after_write (2s)" in warning
