"""Entry point of the benchmarks: ``.venv/bin/python benchmarks/run.py [options]``.

Owns: the command line and choosing which suite runs. Must not touch: measuring (each
suite's module does that). Suites: ``pooling`` (benchmarks/pooling.py); the parts ``routing``
(benchmarks/routing.py) and ``consistency`` (benchmarks/consistency.py) run their own
clusters and are chosen with ``--parts``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import consistency, pooling, routing  # noqa: E402

SUITES = ("pooling",)
EXTRA_PARTS = ("routing", "consistency")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Start PostgreSQL, PgBouncer and pgrouter locally and benchmark them.",
    )
    parser.add_argument("--only", choices=SUITES, default="pooling", help="suite to run")
    parser.add_argument("--seconds", type=int, default=10, help="pgbench -T per run (10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--pool-size", type=int, default=20, help="server pool size (20)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="pgrouter worker processes for pgbench runs (1); the pool size is split "
        "between them, so the servers see the same number of connections",
    )
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i -s (10)")
    parser.add_argument(
        "--idle-clients", type=int, default=5000, help="idle clients for the memory test (5000)"
    )
    parser.add_argument(
        "--connect-cycles", type=int, default=1000, help="connect/SELECT 1/close cycles (1000)"
    )
    parser.add_argument("--profile-seconds", type=int, default=10, help="py-spy sampling time (10)")
    parser.add_argument(
        "--parts",
        default=",".join(pooling.PARTS),
        help=f"comma-separated subset of {','.join(pooling.PARTS + EXTRA_PARTS)} "
        f"(default: {','.join(pooling.PARTS)})",
    )
    parser.add_argument(
        "--rw-clients", type=int, default=16, help="consistency: read-after-write clients (16)"
    )
    parser.add_argument(
        "--wait-timeout-ms",
        type=int,
        default=200,
        help="consistency: wait_timeout of the on_stale: wait policy (200)",
    )
    parser.add_argument(
        "--pgrouter-source",
        choices=("worktree", "head"),
        default="worktree",
        help="run pgrouter from a copy of the working tree taken at start (default) or from "
        "git HEAD; either way later edits cannot affect a run in progress",
    )
    parser.add_argument(
        "--with-floor",
        action="store_true",
        help="pooling: add benchmarks/floor.py (the least a Python pooler can do) to the "
        "pgbench rounds as a fourth target",
    )
    parser.add_argument(
        "--report-only",
        type=Path,
        metavar="JSON",
        help="measure nothing: re-render the tables and RESULTS.md from a saved "
        "benchmarks/out/pooling-*.json",
    )
    parser.add_argument(
        "--no-results",
        action="store_true",
        help="do not rewrite benchmarks/RESULTS.md (JSON still goes to benchmarks/out/)",
    )
    args = parser.parse_args(argv)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = set(parts) - set(pooling.PARTS) - set(EXTRA_PARTS)
    if unknown:
        parser.error(
            f"unknown --parts {sorted(unknown)}; choose from {pooling.PARTS + EXTRA_PARTS}"
        )
    if min(args.seconds, args.rounds, args.pool_size, args.scale, args.workers) < 1:
        parser.error("--seconds, --rounds, --pool-size and --scale must be >= 1")
    args.parts = parts
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = None if args.no_results else REPO_ROOT / "benchmarks" / "RESULTS.md"
    if args.report_only is not None:
        return pooling.report_only(args.report_only, results)
    status = 0
    if "routing" in args.parts:
        status |= routing.main(
            routing.Options(
                seconds=args.seconds,
                rounds=args.rounds,
                pool_size=args.pool_size,
                workers=args.workers,
                scale=args.scale,
                pgrouter_source=args.pgrouter_source,
                results_path=results,
            )
        )
    if "consistency" in args.parts:
        status |= consistency.main(
            consistency.Options(
                seconds=args.seconds,
                rounds=args.rounds,
                pool_size=args.pool_size,
                clients=args.rw_clients,
                wait_timeout_ms=args.wait_timeout_ms,
                pgrouter_source=args.pgrouter_source,
                results_path=results,
            )
        )
    pooling_parts = tuple(p for p in args.parts if p in pooling.PARTS)
    if not pooling_parts:
        return status
    opts = pooling.Options(
        seconds=args.seconds,
        rounds=args.rounds,
        pool_size=args.pool_size,
        workers=args.workers,
        scale=args.scale,
        idle_clients=args.idle_clients,
        connect_cycles=args.connect_cycles,
        profile_seconds=args.profile_seconds,
        parts=pooling_parts,
        floor=args.with_floor,
        pgrouter_source=args.pgrouter_source,
        results_path=results,
    )
    return status | pooling.main(opts)


if __name__ == "__main__":
    sys.exit(main())
