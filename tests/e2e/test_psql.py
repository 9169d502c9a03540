"""psql through the proxy: multi-statement commands, \\copy both ways, scripts that fail,
describe commands, and application_name reaching the primary."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
from harness import ProxyProcess

from e2e.util import (
    client_binary,
    libpq_env,
    primary_conn,
    proxy_fixtures,
    run_client,
    scalar,
    unique_name,
    wait_for,
)
from router.localcluster import LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

POOL_MODES = ["session", "transaction"]
module_proxy, proxy = proxy_fixtures(POOL_MODES)


def psql(
    proxy: ProxyProcess, *args: str, input_text: str | None = None, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    argv = [client_binary("psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", *args]
    return run_client(argv, libpq_env(proxy, **env), input_text=input_text, check=check)


def test_psql_command_with_several_statements(proxy: ProxyProcess) -> None:
    table = unique_name("psql_multi")
    # One -c string is one simple Query with three statements; psql 15 prints every result.
    out = psql(
        proxy,
        "-c",
        f"CREATE TABLE {table} (id int PRIMARY KEY, name text); "
        f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b'), (3, 'c'); "
        f"SELECT count(*) FROM {table}",
    )
    assert out.stdout.splitlines() == ["CREATE TABLE", "INSERT 0 3", "3"]
    # Several -c options: each runs and prints in order.
    out = psql(
        proxy,
        "-c",
        f"UPDATE {table} SET name = upper(name) WHERE id < 3",
        "-c",
        f"SELECT string_agg(name, ',' ORDER BY id) FROM {table}",
        "-c",
        f"DROP TABLE {table}",
    )
    assert out.stdout.splitlines() == ["UPDATE 2", "A,B,c", "DROP TABLE"]


def test_psql_copy_in_and_out_round_trips(
    proxy: ProxyProcess, pg_cluster: LocalCluster, tmp_path: Path
) -> None:
    table = unique_name("psql_copy")
    rows = [
        [
            str(i),
            f"name {i}, with comma",
            'quote "q" and ünïcode ✓',
            "" if i % 7 == 0 else str(i * 1.5),
        ]
        for i in range(1, 20_001)
    ]
    source = tmp_path / "in.csv"
    with source.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    target = tmp_path / "out.csv"
    psql(proxy, "-c", f"CREATE TABLE {table} (id int PRIMARY KEY, a text, b text, c numeric)")
    out = psql(proxy, "-c", f"\\copy {table} FROM '{source}' WITH (FORMAT csv)")
    assert out.stdout.strip() == "COPY 20000"
    # Each psql is a new client: in transaction mode its read may go to a replica.
    pg_cluster.wait_replicated()
    out = psql(
        proxy,
        "-c",
        f"\\copy (SELECT * FROM {table} ORDER BY id) TO '{target}' WITH (FORMAT csv)",
    )
    assert out.stdout.strip() == "COPY 20000"
    with target.open(newline="", encoding="utf-8") as f:
        copied = list(csv.reader(f))
    assert len(copied) == len(rows)
    assert copied == rows
    with primary_conn(pg_cluster) as conn:
        assert scalar(conn, f"SELECT count(*) FROM {table}") == 20_000
        assert scalar(conn, f"SELECT count(*) FROM {table} WHERE c IS NULL") == 20_000 // 7
        conn.execute(f"DROP TABLE {table}")


def test_psql_script_stops_at_error_inside_transaction(
    proxy: ProxyProcess, pg_cluster: LocalCluster
) -> None:
    table = unique_name("psql_script")
    script = f"""
\\set VERBOSITY verbose
CREATE TABLE {table} (id int PRIMARY KEY);
BEGIN;
INSERT INTO {table} VALUES (1);
INSERT INTO {table} VALUES (1);
INSERT INTO {table} VALUES (2);
COMMIT;
SELECT 'not reached';
"""
    out = psql(proxy, "-f", "-", input_text=script, check=False)
    assert out.returncode == 3, out.stderr  # psql: script error with ON_ERROR_STOP
    assert "ERROR:  23505: duplicate key value violates unique constraint" in out.stderr
    assert f'"{table}_pkey"' in out.stderr
    assert "not reached" not in out.stdout
    # The open transaction died with the session: nothing was committed ...
    with primary_conn(pg_cluster) as conn:
        assert scalar(conn, f"SELECT count(*) FROM {table}") == 0
    # ... and the next session through the proxy is clean (not left in a failed transaction).
    pg_cluster.wait_replicated()  # its read may go to a replica, which must have the table
    out = psql(proxy, "-c", f"SELECT count(*) FROM {table}", "-c", f"DROP TABLE {table}")
    assert out.stdout.splitlines() == ["0", "DROP TABLE"]


def test_psql_describe_commands(proxy: ProxyProcess, pg_cluster: LocalCluster) -> None:
    table = unique_name("psql_describe")
    psql(
        proxy,
        "-c",
        f"CREATE TABLE {table} (id bigint PRIMARY KEY, label text NOT NULL DEFAULT 'x'); "
        f"CREATE INDEX {table}_label ON {table} (label)",
    )
    pg_cluster.wait_replicated()  # the describing psql's reads may go to a replica
    described = psql(proxy, "-P", "tuples_only=off", "-c", f"\\d {table}").stdout
    assert f'Table "public.{table}"' in described
    assert "id|bigint||not null|" in described
    assert "label|text||not null|'x'::text" in described
    assert f'"{table}_pkey" PRIMARY KEY, btree (id)' in described
    assert f'"{table}_label" btree (label)' in described
    listed = psql(proxy, "-c", f"\\dt {table}").stdout
    assert listed.strip() == f"public|{table}|table|app"
    databases = psql(proxy, "-c", "\\l").stdout
    assert any(line.startswith("app|app|") for line in databases.splitlines())
    roles = psql(proxy, "-c", "\\du app").stdout
    assert roles.startswith("app|")
    psql(proxy, "-c", f"DROP TABLE {table}")


def test_psql_application_name_reaches_primary(
    proxy: ProxyProcess, pg_cluster: LocalCluster
) -> None:
    app_name = unique_name("psql_app")
    out = psql(proxy, "-c", "SHOW application_name", PGAPPNAME=app_name)
    assert out.stdout.strip() == app_name
    # While a psql session is in a transaction (so it holds a server connection in any
    # pool mode), the primary's pg_stat_activity shows its name.
    argv = [client_binary("psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"]
    session = subprocess.Popen(
        argv,
        env=libpq_env(proxy, PGAPPNAME=app_name),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert session.stdin is not None
        session.stdin.write("BEGIN;\nSELECT 'connected';\n")
        session.stdin.flush()
        with primary_conn(pg_cluster) as conn:

            def seen() -> list[tuple[str, str]]:
                return conn.execute(
                    "SELECT usename, datname FROM pg_stat_activity WHERE application_name = %s",
                    (app_name,),
                ).fetchall()

            rows = wait_for(seen, 10, f"application_name {app_name} on the primary")
        assert rows == [("app", "app")]
        session.stdin.write("COMMIT;\n")
        stdout, stderr = session.communicate(timeout=10)  # closes stdin: psql ends
        assert session.returncode == 0, stderr
        assert stdout.split() == ["BEGIN", "connected", "COMMIT"]
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
