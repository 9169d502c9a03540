"""The routing decision (router/routing.py), driven directly: eligibility, the weighted
power-of-two choice, and what happens when no replica qualifies."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from policies.match import RouteRequest
from policies.model import LagBound
from router.backends import Backend
from router.monitor import BackendState, ClusterState
from router.routing import Decision, choose, pick

NOW = 1000.0


def replica(name: str, *, weight: float = 1.0, replay: int = 100, lag: int = 0,
            up: bool = True, checked: float = NOW) -> BackendState:  # fmt: skip
    return BackendState(
        Backend(name, "replica", "10.0.0.2", 5432, "app", weight),
        up=up,
        in_recovery=True,
        replay_lsn=replay,
        lag_bytes=lag,
        lag_seconds=0.0,
        checked_at=checked,
    )


def cluster(*replicas: BackendState) -> ClusterState:
    primary = BackendState(
        Backend("primary", "primary", "10.0.0.1", 5432, "app"),
        up=True, in_recovery=False, insert_lsn=100, checked_at=NOW,
    )  # fmt: skip
    return ClusterState("app", (primary, *replicas), "primary", 100, NOW)


def read(*, on_stale: str = "primary", max_lag: LagBound | None = None) -> RouteRequest:
    return RouteRequest(
        "replica", max_lag or LagBound(), "read_your_writes", on_stale, 0.5, None, "default"
    )  # type: ignore[arg-type]


def decide(state: ClusterState, request: RouteRequest | None = None, *,
           required: int | None = None, load: dict[str, int] | None = None,
           seed: int = 1) -> Decision:  # fmt: skip
    return choose(
        request or read(), state, required_lsn=required, now=NOW, stale_after=1.0,
        load=load or {}, rng=random.Random(seed),
    )  # fmt: skip


# --------------------------------------------------------------------------- pick


def test_idle_replicas_share_reads_in_proportion_to_their_weights() -> None:
    rng = random.Random(7)
    chosen = Counter(pick([("a", 1.0), ("b", 3.0)], {}, rng) for _ in range(8000))
    assert chosen["a"] + chosen["b"] == 8000
    assert 0.72 < chosen["b"] / 8000 < 0.78  # 3 / (1 + 3), not "always the heavier"


def test_equal_weights_split_evenly_when_idle() -> None:
    rng = random.Random(3)
    chosen = Counter(pick([("a", 1.0), ("b", 1.0), ("c", 1.0)], {}, rng) for _ in range(9000))
    for name in "abc":
        assert 2700 < chosen[name] < 3300


def test_the_less_loaded_of_the_two_draws_wins() -> None:
    rng = random.Random(5)
    load = {"busy": 10, "idle": 0}
    chosen = Counter(pick([("busy", 1.0), ("idle", 1.0)], load, rng) for _ in range(1000))
    assert chosen == Counter({"idle": 1000})  # with two candidates both are always drawn


def test_load_is_weighed_per_unit_of_weight() -> None:
    # 4 in flight on a weight-4 replica is lighter than 2 on a weight-1 replica.
    rng = random.Random(11)
    load = {"big": 4, "small": 2}
    chosen = Counter(pick([("big", 4.0), ("small", 1.0)], load, rng) for _ in range(500))
    assert chosen == Counter({"big": 500})


def test_a_single_candidate_needs_no_draw() -> None:
    class NoRandom(random.Random):
        def random(self) -> float:
            raise AssertionError("no draw for one candidate")

    assert pick([("only", 2.0)], {"only": 50}, NoRandom()) == "only"


# --------------------------------------------------------------------------- choose


def test_a_read_goes_to_an_eligible_replica() -> None:
    decision = decide(cluster(replica("replica1")))
    assert decision == Decision("replica1", "default", replica=True)


@pytest.mark.parametrize(
    ("state", "why"),
    [
        (replica("replica1", up=False), "no-replica:down"),
        (replica("replica1", checked=NOW - 5), "no-replica:no-recent-probe"),
    ],
)
def test_an_unusable_replica_sends_the_read_to_the_writer(state: BackendState, why: str) -> None:
    decision = decide(cluster(state))
    assert (decision.backend, decision.reason, decision.fallback) == ("primary", why, True)


def test_a_replica_behind_the_required_lsn_is_skipped_for_a_fresher_one() -> None:
    state = cluster(replica("replica1", replay=90), replica("replica2", replay=120))
    for seed in range(20):
        assert decide(state, required=100, seed=seed).backend == "replica2"


def test_no_fresh_replica_falls_back_and_says_what_was_needed() -> None:
    decision = decide(cluster(replica("replica1", replay=90)), required=100)
    assert decision.backend == "primary" and decision.fallback
    assert decision.reason == "replica-stale:min_lsn"
    assert (decision.required_lsn, decision.best_lsn) == (100, 90)


def test_on_stale_wait_names_the_replicas_to_wait_for_freshest_first() -> None:
    state = cluster(replica("replica1", replay=90), replica("replica2", replay=95))
    decision = decide(state, read(on_stale="wait"), required=100)
    assert decision.wait and decision.candidates == ("replica2", "replica1")
    assert decision.wait_timeout == 0.5


def test_on_stale_error_refuses_with_the_lsns() -> None:
    decision = decide(cluster(replica("replica1", replay=0x90)), read(on_stale="error"),
                      required=0x100)  # fmt: skip
    assert decision.backend is None
    assert decision.error == "no replica is fresh enough: needs 0/100, best 0/90"


def test_a_replica_over_the_lag_bound_is_not_eligible() -> None:
    state = cluster(replica("replica1", lag=5000), replica("replica2", lag=10))
    request = read(max_lag=LagBound(bytes=1000))
    for seed in range(20):
        assert decide(state, request, seed=seed).backend == "replica2"
    only_laggard = decide(cluster(replica("replica1", lag=5000)), request)
    assert (only_laggard.backend, only_laggard.reason) == ("primary", "replica-stale:lag")
