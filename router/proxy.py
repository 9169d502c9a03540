"""The running proxy: listener, client registry, pools, cancel routing, janitor.

Owns: accepting client connections (and refusing those over ``max_client_conn``), the map
from the proxy's BackendKeyData to client sessions (for CancelRequest), creating pools on
demand per (database, user, backend), looking up users (config or ``auth_query``), and the
periodic maintenance of pools.
Must not touch: protocol details of a session (client.py) or of a server (server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from pathlib import Path
from typing import cast

from policies.loader import PolicyError, PolicyFile
from policies.match import CompiledPolicy, compile_policy
from policies.model import Policy
from protocol.startup import CancelRequest
from router.auth import UserSecret
from router.backends import Backend, ServerCredentials, backends_of
from router.classifier import Classifier, FunctionCatalog
from router.client import ClientSession, State
from router.config import ConfigError, Settings, load_settings
from router.director import Director
from router.errors import IdleTransactionTimeout, ProxyError, ShuttingDown, TooManyClients
from router.metrics import start_metrics
from router.monitor import Monitor
from router.pool import ConnectionBudget, Pool, PoolKey
from router.tls import client_side_context, server_side_context
from router.workers import WorkerSlot, owner_of

log = logging.getLogger("pgrouter")

JANITOR_INTERVAL = 1.0


class Proxy:
    def __init__(
        self, settings: Settings, config_path: Path | None = None, worker: WorkerSlot | None = None
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.worker = worker  # None: the only process
        self._cancel_server: asyncio.AbstractServer | None = None
        self._cancels: set[asyncio.Task[None]] = set()
        self.paused_databases: set[str] = set()
        self.shutting_down = False
        self._stopped = asyncio.Event()
        self._force = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None
        self.client_ssl = client_side_context(settings.tls)
        self.server_ssl = server_side_context(settings.tls)
        self.clients: set[ClientSession] = set()
        self.by_key: dict[tuple[int, int], ClientSession] = {}
        self.pools: dict[PoolKey, Pool] = {}
        self.budgets: dict[tuple[str, str], ConnectionBudget] = {}
        # Credentials learned from clients' SCRAM proofs, for pass-through to servers.
        self.learned: dict[str, ServerCredentials] = {}
        self._next_pid = 0
        self._catalog_version = 0
        self.classifier = Classifier(self._catalog(frozenset()))
        self.policy_file: PolicyFile | None = None
        self.policy: CompiledPolicy = compile_policy(Policy())
        self._load_policy()
        self.directors: dict[str, Director] = {
            name: self._director(name) for name in settings.databases
        }
        self._server: asyncio.AbstractServer | None = None
        self._janitor: asyncio.Task[None] | None = None
        self.started_at = time.time()

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if any(self.routes_reads(name) for name in self.settings.databases):
            # Parsing will be needed: load sqlglot now, not inside the event loop on the
            # first read (a stall that would also age the monitor's probes).
            import router.querytree  # noqa: F401
        loop = asyncio.get_running_loop()
        listen = self.settings.listen
        # Before the listener: whoever sees pgrouter accept connections can scrape it.
        self.metrics_server = await start_metrics(self)
        worker = self.worker
        self._server = await loop.create_server(
            lambda: cast(asyncio.Protocol, ClientSession(self)),
            listen.host,
            listen.port,
            reuse_address=True,
            reuse_port=worker is not None,  # the workers share the port
            backlog=1024,
        )
        if worker is not None:  # where sibling workers pass on CancelRequests for our keys
            path = worker.socket_path(worker.index)
            path.unlink(missing_ok=True)
            self._cancel_server = await loop.create_unix_server(
                lambda: cast(asyncio.Protocol, ClientSession(self)), str(path)
            )
        self._janitor = loop.create_task(self._maintain())
        for director in self.directors.values():
            director.monitor.start()
        log.info("listening on %s:%d", listen.host, self.port)

    @property
    def port(self) -> int:
        # uvloop's server is not an asyncio.Server, but has the same ``sockets``.
        sockets = getattr(self._server, "sockets", None)
        assert sockets, "the proxy is not listening"
        return int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Close everything now: clients get 57P01, server connections are terminated."""
        if self._server is not None:
            self._server.close()
        if self._cancel_server is not None:
            self._cancel_server.close()
        if self._janitor is not None:
            self._janitor.cancel()
        for director in self.directors.values():
            director.monitor.stop()
        await self.metrics_server.close()
        for client in list(self.clients):
            client.fail(ShuttingDown("pgrouter is shutting down", hint="reconnect shortly"))
        for pool in self.pools.values():
            pool.close()
        await asyncio.sleep(0)
        self._stopped.set()

    def request_shutdown(self, *, force: bool = False) -> None:
        """Graceful shutdown: stop accepting, let transactions finish (up to
        ``shutdown_timeout``), then close. A second request, or ``force``, is immediate."""
        if self._shutdown_task is not None or force:
            self._force.set()
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(self._drain())

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _drain(self) -> None:
        self.shutting_down = True
        if self._server is not None:
            self._server.close()
        log.info(
            "shutting down: waiting up to %gs for transactions", self.settings.shutdown_timeout
        )
        deadline = time.monotonic() + self.settings.shutdown_timeout
        while self.clients and time.monotonic() < deadline and not self._force.is_set():
            for client in list(self.clients):
                if _between_transactions(client):
                    client.fail(ShuttingDown("pgrouter is shutting down", hint="reconnect"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._force.wait(), 0.05)
        await self.stop()

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(JANITOR_INTERVAL)
            now = time.monotonic()
            for pool in list(self.pools.values()):
                try:
                    pool.maintain(now)
                except Exception:
                    log.exception("pool %s: maintenance failed", pool.key)
            self._end_idle_transactions(now)
            self._check_policy()

    def _end_idle_transactions(self, now: float) -> None:
        for client in list(self.clients):
            server, pool, since = client.server, client.pool, client.last_request_at
            if server is None or pool is None or since is None or client.tx_status == "I":
                continue
            limit = pool.settings.idle_transaction_timeout
            if limit > 0 and server.tracker.idle and now - since > limit:
                client.fail(
                    IdleTransactionTimeout(
                        f"idle_transaction_timeout: transaction idle for more than {limit:g}s",
                        hint="commit or roll back sooner, or raise idle_transaction_timeout",
                    )
                )

    # ---------------------------------------------------------------- routing

    def _director(self, database: str) -> Director:
        settings = self.settings
        backends = backends_of(database, settings.databases[database])
        login = settings.monitor_credentials()
        credentials = None
        if login is not None:
            user, password = login
            credentials = UserSecret.from_stored(user, password).server_credentials()
        monitor = Monitor(
            database,
            backends,
            credentials,
            interval=settings.monitor.probe_interval,
            timeout=settings.monitor.probe_timeout,
            max_backoff=settings.monitor.max_backoff,
            tls=settings.tls,
            ssl_context=self.server_ssl,
            function_refresh=settings.routing.function_refresh,
            on_functions=self._volatile_functions,
        )
        return Director(
            database,
            backends,
            monitor,
            primary_reads_weight=settings.routing.primary_reads_weight,
        )

    def routes_reads(self, database: str) -> bool:
        """Read/write splitting applies: enabled, and the database has replicas."""
        return self.settings.routing.enabled and bool(self.settings.databases[database].replicas)

    def _catalog(self, volatile: frozenset[str]) -> FunctionCatalog:
        routing = self.settings.routing
        return FunctionCatalog(
            volatile=volatile,
            write_functions=frozenset(f.lower() for f in routing.write_functions),
            read_functions=frozenset(f.lower() for f in routing.read_functions),
            version=self._catalog_version + 1,
        )

    def _volatile_functions(self, names: frozenset[str]) -> None:
        """From a monitor: user functions marked VOLATILE on the primary."""
        current = self.classifier.catalog
        if names != current.volatile:
            catalog = self._catalog(names | current.volatile)
            self._catalog_version = catalog.version
            self.classifier.set_catalog(catalog)
            log.info("%d volatile user functions are treated as writes", len(catalog.volatile))

    def _load_policy(self) -> None:
        path = self.settings.routing.policy_file
        if path is None:
            self.policy_file = None
            self.policy = compile_policy(Policy())
            return
        if self.policy_file is None or self.policy_file.path != path:
            self.policy_file = PolicyFile(path)  # raises PolicyError for a bad file
        self.policy = compile_policy(self.policy_file.current)

    def _check_policy(self, force: bool = False) -> None:
        """Hot reload: a changed policy file is read; a bad one is reported and ignored."""
        if self.policy_file is None:
            return
        try:
            changed = self.policy_file.check(force=force)
        except PolicyError as exc:
            log.error("policy file rejected, keeping the running policy: %s", exc)
            if force:
                raise
            return
        if changed is not None:
            self.policy = compile_policy(changed)
            rules = len(changed.rules)
            log.info("policy reloaded from %s (%d rules)", self.policy_file.path, rules)

    # ---------------------------------------------------------------- admin controls

    def reload(self) -> str:
        """Re-read the config file; ConfigError leaves the running config in place.

        Pools whose backend changed retire their connections (idle ones now, busy ones
        on release); pool settings apply to the next acquire; clients stay connected.
        """
        if self.config_path is None:
            raise ConfigError("pgrouter was started without a config file; nothing to reload")
        new = load_settings(self.config_path)
        if new.listen != self.settings.listen:
            log.warning("listen: settings changed; they take effect after a restart")
        changes: list[str] = []
        for key, pool in self.pools.items():
            database = new.databases.get(key.database)
            backend = None
            if database is not None:
                backend = next(
                    (b for b in backends_of(key.database, database) if b.name == key.backend), None
                )
            if backend is None or backend != pool.backend:
                pool.retire_all()
                changes.append(f"{key}: backend changed, connections retired")
                if backend is not None:
                    pool.backend = backend
            if database is not None:
                settings = new.pool_for(key.database, key.user)
                if settings != pool.settings:
                    pool.settings = settings
                    pool.budget.limit = settings.max_db_connections
                    changes.append(f"{key}: pool settings changed")
        old_policy_path = self.settings.routing.policy_file
        self.settings = new
        self.client_ssl = client_side_context(new.tls)
        self.server_ssl = server_side_context(new.tls)
        if new.routing.policy_file != old_policy_path:
            self._load_policy()
        else:
            self._check_policy(force=True)
        catalog = self._catalog(self.classifier.catalog.volatile)
        self._catalog_version = catalog.version
        self.classifier.set_catalog(catalog)
        changes += self._refresh_directors()
        for pool in self.pools.values():
            pool.set_tls(new.tls, self.server_ssl)
            pool.kick()
        summary = "; ".join(changes) or "no pool changes"
        log.info("configuration reloaded from %s: %s", self.config_path, summary)
        return summary

    def _refresh_directors(self) -> list[str]:
        """New databases get a director; changed server lists get a new monitor."""
        changes = []
        for name in self.settings.databases:
            backends = backends_of(name, self.settings.databases[name])
            current = self.directors.get(name)
            if current is not None and list(current.backends.values()) == backends:
                continue
            if current is not None:
                current.monitor.stop()
            director = self._director(name)
            self.directors[name] = director
            if self._server is not None:
                director.monitor.start()
            changes.append(f"{name}: servers {'changed' if current else 'added'}")
        return changes

    def reload_logged(self) -> None:
        """SIGHUP: reload, and log (rather than raise) a bad file."""
        try:
            self.reload()
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)

    def _pools_of(self, database: str | None) -> list[Pool]:
        return [p for p in self.pools.values() if database is None or p.key.database == database]

    async def pause(self, database: str | None) -> None:
        """Stop handing out server connections, then wait until none is in use."""
        names = [database] if database is not None else list(self.settings.databases)
        self.paused_databases.update(names)
        pools = self._pools_of(database)
        for pool in pools:
            pool.pause()
        while any(pool.active or pool.opening for pool in pools):
            await asyncio.sleep(0.05)

    def resume(self, database: str | None) -> None:
        if database is None:
            self.paused_databases.clear()
        else:
            self.paused_databases.discard(database)
        for pool in self._pools_of(database):
            pool.resume()

    def shutdown(self) -> None:
        self.request_shutdown()

    # ---------------------------------------------------------------- clients

    def admit(self, client: ClientSession) -> ProxyError | None:
        """Count a new connection; the error it must get if it is over the limit."""
        self.clients.add(client)
        limit = self.settings.listen.max_client_conn
        if len(self.clients) > limit:
            return TooManyClients(
                f"no more connections allowed (max_client_conn is {limit})",
                hint="raise listen.max_client_conn or use fewer client connections",
            )
        return None

    def register(self, client: ClientSession) -> tuple[int, int]:
        """Give a logged-in client its BackendKeyData, unique within this process."""
        self._next_pid += 1
        pid = self._next_pid if self.worker is None else self.worker.backend_pid(self._next_pid)
        key = (pid, secrets.randbits(32) - 2**31)
        self.by_key[key] = client
        return key

    def forget(self, client: ClientSession) -> None:
        self.clients.discard(client)
        if self.by_key.get(client.key) is client:
            del self.by_key[client.key]

    def cancel_soon(self, pid: int, secret: int) -> None:
        """``cancel`` in a task of its own, kept until it is done."""
        task = asyncio.get_running_loop().create_task(self.cancel(pid, secret))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def cancel(self, pid: int, secret: int) -> None:
        """Forward a CancelRequest to the server running that client's query, if any;
        a key another worker gave out goes to that worker."""
        worker = self.worker
        if worker is not None and owner_of(pid) != worker.index:
            await self._cancel_elsewhere(worker, pid, secret)
            return
        client = self.by_key.get((pid, secret))
        server = None if client is None else client.server
        if server is None:
            return
        backend = server.backend
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(backend.host, backend.port),
                self.settings.pool.server_connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            log.info("cancel for %r could not reach %s: %s", client, backend.label, exc)
            return
        writer.write(CancelRequest(server.pid, server.secret).encode())
        await writer.drain()
        writer.close()
        log.info("forwarded cancel for %r to %s", client, backend.label)

    async def _cancel_elsewhere(self, worker: WorkerSlot, pid: int, secret: int) -> None:
        owner = owner_of(pid)
        try:
            async with asyncio.timeout(1.0):
                reader, writer = await asyncio.open_unix_connection(
                    str(worker.socket_path(owner))
                )
                writer.write(CancelRequest(pid, secret).encode())
                # As libpq does: wait for the other side to close, so the request is
                # read before our end goes away.
                await reader.read()
                writer.close()
        except (OSError, TimeoutError) as exc:
            log.info("cancel for worker %d not delivered: %s", owner, exc)
            return
        log.info("passed a cancel on to worker %d", owner)

    # ---------------------------------------------------------------- users and pools

    async def user_secret(self, database: str, user: str) -> UserSecret | None:
        """The user's secret from config, else from ``auth_query`` on the primary."""
        auth = self.settings.auth
        entry = auth.users.get(user)
        if entry is not None:
            return UserSecret.from_settings(user, entry)
        if auth.auth_user is None or database not in self.settings.databases:
            return None
        pool = self._pool(database, auth.auth_user, self._backends(database)[0])
        server = await pool.acquire()
        clean = False
        try:
            result = await server.query(auth.auth_query, (user,))
            clean = result.error is None
        finally:
            pool.release(server, reusable=clean, reset=False)
        if result.error is not None:
            log.warning("auth_query failed: %s %s", result.error.sqlstate, result.error.message)
            return None
        if not result.rows:
            return None
        stored = result.rows[0][1]
        return UserSecret.from_stored(user, None if stored is None else stored.decode())

    def learn_credentials(self, user: str, credentials: object) -> None:
        """Keep a logged-in client's credentials (SCRAM keys for pass-through)."""
        if isinstance(credentials, ServerCredentials) and credentials.usable():
            self.learned[user] = credentials

    def pool_on(self, database: str, user: str, backend: str) -> Pool:
        """The pool of ``backend`` (by name) for a client of ``database`` as ``user``."""
        for candidate in self._backends(database):
            if candidate.name == backend:
                return self._pool(database, self._server_user(database, user), candidate)
        raise KeyError(f"database {database} has no backend {backend}")

    def _server_user(self, database: str, user: str) -> str:
        return self.settings.databases[database].user or user

    def _backends(self, database: str) -> list[Backend]:
        return backends_of(database, self.settings.databases[database])

    def _credentials_for(self, database: str, user: str) -> ServerCredentials:
        forced = self.settings.databases[database]
        if forced.user is not None and forced.user == user:
            return UserSecret.from_stored(user, forced.password).server_credentials()
        learned = self.learned.get(user)
        if learned is not None:
            return learned
        entry = self.settings.auth.users.get(user)
        if entry is not None:
            return UserSecret.from_settings(user, entry).server_credentials()
        return ServerCredentials(user)

    def _pool(self, database: str, user: str, backend: Backend) -> Pool:
        key = PoolKey(database, user, backend.name)
        pool = self.pools.get(key)
        if pool is None:
            settings = self.settings.pool_for(database, user)
            budget = self.budgets.get((database, backend.name))
            if budget is None:
                budget = ConnectionBudget(settings.max_db_connections)
                self.budgets[(database, backend.name)] = budget
            pool = Pool(
                key,
                backend,
                settings,
                credentials=lambda: self._credentials_for(database, user),
                tls=self.settings.tls,
                ssl_context=self.server_ssl,
                budget=budget,
                max_message_size=self.settings.listen.max_message_size,
            )
            if database in self.paused_databases:
                pool.pause()
            self.pools[key] = pool
        return pool


def _between_transactions(client: ClientSession) -> bool:
    """Safe to disconnect during a graceful shutdown: logged in, no transaction open (not
    even one whose BEGIN the proxy answered) and nothing owed by a server (in any pool
    mode, pinned or not)."""
    if client.state is not State.ACTIVE or client._attaching is not None:
        return client.state in (State.STARTUP, State.LOGIN)
    server = client.server
    return client.tx_status == "I" and (server is None or server.tracker.idle)
