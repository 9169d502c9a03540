"""End-to-end tests: real clients (psql, pgbench, psycopg, asyncpg, SQLAlchemy) through
the proxy. A package, so its helpers import as ``e2e.util`` and cannot collide with
another test directory's ``util`` module."""
