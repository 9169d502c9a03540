"""Command line: ``pgrouter serve | check | demo | --version``.

Owns: argument parsing, logging setup, choosing the event loop (uvloop when available),
and process signals for ``serve``.
Must not touch: proxy internals beyond starting and stopping a ``Proxy``.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import logging
import signal
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pgrouter_native import status as native_status
from router.config import ConfigError, Settings, load_settings
from router.workers import WorkerSlot, supervise

if TYPE_CHECKING:
    from policies.model import Policy

log = logging.getLogger("pgrouter")


def package_version() -> str:
    try:
        return version("pgrouter")
    except PackageNotFoundError:
        return "0+unknown"


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_loop(main: Any) -> Any:
    """Run a coroutine on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _masked(settings: Settings) -> dict[str, Any]:
    data: dict[str, Any] = settings.model_dump(mode="json")
    for entry in data["auth"]["users"].values():
        if entry.get("password"):
            entry["password"] = "********"
    for database in data["databases"].values():
        if database.get("password"):
            database["password"] = "********"
    return data


def _check_policy(settings: Settings) -> tuple[Policy | None, str | None]:
    """(the policy in force, None) or (None, the policy file's problems)."""
    from policies.loader import PolicyError, load_policy
    from policies.model import Policy

    path = settings.routing.policy_file
    if path is None:
        return Policy(), None
    try:
        return load_policy(path), None
    except PolicyError as exc:
        return None, str(exc)


def capture_warnings(settings: Settings, policy: Policy) -> list[str]:
    """Databases whose replicas serve read_your_writes routes while ``capture_write_lsn``
    is off: there a client's own writes are not tracked, so only tokens it presents and
    ``sticky_after_write`` keep its reads fresh."""
    if not settings.routing.enabled:
        return []
    warnings = []
    defaults = policy.defaults
    for name, database in settings.databases.items():
        if database.capture_write_lsn or not database.replicas:
            continue
        routes = []
        if defaults.consistency == "read_your_writes" and defaults.route != "primary":
            routes.append("the defaults")
        for rule in policy.rules:
            patterns = rule.match.database
            if patterns is not None and not any(
                fnmatch.fnmatchcase(name.lower(), p.lower()) for p in patterns
            ):
                continue
            consistency = rule.consistency or defaults.consistency
            if consistency == "read_your_writes" and (rule.route or defaults.route) != "primary":
                routes.append(f"rule {rule.name!r}")
        if not routes:
            continue
        sticky = defaults.sticky_after_write
        warnings.append(
            f"databases.{name}.capture_write_lsn is off, yet read_your_writes routes "
            f"({', '.join(routes)}) read from its replicas: a client's own writes are not "
            "tracked, so only a token it presents (pgrouter.min_lsn) and sticky_after_write "
            f"({f'{sticky:g}s' if sticky else 'off'}) keep its reads from being stale; turn "
            "capture_write_lsn on, or make those routes eventual if that is acceptable"
        )
    return warnings


async def serve(settings: Settings, config_path: Path, worker: WorkerSlot | None = None) -> None:
    """Run until SIGTERM / SIGINT (graceful; a second SIGINT is immediate).
    SIGHUP reloads the configuration."""
    from router.proxy import Proxy

    proxy = Proxy(settings, config_path, worker)
    await proxy.start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, proxy.request_shutdown)
    loop.add_signal_handler(signal.SIGINT, proxy.request_shutdown)
    loop.add_signal_handler(signal.SIGHUP, proxy.reload_logged)
    await proxy.wait_stopped()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pgrouter",
        description="PostgreSQL proxy: pooling, read/write splitting, no stale reads",
    )
    parser.add_argument("--version", action="version", version=f"pgrouter {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "run the proxy"), ("check", "validate and print the config")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("-c", "--config", type=Path, default=Path("pgrouter.yaml"))
        if name == "serve":  # set by the supervisor of ``workers`` processes
            cmd.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
            cmd.add_argument("--worker-dir", type=Path, help=argparse.SUPPRESS)
    route = sub.add_parser("route", help="explain where a statement would go (offline)")
    route.add_argument("-c", "--config", type=Path, default=Path("pgrouter.yaml"))
    route.add_argument("-d", "--database", help="database name (default: the first one)")
    route.add_argument("-U", "--user", default="", help="user name for policy matching")
    route.add_argument("--application-name", default="")
    route.add_argument("sql", help="the statement")
    demo = sub.add_parser("demo", help="start a local primary and replica with pgrouter in front")
    demo.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help="how long the workload runs; a third each: normal, replay paused, resumed",
    )
    demo.add_argument("--port", type=int, default=6432, help="pgrouter's port (0: any free port)")
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="after the workload, keep everything up for psql until Ctrl-C",
    )
    args = parser.parse_args(argv)

    if args.command == "demo":
        from router.demo import run_demo

        setup_logging("warning")
        demo_run = run_demo(seconds=args.seconds, port=args.port, keep_running=args.keep_running)
        return int(run_loop(demo_run))
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"pgrouter: {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        policy, policy_error = _check_policy(settings)
        if policy is None:
            print(f"pgrouter: {policy_error}", file=sys.stderr)
            return 2
        print(yaml.safe_dump(_masked(settings), sort_keys=False), end="")
        for warning in capture_warnings(settings, policy):
            print(f"pgrouter: warning: {warning}", file=sys.stderr)
        print(f"# {args.config}: OK", file=sys.stderr)
        return 0
    if args.command == "route":
        from router.explain import explain_offline

        print(explain_offline(settings, args.sql, args.database, args.user, args.application_name))
        return 0
    setup_logging(settings.log_level)
    worker = None
    if args.worker_index is not None and args.worker_dir is not None:
        worker = WorkerSlot(args.worker_index, args.worker_dir)
    elif settings.workers > 1:
        log.info("pgrouter %s starting %d workers with %s", package_version(), settings.workers,
                 args.config)  # fmt: skip
        return supervise(settings.workers, args.config)
    log.info("pgrouter %s starting with %s (%s)", package_version(), args.config, native_status())
    try:
        run_loop(serve(settings, args.config, worker))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
