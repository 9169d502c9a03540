"""router.params: the parameters a client wants, and one query to bring a server in line."""

from __future__ import annotations

import pytest

from protocol.errors import ProtocolError
from protocol.startup import StartupMessage
from router.lexer import split_statements
from router.params import literal, split_wanted, startup_parameters, sync_query
from router.sessionstate import session_effect

# ---------------------------------------------------------------- startup_parameters


def test_startup_parameters_keys_and_options() -> None:
    startup = StartupMessage(
        {
            "user": "bob",
            "database": "app",
            "replication": "database",
            "application_name": "psql",
            "DateStyle": "ISO",
            "options": "-c search_path=a  -cstatement_timeout=5s --lock-timeout=1s",
            "_pq_.compression": "on",
            "pgrouter.route": "primary",
        }
    )
    assert startup_parameters(startup) == {
        "application_name": "psql",
        "DateStyle": "ISO",
        "search_path": "a",
        "statement_timeout": "5s",
        "lock_timeout": "1s",
    }


def test_startup_options_reserved_names_dropped() -> None:
    startup = StartupMessage(
        {"user": "bob", "options": "-c pgrouter.route=replica -c _pq_.x=1 -c work_mem=64MB"}
    )
    assert startup_parameters(startup) == {"work_mem": "64MB"}


def test_startup_option_overrides_startup_key() -> None:
    startup = StartupMessage(
        {"user": "bob", "application_name": "key", "options": "-c application_name=opt"}
    )
    assert startup_parameters(startup) == {"application_name": "opt"}


def test_startup_option_escaped_space() -> None:
    startup = StartupMessage({"user": "bob", "options": "-c search_path=a,\\ b"})
    assert startup_parameters(startup) == {"search_path": "a, b"}


def test_only_user_and_database_give_nothing() -> None:
    assert startup_parameters(StartupMessage({"user": "bob", "database": "app"})) == {}


def test_bad_startup_option_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        startup_parameters(StartupMessage({"user": "bob", "options": "-x"}))


# ---------------------------------------------------------------- split_wanted


def test_split_wanted() -> None:
    reported, applied = split_wanted(
        {
            "application_name": "psql",
            "DateStyle": "ISO",
            "client_encoding": "UTF8",
            "search_path": "a",
            "Statement_Timeout": "5s",
        }
    )
    assert reported == {"application_name": "psql", "DateStyle": "ISO", "client_encoding": "UTF8"}
    assert applied == {"search_path": "=a", "statement_timeout": "=5s"}


def test_split_wanted_empty() -> None:
    assert split_wanted({}) == ({}, {})


# ---------------------------------------------------------------- literal


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("", "E''"),
        ("plain", "E'plain'"),
        ("it's", "E'it''s'"),
        ("a\\b", "E'a\\\\b'"),
        ("\\'", "E'\\\\'''"),
        ("$$;--", "E'$$;--'"),
    ],
)
def test_literal(value: str, quoted: str) -> None:
    assert literal(value) == quoted


def test_literal_is_one_token() -> None:
    for value in ["it's", "a\\", "\\'; DROP TABLE t; --"]:
        sql = f"SELECT {literal(value)}; SELECT 2"
        assert split_statements(sql) == [f"SELECT {literal(value)}", " SELECT 2"]


# ---------------------------------------------------------------- sync_query

SERVER = {"client_encoding": "UTF8", "DateStyle": "ISO, MDY", "application_name": ""}


def statements(sql: str | None) -> list[str]:
    """The statements of a sync query, white space normalised (the separator is free)."""
    assert sql is not None
    return [" ".join(s.split()) for s in split_statements(sql)]


def test_in_line_gives_none() -> None:
    assert sync_query({}, {}, SERVER, {}) is None
    assert sync_query({"DateStyle": "ISO, MDY"}, {}, SERVER, {}) is None
    assert sync_query({}, {"search_path": "=a"}, SERVER, {"search_path": "=a"}) is None


@pytest.mark.parametrize("encoding", ["UTF8", "utf8", "utf-8", "UTF-8", "Utf_8"])
def test_client_encoding_spellings_are_equal(encoding: str) -> None:
    assert sync_query({"client_encoding": encoding}, {}, SERVER, {}) is None


def test_other_values_compare_exactly() -> None:
    assert sync_query({"DateStyle": "iso, mdy"}, {}, SERVER, {}) == (
        "SELECT pg_catalog.set_config(E'DateStyle', E'iso, mdy', false)"
    )


def test_reported_values_that_differ_are_set() -> None:
    sql = sync_query(
        {"application_name": "psql", "client_encoding": "LATIN1", "DateStyle": "ISO, MDY"},
        {},
        SERVER,
        {},
    )
    assert sql == (
        "SELECT pg_catalog.set_config(E'application_name', E'psql', false), "
        "pg_catalog.set_config(E'client_encoding', E'LATIN1', false)"
    )


def test_reported_parameter_the_server_never_reported_is_set() -> None:
    assert sync_query({"TimeZone": "UTC"}, {}, SERVER, {}) == (
        "SELECT pg_catalog.set_config(E'TimeZone', E'UTC', false)"
    )


def test_reported_name_compared_case_insensitively() -> None:
    assert sync_query({"datestyle": "ISO, MDY"}, {}, SERVER, {}) is None


def test_value_quoted_with_quotes_and_backslashes() -> None:
    sql = sync_query({"application_name": "it's a \\ b"}, {}, SERVER, {})
    assert sql == "SELECT pg_catalog.set_config(E'application_name', E'it''s a \\\\ b', false)"


def test_startup_values_applied_with_set_config() -> None:
    sql = sync_query({}, {"statement_timeout": "=5s"}, SERVER, {})
    assert sql == "SELECT pg_catalog.set_config(E'statement_timeout', E'5s', false)"


def test_tracked_set_text_sent_raw() -> None:
    sql = sync_query({}, {"search_path": "SET search_path = a, public"}, SERVER, {})
    assert sql == "SET search_path = a, public"


def test_previous_clients_names_reset() -> None:
    sql = sync_query({}, {}, SERVER, {"search_path": "SET search_path = a", "work_mem": "=1MB"})
    assert statements(sql) == ['RESET "search_path"', 'RESET "work_mem"']


def test_applied_value_that_differs_is_reapplied() -> None:
    sql = sync_query({}, {"work_mem": "=2MB"}, SERVER, {"work_mem": "=1MB"})
    assert sql == "SELECT pg_catalog.set_config(E'work_mem', E'2MB', false)"


def test_everything_in_one_string_in_order() -> None:
    sql = sync_query(
        {"application_name": "psql"},
        {
            "statement_timeout": "=5s",
            "search_path": "SET search_path = a",
            "lock_timeout": "=1s",
        },
        SERVER,
        {"lock_timeout": "=1s", "work_mem": "=1MB"},
    )
    assert statements(sql) == [
        "SELECT pg_catalog.set_config(E'application_name', E'psql', false), "
        "pg_catalog.set_config(E'statement_timeout', E'5s', false)",
        "SET search_path = a",
        'RESET "work_mem"',
    ]


# ---------------------------------------------------------------- regressions


def test_tracked_set_with_trailing_line_comment_does_not_hide_the_next_statement() -> None:
    # A client's `SET search_path = a -- why` is kept as written; joined with "; " the
    # comment swallowed every statement after it, so they were never run on the server
    # although server.applied then claimed they were.
    ((name, text),) = session_effect("SET search_path = a -- why").sets
    assert text is not None
    applied = {name: text, "statement_timeout": "SET statement_timeout = 5"}
    sql = sync_query({}, applied, SERVER, {"lock_timeout": "=1s"})
    assert statements(sql)[1:] == ["SET statement_timeout = 5", 'RESET "lock_timeout"']
