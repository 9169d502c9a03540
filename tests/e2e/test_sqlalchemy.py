"""SQLAlchemy 2.0 through the proxy, with the psycopg (sync) and asyncpg (async) dialects:
metadata DDL, ORM unit of work, rollback, relationship loading and pool_pre_ping."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from harness import ADMIN_PASSWORD, ADMIN_USER, ProxyProcess
from sqlalchemy import ForeignKey, String, create_engine, event, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)

from e2e.util import (
    connect,
    pool_mode,
    primary_conn,
    proxy_fixtures,
    scalar,
    superuser_conn,
    unique_name,
    wait_for,
)
from router.localcluster import LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

POOL_MODES = ["session", "transaction"]
module_proxy, proxy = proxy_fixtures(POOL_MODES)


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Book(Base):
    __tablename__ = "book"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    author: Mapped[Author] = relationship(back_populates="books")


@pytest.fixture
def schema(proxy: ProxyProcess) -> Iterator[str]:
    """A fresh schema the models are mapped into (``schema_translate_map``)."""
    name = unique_name("sa")
    with connect(proxy) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    yield name
    with connect(proxy) as conn:
        conn.execute(f"DROP SCHEMA {name} CASCADE")


def url(proxy: ProxyProcess, driver: str) -> str:
    user, password = LocalCluster.APP_USER, LocalCluster.APP_PASSWORD
    return (
        f"postgresql+{driver}://{user}:{password}@{proxy.host}:{proxy.port}/{LocalCluster.APP_DB}"
    )


def sync_engine(proxy: ProxyProcess, schema: str, **kwargs: Any) -> Engine:
    engine = create_engine(url(proxy, "psycopg"), connect_args={"connect_timeout": 10}, **kwargs)
    return engine.execution_options(schema_translate_map={None: schema})


def async_engine(proxy: ProxyProcess, schema: str, **kwargs: Any) -> AsyncEngine:
    if importlib.util.find_spec("greenlet") is None:
        pytest.fail(
            "SQLAlchemy's asyncio extension needs greenlet; install it: "
            "pip install 'SQLAlchemy[asyncio]'",
            pytrace=False,
        )
    engine = create_async_engine(url(proxy, "asyncpg"), connect_args={"timeout": 10}, **kwargs)
    return engine.execution_options(schema_translate_map={None: schema})


def terminate(cluster: LocalCluster, pid: int) -> None:
    """Kill one server session behind the proxy, as a failover or an admin would. Any
    instance may run it (a read can go to a replica); they share one PID namespace."""
    killed = []
    for inst in cluster.instances:
        with superuser_conn(inst) as direct:
            if scalar(direct, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)):
                killed.append(scalar(direct, "SELECT pg_terminate_backend(%s, 5000)", (pid,)))
    assert killed == [True], f"server session {pid} not found on any instance"


# --------------------------------------------------------------------------- psycopg (sync)


def test_psycopg_orm_round_trip(proxy: ProxyProcess, schema: str, pg_cluster: LocalCluster) -> None:
    engine = sync_engine(proxy, schema)
    try:
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            ursula = Author(
                name="Ursula", books=[Book(title="The Dispossessed"), Book(title="Lathe")]
            )
            session.add_all([ursula, Author(name="Stanislaw", books=[Book(title="Solaris")])])
            session.commit()
        with Session(engine) as session:
            session.add(Author(name="Never Saved", books=[Book(title="Draft")]))
            session.flush()  # the rows reach the server inside the transaction ...
            assert session.scalar(select(func.count()).select_from(Book)) == 4
            session.rollback()  # ... and are gone after the rollback
            assert session.scalar(select(func.count()).select_from(Author)) == 2
        with Session(engine) as session:
            author = session.scalars(select(Author).where(Author.name == "Ursula")).one()
            assert [b.title for b in author.books] == ["The Dispossessed", "Lathe"]  # lazy load
            authors = session.scalars(
                select(Author).options(selectinload(Author.books)).order_by(Author.name)
            ).all()
            assert [(a.name, len(a.books)) for a in authors] == [("Stanislaw", 1), ("Ursula", 2)]
            solaris = session.scalars(select(Book).where(Book.title == "Solaris")).one()
            assert solaris.author.name == "Stanislaw"
            solaris.title = "Solaris (1961)"
            session.commit()
    finally:
        engine.dispose()
    with primary_conn(pg_cluster) as direct:
        assert scalar(direct, f"SELECT count(*) FROM {schema}.book") == 3
        assert scalar(direct, f"SELECT title FROM {schema}.book WHERE title LIKE 'Solaris%'") == (
            "Solaris (1961)"
        )


def connects_expected(proxy: ProxyProcess) -> int:
    """Client connections SQLAlchemy opens when the server session behind its one pooled
    connection is killed: in session mode that client connection dies with it, so
    pre-ping opens a second; in transaction mode the proxy drops only the dead server
    connection (the client held none between transactions), and pre-ping passes."""
    return 2 if pool_mode(proxy) == "session" else 1


def wait_until_dropped(proxy: ProxyProcess, pid: int) -> None:
    """The proxy no longer lists server session ``pid`` (it noticed the kill)."""
    dsn = proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgrouter")
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as console:

        def dropped() -> bool:
            cur = console.execute("SHOW SERVERS")
            assert cur.description is not None
            column = [c.name for c in cur.description].index("remote_pid")
            return all(str(row[column]) != str(pid) for row in cur.fetchall())

        wait_for(dropped, 10, f"pgrouter to drop server session {pid}")


def test_psycopg_pool_pre_ping_replaces_a_dead_connection(
    proxy: ProxyProcess, schema: str, pg_cluster: LocalCluster
) -> None:
    engine = sync_engine(proxy, schema, pool_size=1, max_overflow=0, pool_pre_ping=True)
    connects: list[object] = []
    event.listen(engine.pool, "connect", lambda *_: connects.append(None))
    try:
        with engine.connect() as conn:
            first_pid = conn.scalar(text("SELECT pg_backend_pid()"))
        terminate(pg_cluster, first_pid)  # the server session behind the pooled connection
        wait_until_dropped(proxy, first_pid)
        with engine.connect() as conn:  # pre-ping notices and reconnects transparently
            second_pid = conn.scalar(text("SELECT pg_backend_pid()"))
            assert conn.scalar(text("SELECT 'after pre-ping'")) == "after pre-ping"
        assert second_pid != first_pid
        assert len(connects) == connects_expected(proxy)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- asyncpg (async)


def test_asyncpg_orm_round_trip(proxy: ProxyProcess, schema: str, pg_cluster: LocalCluster) -> None:
    async def main() -> None:
        engine = async_engine(proxy, schema)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            async with AsyncSession(engine) as session:
                session.add(
                    Author(name="Octavia", books=[Book(title="Kindred"), Book(title="Dawn")])
                )
                await session.commit()
            async with AsyncSession(engine) as session:
                session.add(Author(name="Rolled Back"))
                await session.flush()
                assert await session.scalar(select(func.count()).select_from(Author)) == 2
                await session.rollback()
                assert await session.scalar(select(func.count()).select_from(Author)) == 1
            async with AsyncSession(engine) as session:
                author = (
                    await session.scalars(
                        select(Author)
                        .options(selectinload(Author.books))
                        .where(Author.name == "Octavia")
                    )
                ).one()
                assert [b.title for b in author.books] == ["Kindred", "Dawn"]
                dawn = (await session.scalars(select(Book).where(Book.title == "Dawn"))).one()
                loaded = await session.get(Author, dawn.author_id)
                assert loaded is author  # identity map
                await session.delete(dawn)
                await session.commit()
        finally:
            await engine.dispose()

    asyncio.run(asyncio.wait_for(main(), 45))
    with primary_conn(pg_cluster) as direct:
        assert direct.execute(f"SELECT title FROM {schema}.book").fetchall() == [("Kindred",)]


def test_asyncpg_pool_pre_ping_replaces_a_dead_connection(
    proxy: ProxyProcess, schema: str, pg_cluster: LocalCluster
) -> None:
    async def main() -> None:
        engine = async_engine(proxy, schema, pool_size=1, max_overflow=0, pool_pre_ping=True)
        connects: list[object] = []
        event.listen(engine.sync_engine.pool, "connect", lambda *_: connects.append(None))
        try:
            async with engine.connect() as conn:
                first_pid = await conn.scalar(text("SELECT pg_backend_pid()"))
            await asyncio.to_thread(terminate, pg_cluster, first_pid)
            await asyncio.to_thread(wait_until_dropped, proxy, first_pid)
            async with engine.connect() as conn:
                second_pid = await conn.scalar(text("SELECT pg_backend_pid()"))
                assert await conn.scalar(text("SELECT 'after pre-ping'")) == "after pre-ping"
            assert second_pid != first_pid
            assert len(connects) == connects_expected(proxy)
        finally:
            await engine.dispose()

    asyncio.run(asyncio.wait_for(main(), 45))
