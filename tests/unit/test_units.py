"""router.units: the planner's summary of a unit (what routing and the write-LSN
capture read), and the classifier's remembered fingerprints it uses."""

from __future__ import annotations

import pytest

from protocol import frontend as fe
from router.classifier import Classifier, fingerprint
from router.units import Planner, text_effects

UPDATE = "UPDATE t SET v = $1 WHERE id = $2"
SELECT = "SELECT v FROM t WHERE id = $1"
Frame = tuple[str, bytes]


def frame(message: fe.Parse | fe.Bind | fe.Execute | fe.Sync) -> Frame:
    raw = message.encode()
    return chr(raw[0]), raw


def bind(statement: str = "") -> Frame:
    return frame(fe.Bind("", statement, (), (b"1",), ()))


def test_a_statement_parsed_and_bound_in_one_unit_is_summarized_once() -> None:
    """As psycopg sends an unnamed statement: Parse, Bind, Execute, Sync."""
    planner = Planner(Classifier(), lambda name: None)
    unit = [frame(fe.Parse("", SELECT)), bind(), frame(fe.Execute("")), frame(fe.Sync())]
    planned = planner.plan(unit)
    assert (planned.kind, planned.fingerprints) == ("read", (fingerprint(SELECT),))
    unit = [frame(fe.Parse("", UPDATE)), bind(), frame(fe.Execute("")), frame(fe.Sync())]
    assert planner.plan(unit).kind == "write"


def test_a_named_statement_from_an_earlier_unit_is_looked_up() -> None:
    texts = {"s1": SELECT, "s2": UPDATE}
    planner = Planner(Classifier(), texts.get)
    unit = [bind("s1"), frame(fe.Execute("")), bind("s2"), frame(fe.Execute("")), frame(fe.Sync())]
    planned = planner.plan(unit)
    assert planned.kind == "write"
    # Only reads' shapes are kept: what a replica's 25006 can teach (learned writes).
    assert planned.fingerprints == (fingerprint(SELECT),)


def test_a_statement_redefined_in_the_unit_is_the_one_bound() -> None:
    planner = Planner(Classifier(), {"s": SELECT}.get)
    unit = [frame(fe.Parse("s", UPDATE)), bind("s"), frame(fe.Execute("")), frame(fe.Sync())]
    assert planner.plan(unit).kind == "write"


def test_binding_a_statement_never_prepared_is_unknown() -> None:
    planner = Planner(Classifier(), lambda name: None)
    assert planner.plan([bind("nope"), frame(fe.Sync())]).kind == "unknown"
    assert planner.plan([bind(), frame(fe.Sync())]).kind == "unknown"  # no unnamed one here


def test_the_classifier_remembers_fingerprints_by_text_within_its_size() -> None:
    classifier = Classifier(cache_size=2)
    first = classifier.fingerprint(UPDATE)
    assert first == fingerprint(UPDATE) and classifier.fingerprint(UPDATE) is first
    for sql in (SELECT, "SELECT 1", "SELECT 2"):
        assert classifier.fingerprint(sql) == fingerprint(sql)
    assert len(classifier._fingerprints) <= 2
    uncached = Classifier(cache_size=0)
    assert uncached.fingerprint(UPDATE) == first and not uncached._fingerprints


@pytest.mark.parametrize(
    ("sql", "effects"),
    [
        ("UPDATE t SET v = 1", ("", False)),
        ("begin", ("T", False)),
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", ("T", False)),
        ("COMMIT", ("I", False)),
        ("end", ("I", False)),
        ("ROLLBACK", ("I", False)),
        ("ROLLBACK TO SAVEPOINT a", ("", False)),
        ("ROLLBACK TO a", ("", False)),
        ("COMMIT AND CHAIN", ("T", False)),
        ("PREPARE TRANSACTION 'x'", ("I", False)),
        ("BEGIN; UPDATE t SET v = 1; COMMIT", ("I", False)),
        ("COMMIT; BEGIN", ("T", False)),
        ("COPY t FROM STDIN", ("", True)),
        ("BEGIN; COPY t TO STDOUT", ("T", True)),
        ("/* c */ copy t from stdin", ("", True)),
        ("SELECT 'BEGIN'", ("", False)),
        ("", ("", False)),
    ],
)
def test_text_effects_predicts_the_status_left_and_copy(
    sql: str, effects: tuple[str, bool]
) -> None:
    assert text_effects(sql) == effects
    assert text_effects(sql) == effects  # remembered: the same answer
