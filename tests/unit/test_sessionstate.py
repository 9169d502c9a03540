"""router.sessionstate: what each query string leaves behind in the session."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from router.sessionstate import NO_EFFECT, TEXT_TRACKED, TRACKED, Effect, session_effect

SESSION_FUNCTION = "session-level function"
TEMP = "temporary object"


@dataclass(frozen=True)
class Case:
    sql: str
    pin: str | None = None  # a substring of the expected pin reason
    sets: tuple[tuple[str, str | None], ...] = ()
    reset_all: bool = False
    discards: bool = False
    deallocate: tuple[str, ...] = ()


CASES: list[Case] = [
    # Plain statements: nothing lasting.
    Case("SELECT 1"),
    Case("select * from t where a = 1"),
    Case("INSERT INTO t VALUES (1)"),
    Case("UPDATE t SET a = 1"),
    Case("SHOW search_path"),
    Case("EXECUTE q"),
    Case("NOTIFY chan, 'x'"),
    Case(""),
    # LISTEN pins; UNLISTEN does not.
    Case("LISTEN chan", pin="LISTEN"),
    Case('listen "Chan"', pin="LISTEN"),
    Case("UNLISTEN chan"),
    Case("UNLISTEN *"),
    # SET of an untracked parameter pins; SET LOCAL and transaction settings do nothing.
    Case("SET work_mem = '64MB'", pin="SET work_mem"),
    Case("SET SESSION work_mem TO '64MB'", pin="SET work_mem"),
    Case("set Work_Mem to 1", pin="SET work_mem"),
    Case("SET LOCAL work_mem = '64MB'"),
    Case("SET LOCAL search_path = a"),
    Case("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
    Case("SET CONSTRAINTS ALL DEFERRED"),
    Case("SET pgrouter.route = 'primary'"),
    # Tracked parameters: the SET text, or None for back-to-default.
    Case("SET search_path = a, public", sets=(("search_path", "SET search_path = a, public"),)),
    Case("  set Search_Path to a  ", sets=(("search_path", "set Search_Path to a"),)),
    Case("SET SESSION search_path = a", sets=(("search_path", "SET SESSION search_path = a"),)),
    Case("SET search_path TO DEFAULT", sets=(("search_path", None),)),
    Case("SET statement_timeout TO DEFAULT", sets=(("statement_timeout", None),)),
    Case("SET statement_timeout = default", sets=(("statement_timeout", None),)),
    Case(
        "SET statement_timeout = 5000",
        sets=(("statement_timeout", "SET statement_timeout = 5000"),),
    ),
    Case("SET lock_timeout = '1s'", sets=(("lock_timeout", "SET lock_timeout = '1s'"),)),
    Case("SET bytea_output = hex", sets=(("bytea_output", "SET bytea_output = hex"),)),
    Case("SET TIME ZONE 'UTC'", sets=(("timezone", "SET TIME ZONE 'UTC'"),)),
    Case("SET TimeZone = 'UTC'", sets=(("timezone", "SET TimeZone = 'UTC'"),)),
    Case("SET application_name = 'x'", sets=(("application_name", "SET application_name = 'x'"),)),
    Case("SET NAMES 'UTF8'", sets=(("client_encoding", "SET NAMES 'UTF8'"),)),
    Case("SET SCHEMA 'app'", sets=(("search_path", "SET SCHEMA 'app'"),)),
    Case("RESET search_path", sets=(("search_path", None),)),
    Case("reset Statement_Timeout", sets=(("statement_timeout", None),)),
    Case("RESET work_mem"),
    Case("RESET ALL", reset_all=True),
    # Identity changes pin.
    Case("SET ROLE admin", pin="SET ROLE"),
    Case("SET SESSION AUTHORIZATION bob", pin="SET SESSION AUTHORIZATION"),
    Case(
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        pin="SET SESSION CHARACTERISTICS",
    ),
    # Session-level functions, wherever they are called; never in literals or comments.
    Case("SELECT pg_advisory_lock(1)", pin=SESSION_FUNCTION),
    Case("SELECT pg_try_advisory_lock(1)", pin=SESSION_FUNCTION),
    Case("select PG_ADVISORY_LOCK_SHARED (1, 2)", pin=SESSION_FUNCTION),
    Case("SELECT pg_try_advisory_lock_shared(1)", pin=SESSION_FUNCTION),
    Case("(SELECT pg_advisory_lock(1))", pin=SESSION_FUNCTION),
    Case("WITH l AS (SELECT pg_advisory_lock(1)) SELECT * FROM l", pin=SESSION_FUNCTION),
    Case("CALL p(pg_advisory_lock(1))", pin=SESSION_FUNCTION),
    Case("SELECT pg_advisory_xact_lock(1)"),
    Case("SELECT pg_try_advisory_xact_lock(1)"),
    Case("SELECT pg_advisory_unlock(1)"),
    Case("SELECT 'pg_advisory_lock(1)'"),
    Case("SELECT E'\\'pg_advisory_lock(1)'"),
    Case("SELECT 1 -- pg_advisory_lock(1)"),
    Case("SELECT /* pg_advisory_lock(1) */ 1"),
    Case("SELECT $$pg_advisory_lock(1)$$"),
    Case("SELECT set_config('search_path', 'a', false)", pin=SESSION_FUNCTION),
    Case("SELECT set_config('search_path', 'a', true)"),
    Case("SELECT set_config('a', 'b', TRUE), set_config('c', 'd', true)"),
    Case("SELECT set_config('a', 'b', true), set_config('c', 'd', false)", pin=SESSION_FUNCTION),
    Case("SELECT set_config('a', 'b', true), pg_advisory_lock(1)", pin=SESSION_FUNCTION),
    Case("SELECT dblink_connect('c', 'dbname=x')", pin=SESSION_FUNCTION),
    Case("SELECT lo_open(1, 262144)", pin=SESSION_FUNCTION),
    # SQL-level prepared statements.
    Case("PREPARE q AS SELECT 1", pin="PREPARE"),
    Case("prepare q (int) as select $1", pin="PREPARE"),
    Case("DEALLOCATE q", deallocate=("q",)),
    Case("DEALLOCATE Q1", deallocate=("q1",)),
    Case("DEALLOCATE PREPARE q", deallocate=("q",)),
    Case('DEALLOCATE PREPARE "Quoted"', deallocate=("Quoted",)),
    Case('DEALLOCATE "a""b"', deallocate=('a"b',)),
    Case("DEALLOCATE ALL", discards=True),
    Case("deallocate prepare all", discards=True),
    # Temporary objects.
    Case("CREATE TEMP TABLE t (a int)", pin=TEMP),
    Case("CREATE TEMPORARY VIEW v AS SELECT 1", pin=TEMP),
    Case("create temp sequence s", pin=TEMP),
    Case("CREATE GLOBAL TEMP TABLE t (a int)", pin=TEMP),
    Case("CREATE LOCAL TEMPORARY TABLE t (a int)", pin=TEMP),
    Case("CREATE TABLE t (a int)"),
    Case("CREATE TABLE temp (a int)"),
    Case("CREATE UNLOGGED TABLE t (a int)"),
    Case("INSERT INTO temp VALUES (1)"),
    Case("SELECT 'x INTO TEMP t'"),
    # Cursors.
    Case("DECLARE c CURSOR WITH HOLD FOR SELECT 1", pin="WITH HOLD"),
    Case("declare c no scroll cursor with\n  /* x */ hold for select 1", pin="WITH HOLD"),
    Case("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1"),
    Case("DECLARE c CURSOR FOR SELECT 1"),
    Case("DECLARE c CURSOR FOR SELECT 'WITH HOLD'"),
    # DISCARD and LOAD.
    Case("DISCARD ALL", reset_all=True, discards=True),
    Case("DISCARD PLANS"),
    Case("DISCARD TEMP"),
    Case("LOAD 'auto_explain'", pin="LOAD"),
    # Several statements: effects combine, in order; the first pin wins.
    Case(
        "SET search_path = a; LISTEN x",
        pin="LISTEN",
        sets=(("search_path", "SET search_path = a"),),
    ),
    Case(
        "SET search_path = a; SET statement_timeout = 0",
        sets=(
            ("search_path", "SET search_path = a"),
            ("statement_timeout", "SET statement_timeout = 0"),
        ),
    ),
    Case("LISTEN a; SET ROLE b", pin="LISTEN"),
    Case("BEGIN; SET LOCAL work_mem = '1GB'; COMMIT"),
    Case("SELECT 1; DISCARD ALL", reset_all=True, discards=True),
    Case("SELECT 1; SELECT pg_advisory_lock(1)", pin=SESSION_FUNCTION),
    Case("DEALLOCATE a; DEALLOCATE b", deallocate=("a", "b")),
    # Keywords hidden in literals, dollar quotes and comments.
    Case("SELECT $x$; LISTEN y; $x$"),
    Case("SELECT 'a;LISTEN b'"),
    Case("SELECT 1; SELECT 'a;LISTEN b'"),
    Case("/* LISTEN x */ SELECT 1"),
    Case("-- LISTEN x\nSELECT 1"),
    Case("SELECT $$; SET work_mem = 1; $$"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.sql[:60] or "(empty)")
def test_session_effect(case: Case) -> None:
    effect = session_effect(case.sql)
    if case.pin is None:
        assert effect.pin is None
    else:
        assert effect.pin is not None and case.pin in effect.pin
    assert effect.sets == case.sets
    assert effect.reset_all is case.reset_all
    assert effect.discards_statements is case.discards
    assert effect.deallocate == case.deallocate
    expected_truthy = bool(
        case.pin or case.sets or case.reset_all or case.discards or case.deallocate
    )
    assert bool(effect) is expected_truthy


def test_no_effect_is_the_shared_empty_value() -> None:
    assert session_effect("SELECT 1") is NO_EFFECT
    assert session_effect("UNLISTEN x; SELECT 2") is NO_EFFECT
    assert not NO_EFFECT
    assert Effect() == NO_EFFECT


def test_effect_is_truthy_for_each_field() -> None:
    assert Effect(pin="x")
    assert Effect(sets=(("search_path", None),))
    assert Effect(reset_all=True)
    assert Effect(discards_statements=True)
    assert Effect(deallocate=("a",))


def test_tracked_parameter_sets() -> None:
    assert "search_path" in TEXT_TRACKED
    assert "timezone" in TRACKED and "timezone" not in TEXT_TRACKED
    assert TEXT_TRACKED <= TRACKED


# ---------------------------------------------------------------- regressions


def test_create_or_replace_temp_view_pins() -> None:
    # CREATE [OR REPLACE] [TEMP|TEMPORARY] VIEW: the temporary view outlives the
    # transaction and exists only on this server connection.
    effect = session_effect("CREATE OR REPLACE TEMP VIEW v AS SELECT 1")
    assert effect.pin == TEMP


def test_select_into_temp_table_pins() -> None:
    # SELECT ... INTO TEMP creates a temporary table just as CREATE TEMP TABLE AS does.
    assert session_effect("SELECT 1 AS a INTO TEMP t").pin == TEMP
    assert session_effect("SELECT * INTO TEMPORARY TABLE t FROM src").pin == TEMP


def test_set_session_time_zone_is_tracked_not_pinned() -> None:
    # SET SESSION TIME ZONE is SET TIME ZONE; the server reports TimeZone, no pin needed.
    effect = session_effect("SET SESSION TIME ZONE 'UTC'")
    assert effect.pin is None
    assert [name for name, _ in effect.sets] == ["timezone"]
