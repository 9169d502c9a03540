"""Classification cost per statement: cached and uncached, simple and complex.

Measures ``router.classifier.Classifier.classify`` with ``time.perf_counter_ns`` over many
iterations; each figure is the median of several repeats, in microseconds per statement.

- cached, same text: the statement was seen before (first-level dict keyed by text);
  what extended-protocol clients (``$n`` parameters) and prepared statements cost.
- cached, new literals: the same shape with a different literal every time (text miss,
  fingerprint hit); what simple-protocol clients that inline literals cost.
- uncached: a classifier without a cache, so every call splits, gates and parses.
- uncached, pure-Python sqlglot: the same in a subprocess that hides sqlglot's compiled
  modules (sqlglot[c] / sqlglotc), to show what the compiled build buys.

Usage: python benchmarks/classify.py [--write] [--repeats N]
``--write`` replaces the "Classification" section of benchmarks/RESULTS.md (between the
``<!-- classify:start -->`` / ``<!-- classify:end -->`` markers), appending it if absent.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from importlib.metadata import version
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- classify:start -->", "<!-- classify:end -->"
TARGET_US = 5.0

SIMPLE = "SELECT * FROM t WHERE id = $1"
COMPLEX = """WITH recent AS (
    SELECT o.customer_id, o.id, o.total,
           row_number() OVER (PARTITION BY o.customer_id ORDER BY o.created_at DESC) AS rn
    FROM orders o
    WHERE o.created_at > now() - interval '30 days' AND o.status <> 'cancelled'
), top AS (
    SELECT customer_id, sum(total) AS spent
    FROM recent WHERE rn <= 5
    GROUP BY customer_id HAVING sum(total) > 100
)
SELECT c.id, c.name, t.spent,
       (SELECT count(*) FROM tickets k WHERE k.customer_id = c.id AND k.status = 'open') AS open,
       rank() OVER (ORDER BY t.spent DESC) AS spend_rank,
       coalesce(a.city, 'n/a') AS city, c.profile->>'tier' AS tier
FROM customers c
JOIN top t ON t.customer_id = c.id
LEFT JOIN LATERAL (
    SELECT city FROM addresses
    WHERE addresses.customer_id = c.id ORDER BY is_primary DESC LIMIT 1
) a ON true
WHERE c.id IN (SELECT customer_id FROM vip WHERE since > $2) AND c.region = $1
ORDER BY t.spent DESC
LIMIT 50"""


def _simple_variant(i: int) -> str:
    return f"SELECT * FROM t WHERE id = {i}"


def _complex_variant(i: int) -> str:
    return COMPLEX.replace("$1", f"'region-{i}'").replace("$2", f"'2024-01-{i % 28 + 1:02d}'")


STATEMENTS: dict[str, tuple[str, Callable[[int], str]]] = {
    "simple": (SIMPLE, _simple_variant),
    "complex": (COMPLEX, _complex_variant),
}


class _PurePythonSqlglot(importlib.abc.MetaPathFinder):
    """Import sqlglot from its .py sources, ignoring the compiled modules beside them."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "sqlglot" and not fullname.startswith("sqlglot."):
            return None
        loader = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
        for entry in path or sys.path:
            spec = importlib.machinery.FileFinder(entry or ".", loader).find_spec(fullname)
            if spec is not None:
                return spec
        return None


def _per_call_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean cost of one call, in microseconds."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter_ns() - start) / calls / 1000)
    return statistics.median(samples)


def _over_texts_us(classify: Callable[[str], object], texts: list[str], repeats: int) -> float:
    """Median over ``repeats`` of the mean cost of classifying each of ``texts`` once."""
    samples = []
    for r in range(repeats):
        batch = texts[r * len(texts) // repeats : (r + 1) * len(texts) // repeats]
        start = time.perf_counter_ns()
        for text in batch:
            classify(text)
        samples.append((time.perf_counter_ns() - start) / len(batch) / 1000)
    return statistics.median(samples)


def measure(repeats: int, uncached_only: bool = False) -> dict[str, dict[str, float]]:
    return {
        name: _measure_one(sql, variant, repeats, uncached_only, calls=400 // scale)
        for (name, (sql, variant)), scale in zip(STATEMENTS.items(), (1, 10), strict=True)
    }


def _measure_one(
    sql: str, variant: Callable[[int], str], repeats: int, uncached_only: bool, calls: int
) -> dict[str, float]:
    from router.classifier import Classifier  # after the pure-Python hook, if any

    uncached = Classifier(cache_size=0)
    uncached.classify(sql)  # warm imports and sqlglot's lazy tables
    row = {"uncached": _per_call_us(partial(uncached.classify, sql), calls, repeats)}
    if uncached_only:
        return row
    cached = Classifier()
    cached.classify(sql)
    row["same_text"] = _per_call_us(partial(cached.classify, sql), 200_000, repeats)
    texts = [variant(i) for i in range(calls * 20 * repeats)]
    shapes = Classifier(cache_size=1000)  # the texts outnumber it: every text is new
    shapes.classify(texts[0])
    row["new_literals"] = _over_texts_us(shapes.classify, texts, repeats)
    misses = shapes.cache_info()[1]
    assert misses == 1, f"variants of {sql[:30]!r} should share one fingerprint ({misses} misses)"
    return row


def _pure_python_uncached(repeats: int) -> dict[str, float] | None:
    argv = [sys.executable, __file__, "--pure-python", "--repeats", str(repeats)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        print(f"pure-Python run failed:\n{proc.stderr}", file=sys.stderr)
        return None
    data: dict[str, float] = json.loads(proc.stdout)
    return data


def render(results: dict[str, dict[str, float]], pure: dict[str, float] | None) -> str:
    from router.querytree import SQLGLOT_COMPILED

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.2f}"

    lines = [
        "| statement | cached, same text | cached, new literals | uncached | "
        "uncached, pure-Python sqlglot |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        lines.append(
            f"| {name} | {fmt(row['same_text'])} | {fmt(row['new_literals'])} | "
            f"{fmt(row['uncached'])} | {fmt(pure.get(name) if pure else None)} |"
        )
    same_text = max(r["same_text"] for r in results.values())
    new_literals = max(r["new_literals"] for r in results.values())
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1

    def verdict(value: float) -> str:
        return f"{'met' if value < TARGET_US else 'NOT met'} ({value:.2f} µs at worst)"

    lines += [
        "",
        "Microseconds per statement; each figure is the median of the repeats. Target: a "
        f"cached classification under {TARGET_US:g} µs. Same text (the first-level cache): "
        f"{verdict(same_text)}. New literals (text miss, fingerprint hit: fingerprinting "
        f"is the cost): {verdict(new_literals)}.",
        f"Python {platform.python_version()}, sqlglot {version('sqlglot')}, compiled build "
        f"(sqlglotc) {'active' if SQLGLOT_COMPILED else 'NOT active'}, {platform.machine()}, "
        f"load average {load:.1f} on {cpus} CPUs while measuring, {time.strftime('%Y-%m-%d')}.",
    ]
    return "\n".join(lines)


def write_section(table: str) -> None:
    command = "python benchmarks/classify.py --write"
    body = f"{START}\n## Classification\n\nMeasured with `{command}`.\n\n{table}\n{END}"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + body + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    RESULTS.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pure-python", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.pure_python:
        sys.meta_path.insert(0, _PurePythonSqlglot())
        rows = measure(args.repeats, uncached_only=True)
        print(json.dumps({name: row["uncached"] for name, row in rows.items()}))
        return 0
    results = measure(args.repeats)
    table = render(results, _pure_python_uncached(args.repeats))
    print(table)
    if args.write:
        write_section(table)
        print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
