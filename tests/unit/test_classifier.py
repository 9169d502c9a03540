"""The statement classifier: a table of statements with their expected kind and reason,
then flags, fingerprints, the cache, the catalog, and the fallback counter."""

from __future__ import annotations

import random

import pytest

from router.classifier import (
    Classification,
    Classifier,
    FunctionCatalog,
    Kind,
    _token_end,
    fingerprint,
)
from router.functions import PURE_VOLATILE, WRITE_FUNCTIONS
from router.lexer import skip_token
from router.querytree import SQLGLOT_COMPILED

R, W, T, S, U, X = (
    Kind.READ,
    Kind.WRITE,
    Kind.TRANSACTION,
    Kind.SESSION,
    Kind.UTILITY,
    Kind.UNKNOWN,
)

CATALOG = FunctionCatalog(
    volatile=frozenset({"my_volatile_fn", "public.audit", "pure_but_volatile", "app.touch"}),
    write_functions=frozenset({"enqueue_job"}),
    read_functions=frozenset({"pure_but_volatile"}),
    version=1,
)

# (sql, expected kind, expected reason substring or None)
STATEMENTS: list[tuple[str, Kind, str | None]] = [
    # --- plain reads
    ("SELECT 1", R, "select"),
    ("select 1", R, "select"),
    ("SeLeCt 1", R, "select"),
    ("SELECT * FROM t WHERE id = $1", R, "select"),
    ("SELECT * FROM t WHERE id = 42", R, "select"),
    ("SELECT a, b FROM public.t WHERE a > 1 ORDER BY b DESC NULLS LAST LIMIT 10 OFFSET 5", R, None),
    ("SELECT * FROM t FETCH FIRST 5 ROWS ONLY", R, None),
    ("SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b", R, None),
    ("SELECT count(*) FROM t GROUP BY a HAVING count(*) > 1", R, None),
    ("SELECT a FROM t GROUP BY GROUPING SETS ((a), ())", R, None),
    ("SELECT count(*) FILTER (WHERE a > 1) FROM t", R, None),
    ("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY a) FROM t", R, None),
    ("SELECT * FROM t WHERE a IS DISTINCT FROM b", R, None),
    ("SELECT * FROM t WHERE a BETWEEN 1 AND 2 AND b LIKE 'x%'", R, None),
    ("SELECT * FROM t WHERE a ILIKE 'x%' ESCAPE '\\'", R, None),
    ("SELECT 'x' ~ '^\\d+$', 'y' SIMILAR TO 'a%'", R, None),
    ("SELECT * FROM t WHERE id IN (1, 2, 3)", R, None),
    ("SELECT * FROM t WHERE id IN ($1, $2, $3)", R, None),
    ("SELECT * FROM t WHERE a = ANY($1)", R, None),
    ("SELECT * FROM t WHERE (a, b) IN (SELECT a, b FROM u)", R, None),
    ("SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id)", R, None),
    ("SELECT CASE WHEN a THEN 1 ELSE 2 END FROM t", R, None),
    ("SELECT xmin, ctid FROM t", R, None),
    ("SELECT * FROM t TABLESAMPLE SYSTEM (10)", R, None),
    ('SELECT a COLLATE "C" FROM t', R, None),
    ("SELECT 1 UNION SELECT 2", R, None),
    ("SELECT 1 UNION ALL SELECT 2 EXCEPT SELECT 3 INTERSECT SELECT 4", R, None),
    ("(SELECT 1)", R, "select"),
    ("((SELECT 1))", R, "select"),
    ("(SELECT 1) UNION (SELECT 2) ORDER BY 1", R, None),
    ("  \n\t SELECT\n1  ", R, "select"),
    ("SELECT 1;", R, "select"),
    ("SELECT 1;;", R, "select"),
    ("", R, "empty"),
    (";", R, "empty"),
    ("-- only a comment", R, "empty"),
    # --- VALUES, TABLE
    ("VALUES (1), (2)", R, "select"),
    ("VALUES (1, 'a'), (2, 'b') ORDER BY 1", R, None),
    ("TABLE t", R, "select"),
    ("TABLE ONLY t", R, None),
    ("table public.t", R, None),
    ("VALUES (nextval('s'))", W, "write-function:nextval"),
    # --- WITH / recursive / CTE reads
    ("WITH x AS (SELECT 1) SELECT * FROM x", R, "select"),
    ("WITH x AS MATERIALIZED (SELECT 1) SELECT * FROM x", R, None),
    ("WITH x AS NOT MATERIALIZED (SELECT 1) SELECT * FROM x", R, None),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) "
        "SELECT * FROM r",
        R,
        "select",
    ),
    ("WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b JOIN t ON true", R, None),
    # --- joins, lateral, set-returning functions, window functions
    ("SELECT * FROM t1 JOIN t2 USING (id) LEFT JOIN t3 ON t3.id = t1.id", R, None),
    ("SELECT * FROM t1 NATURAL JOIN t2 FULL OUTER JOIN t3 USING (id)", R, None),
    ("SELECT * FROM t CROSS JOIN u", R, None),
    ("SELECT * FROM t, LATERAL (SELECT * FROM u WHERE u.t_id = t.id LIMIT 1) x", R, None),
    ("SELECT * FROM t LEFT JOIN LATERAL unnest(t.tags) tag ON true", R, None),
    ("SELECT * FROM generate_series(1, 10) g", R, None),
    ("SELECT generate_series(1, 3)", R, None),
    ("SELECT * FROM unnest(ARRAY[1, 2]) WITH ORDINALITY AS u(x, n)", R, None),
    ("SELECT * FROM jsonb_array_elements('[1,2]'::jsonb) e", R, None),
    ("SELECT * FROM regexp_split_to_table('a,b', ',')", R, None),
    ("SELECT row_number() OVER (PARTITION BY a ORDER BY b) FROM t", R, None),
    ("SELECT rank() OVER w, lag(a) OVER w FROM t WINDOW w AS (ORDER BY a)", R, None),
    (
        "SELECT sum(a) OVER (ORDER BY c ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM t",
        R,
        None,
    ),
    ("SELECT first_value(a) OVER (PARTITION BY b), ntile(4) OVER () FROM t", R, None),
    # --- JSON, casts, arrays, literals of every kind
    ("SELECT data->>'name', data #> '{a,b}' FROM docs WHERE data @> '{\"a\":1}'", R, None),
    ("SELECT j ? 'key' FROM docs", R, None),
    ("SELECT j ?| array['a', 'b'], j ?& array['c'] FROM docs", R, None),
    ("SELECT jsonb_build_object('a', 1) || '{}'::jsonb", R, None),
    ("SELECT json_agg(t) FROM t", R, None),
    ("SELECT '1'::int, CAST(a AS text), a::numeric(10, 2) FROM t", R, None),
    ("SELECT ARRAY[1, 2, 3], a[1], a[1:2] FROM t", R, None),
    ("SELECT ARRAY(SELECT a FROM t)", R, None),
    ("SELECT ROW(1, 2), (t.*)::text FROM t", R, None),
    ("SELECT interval '1 day', now() AT TIME ZONE 'UTC'", R, None),
    ("SELECT * FROM t WHERE ts > now() - interval '1 hour'", R, None),
    ("SELECT U&'\\0041', B'101', X'1F'", R, None),
    ("SELECT 1e10, .5, 1.5e-3", R, None),
    ("SELECT * FROM t WHERE a = 'it''s'", R, None),
    ("SELECT E'tab\\there'", R, None),
    ("SELECT $tag$ text $tag$", R, None),
    (
        "SELECT EXTRACT(epoch FROM now()), SUBSTRING('abc' FROM 2), TRIM(BOTH ' ' FROM a) FROM t",
        R,
        None,
    ),
    ("SELECT current_user, session_user, current_date, localtimestamp", R, None),
    ("SELECT coalesce(a, 1), nullif(a, b), greatest(a, b), lower(c) FROM t", R, None),
    ("SELECT string_agg(a, ',' ORDER BY a), array_agg(DISTINCT b) FROM t", R, None),
    ("SELECT md5(a), format('%s', a), to_char(now(), 'YYYY') FROM t", R, None),
    # --- identifiers: unicode, quoted, keywords inside quotes
    ('SELECT * FROM "Ünïcode"."Tåble"', R, None),
    ("SELECT * FROM ünïcode_täble", R, None),
    ('SELECT * FROM "my table", public."MixedCase"', R, None),
    ('SELECT "delete", "update", "insert" FROM "for update"', R, None),
    ('SELECT "nextval" FROM t', R, None),
    ('SELECT * FROM "t; DELETE FROM u"', R, None),
    # --- volatile but pure builtins stay reads
    ("SELECT random()", R, None),
    ("SELECT clock_timestamp(), timeofday(), statement_timestamp()", R, None),
    ("SELECT now(), transaction_timestamp()", R, None),
    ("SELECT gen_random_uuid()", R, None),
    ("SELECT uuid_generate_v4()", R, None),
    ("SELECT pg_sleep(1)", R, None),
    ("SELECT pg_catalog.random()", R, None),
    ("SELECT current_setting('search_path')", R, None),
    ("SELECT pg_backend_pid(), version()", R, None),
    # --- side-effecting builtins
    ("SELECT nextval('s')", W, "write-function:nextval"),
    ("select NEXTVAL('s')", W, "write-function:nextval"),
    ("SELECT \"nextval\"('s')", W, "write-function:nextval"),
    ("SELECT pg_catalog.nextval('s')", W, "write-function:pg_catalog.nextval"),
    ("SELECT nextval /* c */ ('s')", W, "write-function:nextval"),
    ("SELECT setval('s', 10)", W, "write-function:setval"),
    ("SELECT currval('s')", W, "write-function:currval"),
    ("SELECT lastval()", W, "write-function:lastval"),
    ("SELECT * FROM t WHERE id = nextval('s')", W, "write-function:nextval"),
    ("SELECT coalesce(nextval('s'), 1)", W, "write-function:nextval"),
    ("SELECT (SELECT nextval('s'))", W, "write-function:nextval"),
    ("SELECT 1 UNION SELECT nextval('s')", W, "write-function:nextval"),
    ("WITH x AS (SELECT nextval('s')) SELECT * FROM x", W, "write-function:nextval"),
    ("SELECT * FROM t ORDER BY nextval('s')", W, "write-function:nextval"),
    ("SELECT pg_advisory_lock(1)", W, "write-function:pg_advisory_lock"),
    ("SELECT pg_advisory_lock_shared(1)", W, "write-function:pg_advisory_lock_shared"),
    ("SELECT pg_try_advisory_lock(1)", W, "write-function:pg_try_advisory_lock"),
    ("SELECT pg_advisory_xact_lock(1)", W, "write-function:pg_advisory_xact_lock"),
    ("SELECT pg_try_advisory_xact_lock(1)", W, "write-function:pg_try_advisory_xact_lock"),
    ("SELECT pg_advisory_unlock_all()", W, "write-function:pg_advisory_unlock_all"),
    ("SELECT set_config('app.user', 'x', false)", W, "write-function:set_config"),
    ("SELECT set_config('app.user', 'x', true)", W, "write-function:set_config"),
    ("SELECT setseed(0.5)", W, "write-function:setseed"),
    ("SELECT pg_notify('ch', 'payload')", W, "write-function:pg_notify"),
    ("SELECT txid_current()", W, "write-function:txid_current"),
    ("SELECT txid_current_if_assigned()", W, "write-function:txid_current_if_assigned"),
    ("SELECT pg_current_xact_id()", W, "write-function:pg_current_xact_id"),
    ("SELECT lo_import('/tmp/x')", W, "write-function:lo_import"),
    ("SELECT lo_export(1, '/tmp/x')", W, "write-function:lo_export"),
    ("SELECT lo_create(0)", W, "write-function:lo_create"),
    ("SELECT lo_unlink(1)", W, "write-function:lo_unlink"),
    ("SELECT lowrite(0, 'x')", W, "write-function:lowrite"),
    ("SELECT pg_cancel_backend(1)", W, "write-function:pg_cancel_backend"),
    ("SELECT pg_terminate_backend(1)", W, "write-function:pg_terminate_backend"),
    ("SELECT pg_reload_conf()", W, "write-function:pg_reload_conf"),
    ("SELECT pg_switch_wal()", W, "write-function:pg_switch_wal"),
    ("SELECT pg_create_restore_point('x')", W, "write-function:pg_create_restore_point"),
    ("SELECT pg_stat_reset()", W, "write-function:pg_stat_reset"),
    ("SELECT pg_stat_reset_shared('bgwriter')", W, "write-function:pg_stat_reset_shared"),
    ("SELECT pg_current_wal_lsn()", W, "write-function:pg_current_wal_lsn"),
    ("SELECT dblink_exec('dbname=x', 'DELETE FROM t')", W, "write-function:dblink_exec"),
    ("SELECT * FROM dblink('dbname=x', 'SELECT 1') AS r(a int)", W, "write-function:dblink"),
    ("SELECT pg_logical_emit_message(true, 'p', 'x')", W, "write-function:pg_logical_emit"),
    ("SELECT pg_create_logical_replication_slot('s', 'pgoutput')", W, "write-function:pg_c"),
    ("SELECT query_to_xml('DELETE FROM t', true, true, '')", W, "write-function:query_to_xml"),
    # --- catalog: volatile user functions, configured lists
    ("SELECT my_volatile_fn()", W, "volatile-function:my_volatile_fn"),
    ("SELECT * FROM my_volatile_fn()", W, "volatile-function:my_volatile_fn"),
    ("SELECT * FROM t JOIN LATERAL my_volatile_fn(t.id) f ON true", W, "volatile-function"),
    ("SELECT * FROM ROWS FROM (my_volatile_fn(), generate_series(1, 2))", W, "volatile-func"),
    ("SELECT t.my_volatile_fn FROM t", W, "volatile-function:my_volatile_fn"),
    ("SELECT public.audit(1)", W, "volatile-function:public.audit"),
    ("SELECT audit(1)", W, "volatile-function:audit"),
    ("SELECT other.audit(1)", R, "select"),
    ("SELECT app.touch()", W, "volatile-function:app.touch"),
    ("SELECT enqueue_job('x')", W, "write-function:enqueue_job"),
    ("SELECT pure_but_volatile()", R, "select"),
    ("SELECT harmless_user_fn(1)", R, "select"),
    # --- writable CTEs, anywhere
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", W, "writable-cte"),
    ("WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT count(*) FROM u", W, "writable-cte"),
    ("WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT * FROM i", W, "writable-cte"),
    (
        "WITH m AS (MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE) SELECT 1",
        W,
        "writable-cte",
    ),
    ("SELECT * FROM (WITH d AS (DELETE FROM t RETURNING id) SELECT * FROM d) s", W, "writable-cte"),
    (
        "WITH a AS (SELECT 1), b AS (DELETE FROM t WHERE id IN (SELECT * FROM a) RETURNING id) "
        "SELECT * FROM b",
        W,
        "writable-cte",
    ),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", W, "insert"),
    ("WITH x AS (SELECT 1) UPDATE t SET a = x.a FROM x", W, "update"),
    ("WITH x AS (SELECT 1) DELETE FROM t USING x", W, "delete"),
    # --- SELECT INTO
    ("SELECT * INTO t2 FROM t", W, "select-into"),
    ("SELECT * INTO TEMP t2 FROM t", W, "select-into"),
    ("SELECT * INTO TEMPORARY TABLE t2 FROM t", W, "select-into"),
    ("SELECT * INTO UNLOGGED t2 FROM t", W, "select-into"),
    ("SELECT 1 AS a INTO t3", W, "select-into"),
    # --- locking clauses, spelled differently and anywhere
    ("SELECT * FROM t FOR UPDATE", W, "for-update"),
    ("select * from t where id = 1 for update", W, "for-update"),
    ("SELECT * FROM t FOR UPDATE NOWAIT", W, "for-update"),
    ("SELECT * FROM t FOR UPDATE SKIP LOCKED", W, "for-update"),
    ("SELECT * FROM t FOR UPDATE OF t", W, "for-update"),
    ("SELECT * FROM t FOR NO KEY UPDATE", W, "for-no-key-update"),
    ("SELECT * FROM t FOR SHARE", W, "for-share"),
    ("SELECT * FROM t FOR KEY SHARE", W, "for-key-share"),
    ("SELECT * FROM t LIMIT 1 FOR UPDATE", W, "for-update"),
    ("SELECT * FROM t, u WHERE t.id = u.id FOR UPDATE OF t FOR SHARE OF u", W, "for-"),
    ("WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x", W, "for-update"),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", W, "for-update"),
    ("SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u FOR SHARE)", W, "for-share"),
    ("(SELECT * FROM t FOR UPDATE) UNION SELECT 1", W, "for-update"),
    ("SELECT * FROM t WHERE note = 'for update'", R, "select"),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", W, "lock"),
    ("LOCK t", W, "lock"),
    # --- DML
    ("INSERT INTO t VALUES (1)", W, "insert"),
    ("insert into t (a) select a from u", W, "insert"),
    ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = excluded.a", W, "insert"),
    ("UPDATE t SET a = 1 WHERE id = 2", W, "update"),
    ("DELETE FROM t WHERE id = 1", W, "delete"),
    ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN UPDATE SET a = u.a", W, "merge"),
    ("/* pgrouter:replica */ INSERT INTO t VALUES (1)", W, "insert"),
    ("CALL proc()", W, "call"),
    ("call my_schema.proc(1, 'x')", W, "call"),
    ("DO $$BEGIN PERFORM 1; END$$", W, "do"),
    ("DO LANGUAGE plpgsql $body$ BEGIN NULL; END $body$", W, "do"),
    # --- DDL
    ("CREATE TABLE t (a int)", W, "ddl"),
    ("CREATE TEMP TABLE tt (a int)", W, "ddl"),
    ("CREATE TEMPORARY TABLE tt AS SELECT 1", W, "ddl"),
    ("CREATE UNLOGGED TABLE u (a int)", W, "ddl"),
    ("CREATE TABLE t2 AS SELECT * FROM t", W, "ddl"),
    ("CREATE INDEX CONCURRENTLY i ON t (a)", W, "ddl"),
    ("CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", W, "ddl"),
    ("CREATE MATERIALIZED VIEW mv AS SELECT 1", W, "ddl"),
    ("ALTER TABLE t ADD COLUMN b int", W, "ddl"),
    ("DROP TABLE IF EXISTS t CASCADE", W, "ddl"),
    ("TRUNCATE t RESTART IDENTITY", W, "ddl"),
    ("COMMENT ON TABLE t IS 'x'", W, "ddl"),
    ("GRANT SELECT ON t TO app", W, "ddl"),
    ("REVOKE ALL ON t FROM app", W, "ddl"),
    ("SECURITY LABEL ON TABLE t IS 'x'", W, "ddl"),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", W, "ddl"),
    ("REASSIGN OWNED BY a TO b", W, "ddl"),
    ("IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO local", W, "ddl"),
    # --- COPY
    ("COPY t TO STDOUT", R, "copy-to"),
    ("COPY t (a, b) TO STDOUT WITH (FORMAT csv, HEADER)", R, "copy-to"),
    ("copy public.t to stdout", R, "copy-to"),
    ("COPY (SELECT * FROM t WHERE a > 1) TO STDOUT WITH (FORMAT binary)", R, "copy-to"),
    ("COPY (SELECT nextval('s')) TO STDOUT", W, "write-function:nextval"),
    ("COPY (SELECT * FROM t FOR UPDATE) TO STDOUT", W, "for-update"),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", W, "delete"),
    ("COPY t FROM STDIN", W, "copy-from"),
    ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", W, "copy-from"),
    ("COPY t FROM '/tmp/data.csv'", W, "copy-from"),
    ("COPY t TO '/tmp/out.csv'", W, "copy-to-file"),
    ("COPY t TO PROGRAM 'gzip > /tmp/x.gz'", W, "copy-to-program"),
    ("COPY", X, "unparsed"),
    # --- EXPLAIN
    ("EXPLAIN SELECT * FROM t", R, "explain"),
    ("EXPLAIN (FORMAT JSON) SELECT * FROM t", R, "explain"),
    ("EXPLAIN VERBOSE SELECT * FROM t", R, "explain"),
    ("EXPLAIN UPDATE t SET a = 1", R, "explain"),
    ("EXPLAIN DELETE FROM t", R, "explain"),
    ("EXPLAIN INSERT INTO t VALUES (1)", R, "explain"),
    ("EXPLAIN SELECT nextval('s')", R, "explain"),
    ("EXPLAIN SELECT * FROM t FOR UPDATE", R, "explain"),
    ("EXPLAIN ANALYZE SELECT * FROM t", R, "explain-analyze"),
    ("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t", R, "explain-analyze"),
    ("EXPLAIN ANALYZE UPDATE t SET a = 1", W, "explain-analyze-write"),
    ("EXPLAIN ANALYSE DELETE FROM t", W, "explain-analyze-write"),
    ("EXPLAIN (ANALYZE true, TIMING off) INSERT INTO t VALUES (1)", W, "explain-analyze-write"),
    ("EXPLAIN ANALYZE VERBOSE SELECT nextval('s')", W, "explain-analyze-write"),
    ("EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE", W, "explain-analyze-write"),
    (
        "EXPLAIN ANALYZE WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d",
        W,
        "explain-analyze-write",
    ),
    ("EXPLAIN EXECUTE p", S, "explain-execute"),
    ("EXPLAIN CREATE TABLE x AS SELECT 1", W, "explain-ddl"),
    ("EXPLAIN", X, "unparsed"),
    # --- multi-statement strings
    ("SELECT 1; SELECT 2", R, "select"),
    ("SELECT 1; DELETE FROM t", W, "delete"),
    ("DELETE FROM t; SELECT 1", W, "delete"),
    ("SELECT 1; SELECT nextval('s')", W, "write-function:nextval"),
    ("SELECT ';' ; DELETE FROM t", W, "delete"),
    ("SET x = 1; SELECT 1", S, "set"),
    ("BEGIN; SELECT 1; COMMIT", T, "begin"),
    ("SELECT 1; FOO", X, "unknown-statement"),
    ("UPDATE t SET a = 1; SELECT 1 FROM", X, "unparsed"),
    # --- comments and literals hiding keywords
    ("SELECT '/* DELETE */'", R, "select"),
    ("SELECT '; DELETE FROM t'", R, "select"),
    ("SELECT $$; DELETE FROM t$$", R, "select"),
    ("SELECT $tag$ text; DELETE FROM t $tag$", R, "select"),
    ("SELECT E'\\'; DELETE FROM t; --'", R, "select"),
    ("SELECT 'nextval(1)', 'for update', 'into x'", R, "select"),
    ("/* UPDATE */ SELECT 1", R, "select"),
    ("-- INSERT\nSELECT 1", R, "select"),
    ("/* /* DELETE */ */ SELECT 1", R, "select"),
    ("SELECT 1 -- ; DELETE FROM t", R, "select"),
    ("SELECT 1 /* ; DELETE FROM t */", R, "select"),
    ("SELECT 'a\\', nextval('s'), '\\'", W, "write-function:nextval"),
    ("/* SELECT */ DELETE FROM t", W, "delete"),
    ("-- SELECT 1\nUPDATE t SET a = 1", W, "update"),
    # --- transaction control
    ("BEGIN", T, "begin"),
    ("begin work", T, "begin"),
    ("BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE", T, "begin"),
    ("BEGIN READ WRITE", T, "begin"),
    ("BEGIN /* READ ONLY */", T, "begin"),
    ("BEGIN READ ONLY", T, "begin-read-only"),
    ("begin transaction read only", T, "begin-read-only"),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY, DEFERRABLE", T, "begin-read-only"),
    ("START TRANSACTION", T, "begin"),
    ("START TRANSACTION READ ONLY", T, "begin-read-only"),
    # A hot standby refuses SERIALIZABLE (0A000): such read-only transactions stay primary.
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", T, "begin"),
    ("START", X, "unknown-statement"),
    ("COMMIT", T, "commit"),
    ("commit work", T, "commit"),
    ("END", T, "commit"),
    ("END TRANSACTION", T, "commit"),
    ("COMMIT AND CHAIN", T, "commit-and-chain"),
    ("COMMIT AND NO CHAIN", T, "commit"),
    ("ROLLBACK", T, "rollback"),
    ("ABORT", T, "rollback"),
    ("ROLLBACK AND CHAIN", T, "rollback-and-chain"),
    ("ROLLBACK TO SAVEPOINT a", T, "rollback-to-savepoint"),
    ("ROLLBACK WORK TO a", T, "rollback-to-savepoint"),
    ("SAVEPOINT a", T, "savepoint"),
    ("RELEASE SAVEPOINT a", T, "release-savepoint"),
    ("RELEASE a", T, "release-savepoint"),
    ("PREPARE TRANSACTION 'tx1'", T, "prepare-transaction"),
    ("COMMIT PREPARED 'tx1'", T, "commit-prepared"),
    ("ROLLBACK PREPARED 'tx1'", T, "rollback-prepared"),
    ("SET TRANSACTION READ ONLY", T, "set-transaction-read-only"),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY", T, "set-transaction"),
    ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", T, "set-transaction"),
    ("SET TRANSACTION READ WRITE", T, "set-transaction"),
    ("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", T, "set-transaction"),
    ("SET transaction_read_only = on", T, "set-transaction-read-only"),
    # --- session state
    ("SET search_path = app, public", S, "set"),
    ("SET LOCAL statement_timeout = 5", S, "set"),
    ("SET SESSION timezone TO 'UTC'", S, "set"),
    ("SET ROLE app", S, "set"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", S, "set-session-characteristics"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", S, "set-session-characteristics"),
    ("SET default_transaction_read_only = on", S, "set"),
    ("SET default_transaction_read_only TO off", S, "set"),
    ("RESET ALL", S, "reset"),
    ("RESET search_path", S, "reset"),
    ("LISTEN channel", S, "listen"),
    ('LISTEN "Channel"', S, "listen"),
    ("UNLISTEN *", S, "unlisten"),
    ("NOTIFY channel, 'payload'", S, "notify"),
    ("PREPARE p AS SELECT 1", S, "prepare"),
    ("PREPARE q (int) AS UPDATE t SET a = $1", S, "prepare"),
    ("EXECUTE p", S, "execute"),
    ("EXECUTE q (1)", S, "execute"),
    ("DEALLOCATE p", S, "deallocate"),
    ("DEALLOCATE ALL", S, "deallocate"),
    ("DECLARE c CURSOR FOR SELECT * FROM t", S, "declare"),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", S, "declare"),
    ("FETCH 10 FROM c", S, "fetch"),
    ("FETCH ALL IN c", S, "fetch"),
    ("MOVE NEXT IN c", S, "move"),
    ("CLOSE c", S, "close"),
    ("CLOSE ALL", S, "close"),
    ("DISCARD ALL", S, "discard"),
    ("DISCARD TEMP", S, "discard"),
    ("LOAD 'auto_explain'", S, "load"),
    # --- utility
    ("SHOW search_path", U, "show"),
    ("SHOW ALL", U, "show"),
    ("VACUUM t", U, "vacuum"),
    ("VACUUM (VERBOSE, ANALYZE) t", U, "vacuum"),
    ("ANALYZE t", U, "analyze"),
    ("ANALYSE t", U, "analyze"),
    ("CLUSTER t USING i", U, "cluster"),
    ("REINDEX TABLE t", U, "reindex"),
    ("CHECKPOINT", U, "checkpoint"),
    # --- not understood: UNKNOWN, primary
    ("FOO BAR", X, "unknown-statement"),
    ("'just a string'", X, "unknown-statement"),
    ("$1", X, "unknown-statement"),
    ("SELECT FROM WHERE", X, "unparsed"),
    ("SELECT (", X, "unparsed"),
    ("SELECT 1 FOR READ ONLY", X, "unparsed"),
    ("SELECT update FROM t", X, "unparsed"),
    ("WITH x AS (SELECT 1)", X, "unparsed"),
    ("SELECT 1 OPERATOR(pg_catalog.+) 2", R, "select"),
    ("SELECT a OPERATOR(app.===) b FROM t", X, "unparsed"),
    ("SELECT a === b", X, "unparsed"),
]


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(CATALOG)


def test_the_table_is_big_enough() -> None:
    assert len(STATEMENTS) >= 200
    assert len({sql for sql, _, _ in STATEMENTS}) == len(STATEMENTS), "duplicate statements"


@pytest.mark.parametrize(("sql", "kind", "reason"), STATEMENTS)
def test_statement(classifier: Classifier, sql: str, kind: Kind, reason: str | None) -> None:
    result = classifier.classify(sql)
    assert result.kind is kind, result
    if reason is not None:
        assert reason in result.reason, result
    assert result.is_read == (kind is Kind.READ)


@pytest.mark.parametrize(("sql", "kind", "reason"), STATEMENTS)
def test_statement_uncached_gives_the_same_answer(sql: str, kind: Kind, reason: str | None) -> None:
    assert Classifier(CATALOG, cache_size=0).classify(sql) == Classifier(CATALOG).classify(sql)


def _classify(sql: str, catalog: FunctionCatalog = CATALOG) -> Classification:
    return Classifier(catalog).classify(sql)


# --- flags, tables, functions ------------------------------------------------------------


def test_flags_of_a_locking_read() -> None:
    c = _classify("WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x")
    assert (c.locking, c.writable_cte, c.select_into, c.multi_statement) == (
        True,
        False,
        False,
        False,
    )
    assert c.tables == {"t"}


def test_lock_statement_is_locking() -> None:
    assert _classify("LOCK TABLE t").locking


def test_writable_cte_flag() -> None:
    c = _classify("SELECT * FROM (WITH d AS (DELETE FROM t RETURNING id) SELECT * FROM d) s")
    assert c.writable_cte and not c.locking and c.tables == {"t"}


def test_select_into_flag_and_tables() -> None:
    c = _classify("SELECT * INTO TEMP t2 FROM public.t")
    assert c.select_into and c.tables == {"t2", "public.t"}


def test_multi_statement_combines_flags_tables_and_functions() -> None:
    c = _classify("SELECT * FROM a; SELECT nextval('s'); SELECT * FROM b FOR SHARE")
    assert c.multi_statement and c.locking
    assert c.kind is Kind.WRITE and c.reason == "write-function:nextval"
    assert c.tables == {"a", "b"} and "nextval" in c.functions


def test_single_statement_with_semicolon_is_not_multi() -> None:
    assert not _classify("SELECT 1;").multi_statement


@pytest.mark.parametrize(
    "sql",
    [
        "BEGIN READ ONLY",
        "START TRANSACTION READ ONLY",
        "SET TRANSACTION READ ONLY",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET default_transaction_read_only = on",
        "BEGIN READ ONLY; SELECT 1; COMMIT",
    ],
)
def test_read_only_begin(sql: str) -> None:
    assert _classify(sql).read_only_begin


@pytest.mark.parametrize(
    "sql",
    [
        "BEGIN",
        "BEGIN READ WRITE",
        "BEGIN READ ONLY, READ WRITE",
        "BEGIN -- READ ONLY",
        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
        "SET default_transaction_read_only = off",
        "SET default_transaction_read_only = 'on'",  # a literal: see test_literal_never_decides
        "SELECT 1",
    ],
)
def test_not_read_only_begin(sql: str) -> None:
    assert not _classify(sql).read_only_begin


@pytest.mark.parametrize(
    ("sql", "ends"),
    [
        ("COMMIT", True),
        ("END", True),
        ("ROLLBACK", True),
        ("ABORT", True),
        ("PREPARE TRANSACTION 'x'", True),
        ("ROLLBACK TO SAVEPOINT a", False),
        ("COMMIT AND CHAIN", False),
        ("COMMIT PREPARED 'x'", False),
        ("RELEASE SAVEPOINT a", False),
        ("BEGIN", False),
    ],
)
def test_tx_end(sql: str, ends: bool) -> None:
    assert _classify(sql).tx_end is ends


def test_tables_are_lower_case_and_qualified_as_written() -> None:
    c = _classify('SELECT * FROM Public.T JOIN "Sales"."Orders" o ON true JOIN u USING (id)')
    assert c.tables == {"public.t", "sales.orders", "u"}


def test_cte_names_are_not_tables() -> None:
    c = _classify("WITH recent AS (SELECT * FROM orders) SELECT * FROM recent JOIN users ON true")
    assert c.tables == {"orders", "users"}


def test_functions_are_listed_as_written() -> None:
    c = _classify(
        "SELECT random(), now(), string_agg(a, ','), public.audit(1) FROM t", FunctionCatalog()
    )
    assert c.is_read
    assert {"random", "now", "string_agg", "audit", "public.audit"} <= c.functions
    assert "cast" not in _classify("SELECT a::int, b ->> 'k' FROM t").functions


def test_copy_to_reports_the_table() -> None:
    assert _classify('COPY "Sales".orders (id) TO STDOUT').tables == {"sales.orders"}


# --- function lists and the catalog ------------------------------------------------------


@pytest.mark.parametrize("name", sorted(WRITE_FUNCTIONS))
def test_every_builtin_write_function_is_a_write(name: str) -> None:
    c = _classify(f"SELECT {name}(1)", FunctionCatalog())
    assert c.kind is Kind.WRITE and c.reason == f"write-function:{name}", c
    assert name in c.functions  # sqlglot kept the name as written


@pytest.mark.parametrize(
    "name",
    [
        "pg_advisory_lock",
        "pg_advisory_unlock_shared",
        "pg_try_advisory_lock_shared",
        "lo_open",
        "lo_put",
        "lo_from_bytea",
        "dblink_connect",
        "pg_stat_reset_single_table_counters",
        "pg_current_wal_insert_lsn",
        "pg_create_physical_replication_slot",
        "pg_logical_slot_get_changes",
        "pg_replication_origin_create",
        "pg_backup_start",
        "pg_wal_replay_pause",
        "brin_summarize_new_values",
    ],
)
def test_write_function_prefixes(name: str) -> None:
    assert _classify(f"SELECT {name}(1)", FunctionCatalog()).reason == f"write-function:{name}"


@pytest.mark.parametrize("name", sorted(PURE_VOLATILE))
def test_pure_volatile_builtins_stay_reads_even_if_the_catalog_lists_them(name: str) -> None:
    catalog = FunctionCatalog(volatile=PURE_VOLATILE | {f"pg_catalog.{n}" for n in PURE_VOLATILE})
    assert _classify(f"SELECT {name}()", catalog).is_read
    assert _classify(f"SELECT pg_catalog.{name}()", catalog).is_read


def test_a_user_function_named_like_a_pure_builtin_is_checked() -> None:
    catalog = FunctionCatalog(volatile=frozenset({"myschema.random"}))
    assert (
        _classify("SELECT myschema.random()", catalog).reason == "volatile-function:myschema.random"
    )
    assert _classify("SELECT random()", catalog).is_read  # pg_catalog comes first in search_path


def test_read_functions_override_builtins_and_the_catalog() -> None:
    catalog = FunctionCatalog(
        volatile=frozenset({"cached_lookup"}),
        read_functions=frozenset({"nextval", "cached_lookup"}),
    )
    assert _classify("SELECT nextval('s'), cached_lookup(1)", catalog).is_read


def test_write_functions_config_matches_qualified_calls() -> None:
    catalog = FunctionCatalog(write_functions=frozenset({"jobs.enqueue"}))
    assert _classify("SELECT jobs.enqueue(1)", catalog).reason == "write-function:jobs.enqueue"
    assert _classify("SELECT enqueue(1)", catalog).reason == "write-function:enqueue"
    assert _classify("SELECT other.enqueue(1)", catalog).is_read


def test_without_a_catalog_user_functions_are_reads() -> None:
    assert _classify("SELECT my_volatile_fn()", FunctionCatalog()).is_read


def test_catalog_snapshot_is_immutable() -> None:
    with pytest.raises(AttributeError):
        CATALOG.version = 2  # type: ignore[misc]


# --- fingerprints ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE id = 99999"),
        ("SELECT * FROM t WHERE id = 1.5", "SELECT * FROM t WHERE id = 2e10"),
        ("SELECT * FROM t WHERE id = $1", "SELECT * FROM t WHERE id = 7"),
        ("SELECT * FROM t WHERE n = 'a'", "SELECT * FROM t WHERE n = 'it''s; DELETE FROM t'"),
        ("SELECT * FROM t WHERE n = E'a\\'b'", "SELECT * FROM t WHERE n = E'c'"),
        ("SELECT * FROM t WHERE n = $$a$$", "SELECT * FROM t WHERE n = $x$; DROP TABLE t $x$"),
        ("SELECT * FROM t WHERE id IN (1, 2, 3)", "SELECT * FROM t WHERE id IN (4)"),
        ("SELECT * FROM t WHERE id IN ($1, $2)", "SELECT * FROM t WHERE id IN ('a','b','c')"),
        ("INSERT INTO t VALUES (1, 'a'), (2, 'b')", "INSERT INTO t VALUES (3, 'c')"),
        ("SELECT  *\n\tFROM t", "select * from T"),
        ("SELECT * FROM t -- trailing", "/* leading */ SELECT * /* mid */ FROM t"),
        ("SELECT/**/1", "SELECT 2"),
    ],
)
def test_same_fingerprint(a: str, b: str) -> None:
    assert fingerprint(a) == fingerprint(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SELECT * FROM t WHERE id = 1", "SELECT * FROM u WHERE id = 1"),
        ("SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE id = 1 FOR UPDATE"),
        ("SELECT f(1)", "SELECT nextval(1)"),
        ("SELECT * FROM t WHERE id IN (1, 2)", "SELECT * FROM t WHERE id IN (1, nextval('s'))"),
        ('SELECT * FROM "T"', 'SELECT * FROM "t"'),
        ('SELECT * FROM "a  b"', 'SELECT * FROM "a b"'),
        ('SELECT * FROM "x in (1, 2)"', 'SELECT * FROM "x in (1)"'),
        ("COPY t TO STDOUT", "COPY t TO '/tmp/x'"),
        ("SELECT 1; DELETE FROM t", "SELECT 1"),
        ("SELECT t1 FROM t", "SELECT t2 FROM t"),
    ],
)
def test_different_fingerprint(a: str, b: str) -> None:
    assert fingerprint(a) != fingerprint(b)


def test_fingerprint_normalizes_to_placeholders() -> None:
    sql = "SELECT a FROM t WHERE b = 'x' AND c IN (1, 2, $3) AND d > 4.5 -- note"
    assert fingerprint(sql) == "select a from t where b = ? and c in (?) and d > ?"


def test_fingerprint_keywords_in_literals_and_comments_never_leak() -> None:
    assert fingerprint("SELECT '; DELETE FROM t'") == fingerprint("SELECT 1")
    assert fingerprint("SELECT $$ FOR UPDATE $$") == fingerprint("SELECT 1")
    assert fingerprint("/* DELETE */ SELECT 1") == fingerprint("SELECT 1")
    assert _classify("SELECT '; DELETE FROM t'").is_read


def test_fast_literal_scan_agrees_with_the_lexer() -> None:
    pieces = ["'", '"', "$", "$$", "$a$", "-", "--", "/", "/*", "*/", "*", "e", "E", "x", "1"]
    pieces += [" ", "\n", "\\", "''", '""', "é", ";", "("]
    rng = random.Random(4)
    for _ in range(20000):
        s = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        for i, c in enumerate(s):
            if c in "'\"$-/":
                assert _token_end(s, i) == skip_token(s, i), (s, i)


def test_arbitrary_input_never_raises() -> None:
    pieces = ["SELECT", "WITH", "(", ")", "'", '"', "$$", "$1", "--", "/*", "*/", ";", "E'"]
    pieces += ["nextval(", "FOR UPDATE", "INTO", "1.5", " ", "\n", "\\", "é", "\x00", "COPY"]
    rng = random.Random(9)
    c = Classifier(CATALOG)
    for _ in range(3000):
        sql = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        assert isinstance(fingerprint(sql), str)
        assert isinstance(c.classify(sql), Classification)


# Statements with literal slots; every filling must classify like the first one, so a
# cached answer never depends on a literal's value.
SHAPES = [
    "SELECT * FROM t WHERE a = {} AND b IN ({}, {})",
    "SELECT set_config('x', {}, {})",
    "SET default_transaction_read_only = {}",
    "EXPLAIN (ANALYZE {}) SELECT * FROM t WHERE a = {}",
    "COPY (SELECT {}) TO STDOUT",
    "SELECT {}; SELECT {}",
    "VALUES ({}, {}), ({}, {})",
    "WITH x AS (SELECT {} AS a) SELECT * FROM x WHERE a = {}",
]
LITERALS = [
    "1", "2.5e3", "$1", "'x'", "'on'", "'off'", "'true'", "0", "'; DELETE FROM t; --'",
    "E'\\'; UPDATE t SET a = 1; --'", "$$ FOR UPDATE $$", "$q$ nextval('s') $q$", "'*/'", "'/*'",
    "U&'\\0041'", "'INTO x'",
]  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES)
def test_cached_results_never_depend_on_literal_values(shape: str) -> None:
    rng = random.Random(shape)
    cached = Classifier(CATALOG)
    first = shape.format(*(rng.choice(LITERALS) for _ in range(shape.count("{}"))))
    expected = cached.classify(first)
    for _ in range(40):
        sql = shape.format(*(rng.choice(LITERALS) for _ in range(shape.count("{}"))))
        assert fingerprint(sql) == fingerprint(first)
        assert cached.classify(sql) == expected == Classifier(CATALOG).classify(sql), sql
    if not shape.startswith("SET"):  # stage-1 statements skip the fingerprint
        assert cached.cache_info()[1] == 1  # parsed once


def test_literal_never_decides() -> None:
    on, off = "SELECT set_config('a', 'b', true)", "SELECT set_config('a', 'b', false)"
    assert _classify(on).kind is _classify(off).kind is Kind.WRITE
    analyze0 = _classify("EXPLAIN (ANALYZE 0) UPDATE t SET a = 1")
    assert analyze0.kind is Kind.WRITE  # a number is normalized, so ANALYZE counts
    assert not _classify("SET default_transaction_read_only = 'on'").read_only_begin


# --- the cache ---------------------------------------------------------------------------


def test_classify_twice_is_one_miss_one_hit() -> None:
    c = Classifier(CATALOG)
    first = c.classify("SELECT * FROM t WHERE id = $1")
    assert c.classify("SELECT * FROM t WHERE id = $1") is first
    assert c.cache_info() == (1, 1, 1)


def test_different_literals_share_one_parse() -> None:
    c = Classifier(CATALOG)
    c.classify("SELECT * FROM t WHERE id = 1")
    c.classify("SELECT * FROM t WHERE id = 2")
    c.classify("select * from t where id = 3 -- again")
    assert c.cache_info() == (2, 1, 1)


def test_stage_one_statements_are_cached_by_text() -> None:
    c = Classifier(CATALOG)
    c.classify("INSERT INTO t VALUES (1)")
    c.classify("INSERT INTO t VALUES (1)")
    hits, misses, _ = c.cache_info()
    assert (hits, misses) == (1, 1)


def test_catalog_swap_invalidates() -> None:
    c = Classifier(FunctionCatalog(version=1))
    assert c.classify("SELECT new_fn()").is_read
    c.set_catalog(FunctionCatalog(volatile=frozenset({"new_fn"}), version=2))
    assert c.classify("SELECT new_fn()").reason == "volatile-function:new_fn"
    assert c.cache_info()[1] == 2
    assert c.catalog.version == 2


def test_setting_an_equal_catalog_keeps_the_cache() -> None:
    c = Classifier(FunctionCatalog(version=3))
    c.classify("SELECT 1")
    c.set_catalog(FunctionCatalog(version=3))
    c.classify("SELECT 1")
    assert c.cache_info()[:2] == (1, 1)


def test_cache_is_bounded() -> None:
    c = Classifier(CATALOG, cache_size=3)
    for i in range(10):
        c.classify(f"SELECT c{i} FROM t")
    assert c.cache_info()[2] == 3
    assert c.classify("SELECT c0 FROM t").is_read


def test_cache_size_zero_never_caches() -> None:
    c = Classifier(CATALOG, cache_size=0)
    c.classify("SELECT 1")
    c.classify("SELECT 1")
    assert c.cache_info() == (0, 2, 0)


def test_mark_write_turns_a_shape_into_a_write() -> None:
    c = Classifier(CATALOG)
    assert c.classify("SELECT * FROM v WHERE id = 1").is_read
    c.mark_write("SELECT * FROM v WHERE id = 1")
    again = c.classify("SELECT * FROM v WHERE id = 1")
    assert (again.kind, again.reason, again.tables) == (
        Kind.WRITE,
        "read-only-error",
        frozenset({"v"}),
    )
    assert c.classify("SELECT * FROM v WHERE id = 2").kind is Kind.WRITE
    assert c.classify("SELECT * FROM w WHERE id = 2").is_read


# --- fallbacks ---------------------------------------------------------------------------


def test_fallbacks_count_every_statement_not_understood() -> None:
    c = Classifier(CATALOG)
    c.classify("SELECT 1")
    c.classify("INSERT INTO t VALUES (1)")
    assert c.fallbacks == 0
    c.classify("SELECT FROM WHERE")
    c.classify("SELECT FROM WHERE")  # cached, still sent to the primary: counted again
    c.classify("FROBNICATE")
    assert c.fallbacks == 3


def test_compiled_sqlglot_is_active() -> None:
    assert SQLGLOT_COMPILED, "install sqlglot[c] (pyproject's dependency) for the compiled parser"
