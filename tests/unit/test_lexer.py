"""router.lexer: statements and leading keywords, never fooled by literals or comments."""

from __future__ import annotations

import pytest

from router.lexer import (
    code_only,
    first_keyword,
    leading_words,
    skip_token,
    split_statements,
    strip_leading,
)

# (query string, its statements)
SPLITS: list[tuple[str, list[str]]] = [
    ("SELECT 1", ["SELECT 1"]),
    ("SELECT 1; SELECT 2", ["SELECT 1", " SELECT 2"]),
    ("SELECT 1;", ["SELECT 1"]),
    (";;SELECT 1;; ;\n", ["SELECT 1"]),
    ("", []),
    ("  ;  ", []),
    ("-- only a comment", []),
    ("/* only */ ; -- comments\n;", []),
    ("SELECT 'a;b'; SELECT 2", ["SELECT 'a;b'", " SELECT 2"]),
    ("SELECT 'it''s;'; SELECT 2", ["SELECT 'it''s;'", " SELECT 2"]),
    # A standard string: the backslash is an ordinary character, the quote ends it.
    ("SELECT 'a\\'; SELECT 2", ["SELECT 'a\\'", " SELECT 2"]),
    # An escape string: \' is a quote inside it.
    ("SELECT E'a\\'; b'; SELECT 2", ["SELECT E'a\\'; b'", " SELECT 2"]),
    ("SELECT e'a\\'; b'; SELECT 2", ["SELECT e'a\\'; b'", " SELECT 2"]),
    ("SELECT (E'\\\\'); SELECT 2", ["SELECT (E'\\\\')", " SELECT 2"]),
    # 'date' ends in e but is a typed literal, not an E'' string.
    ("SELECT date'\\'; SELECT 2", ["SELECT date'\\'", " SELECT 2"]),
    ('SELECT 1 AS "a;b"; SELECT 2', ['SELECT 1 AS "a;b"', " SELECT 2"]),
    ('SELECT 1 AS "a"";b"; SELECT 2', ['SELECT 1 AS "a"";b"', " SELECT 2"]),
    ('SELECT 1 AS "a\\"; SELECT 2', ['SELECT 1 AS "a\\"', " SELECT 2"]),
    ("SELECT $$a;b$$; SELECT 2", ["SELECT $$a;b$$", " SELECT 2"]),
    ("SELECT $f$ a $$;$$ b $f$; SELECT 2", ["SELECT $f$ a $$;$$ b $f$", " SELECT 2"]),
    ("SELECT $_x1$;$_x2$;$_x1$; SELECT 2", ["SELECT $_x1$;$_x2$;$_x1$", " SELECT 2"]),
    # $1 is a parameter, a$b$ an identifier: neither opens a dollar quote.
    ("SELECT $1; SELECT $2", ["SELECT $1", " SELECT $2"]),
    ("SELECT a$b$; SELECT 2", ["SELECT a$b$", " SELECT 2"]),
    ("SELECT /* a; */ 1; SELECT 2", ["SELECT /* a; */ 1", " SELECT 2"]),
    ("SELECT /* a /* b; */ c; */ 1; SELECT 2", ["SELECT /* a /* b; */ c; */ 1", " SELECT 2"]),
    ("SELECT 1 -- x; y\n; SELECT 2", ["SELECT 1 -- x; y\n", " SELECT 2"]),
    ("SELECT 1 -- x; y", ["SELECT 1 -- x; y"]),
    (
        "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); "
        "INSERT INTO b VALUES (2)); SELECT 2",
        [
            "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); "
            "INSERT INTO b VALUES (2))",
            " SELECT 2",
        ],
    ),
    ("SELECT ')'; SELECT 2", ["SELECT ')'", " SELECT 2"]),
    ("SELECT 1); SELECT 2", ["SELECT 1)", " SELECT 2"]),  # a stray ')' does not go negative
    (
        "DO $$ BEGIN PERFORM 1; END $$; LISTEN x",
        ["DO $$ BEGIN PERFORM 1; END $$", " LISTEN x"],
    ),
]


@pytest.mark.parametrize(("sql", "statements"), SPLITS)
def test_split_statements(sql: str, statements: list[str]) -> None:
    assert split_statements(sql) == statements


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'unterminated; SELECT 2",
        "SELECT E'unterminated\\'; SELECT 2",
        'SELECT "unterminated; SELECT 2',
        "SELECT $$unterminated; SELECT 2",
        "SELECT /* unterminated /* */ ; SELECT 2",
    ],
)
def test_unterminated_token_runs_to_end(sql: str) -> None:
    assert split_statements(sql) == [sql]


# (text, index, index after the token starting there)
TOKENS: list[tuple[str, int, int]] = [
    ("-- x\nSELECT", 0, 5),
    ("-- x", 0, 4),
    ("/* a /* b */ c */ d", 0, 17),
    ("'a''b' c", 0, 6),
    ("E'a\\'b' c", 1, 7),
    ("'a\\' c", 0, 4),
    ('"a""b" c', 0, 6),
    ("$$a$$ c", 0, 5),
    ("$t$a$$b$t$ c", 0, 10),
    ("$1 c", 0, 0),  # not a token: unchanged
    ("x c", 0, 0),
    ("- 1", 0, 0),
    ("/ 2", 0, 0),
]


@pytest.mark.parametrize(("sql", "start", "end"), TOKENS)
def test_skip_token(sql: str, start: int, end: int) -> None:
    assert skip_token(sql, start) == end


def test_strip_leading_comments_and_parens() -> None:
    sql = " /* a */ -- b\n ( (SELECT 1)"
    assert strip_leading(sql) == "( (SELECT 1)"
    assert strip_leading(sql, parens=True) == "SELECT 1)"
    assert strip_leading("-- only") == ""


LEADING: list[tuple[str, int, list[str]]] = [
    ("select a, b", 3, ["SELECT", "A"]),
    ("/* c */ -- d\n  listen chan", 3, ["LISTEN", "CHAN"]),
    ("/* a /* nested */ */ SET x", 2, ["SET", "X"]),
    ("((SELECT 1))", 3, ["SELECT"]),
    ("SET SESSION AUTHORIZATION bob", 3, ["SET", "SESSION", "AUTHORIZATION"]),
    ("SET SESSION AUTHORIZATION bob", 2, ["SET", "SESSION"]),
    ("SET search_path = a", 4, ["SET", "SEARCH_PATH"]),
    ("SET /* x */ LOCAL -- y\n work_mem", 4, ["SET", "LOCAL", "WORK_MEM"]),
    ("SET TIME ZONE 'UTC'", 4, ["SET", "TIME", "ZONE"]),
    ('DEALLOCATE "Quoted"', 4, ["DEALLOCATE"]),
    ("SELECT a$b", 2, ["SELECT", "A$B"]),
    ("SELECT (x)", 3, ["SELECT"]),  # parens are skipped only before the first word
    ("'LISTEN' x", 3, []),
    ("$$LISTEN$$", 3, []),
    ("/* unterminated LISTEN", 3, []),
    ("", 3, []),
]


@pytest.mark.parametrize(("sql", "count", "words"), LEADING)
def test_leading_words(sql: str, count: int, words: list[str]) -> None:
    assert leading_words(sql, count) == words


@pytest.mark.parametrize(
    ("sql", "keyword"),
    [
        ("select 1", "SELECT"),
        ("  /* x */ (  ( values (1)))", "VALUES"),
        ("-- LISTEN\nSELECT 1", "SELECT"),
        ("/* LISTEN */ begin", "BEGIN"),
        ('"LISTEN"', ""),
        ("", ""),
        ("   ", ""),
    ],
)
def test_first_keyword(sql: str, keyword: str) -> None:
    assert first_keyword(sql) == keyword


def test_code_only_blanks_each_token_to_one_space() -> None:
    assert code_only("a 'b' c") == "a   c"
    assert code_only("a /* b */ c") == "a   c"
    assert code_only("a -- b\nc") == "a  c"
    assert code_only('a "b" c') == "a   c"
    assert code_only("a $q$b$q$ c") == "a   c"
    assert code_only("plain text") == "plain text"


def test_code_only_hides_function_names_in_literals_and_comments() -> None:
    sql = (
        "SELECT 'pg_advisory_lock(1)', E'\\'pg_advisory_lock(', $$pg_advisory_lock($$, "
        '"pg_advisory_lock"(1) /* pg_advisory_lock( */ -- pg_advisory_lock(\n, f(x)'
    )
    code = code_only(sql)
    assert "pg_advisory_lock" not in code
    assert code.startswith("SELECT ")
    assert code.endswith(", f(x)")


def test_code_only_keeps_code_between_tokens() -> None:
    assert code_only("SELECT pg_advisory_lock(1) -- done") == "SELECT pg_advisory_lock(1)  "
