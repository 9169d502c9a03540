"""Where a running pgrouter's CPU time goes, from perf samples (on-CPU time only).

Owns: ``perf record -e cpu-clock --call-graph dwarf`` on one pid for a bounded time, and
the summary: the share of samples in the kernel (system calls and the loopback delivery
they do), in the event loop (uvloop), and, for user time, the innermost compiled pgrouter
function on each sample's stack, CPython runtime calls made from it included.
Must not touch: the load (start pgbench or a workload yourself while it samples).

py-spy (the pooling benchmark's profile part) samples by wall clock, so a process that
is preempted right after waking a peer is counted in its socket writes; perf's cpu-clock
counts only time on a CPU. Needs perf (Debian's linux-perf) and the right to trace the
pid (root, or kernel.perf_event_paranoid <= 1).

    python benchmarks/cpuprofile.py PID [--seconds 4] [--top 25]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^\s*[0-9a-f]+ (?P<sym>\S+?)(?:\+0x[0-9a-f]+)? \((?P<dso>.*)\)$")


def record(pid: int, seconds: float, out: Path) -> None:
    subprocess.run(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "--call-graph", "dwarf,16384",
         "-p", str(pid), "-o", str(out), "--", "sleep", str(seconds)],
        check=True, capture_output=True, timeout=seconds + 60,
    )  # fmt: skip


def samples(data: Path) -> list[list[tuple[str, str]]]:
    """Each sample's stack, innermost frame first: (symbol, library)."""
    text = subprocess.run(
        ["perf", "script", "-i", str(data)], check=True, capture_output=True, text=True,
        timeout=600,
    ).stdout  # fmt: skip
    stacks = []
    for block in text.split("\n\n"):
        frames = []
        for line in block.splitlines()[1:]:
            match = _FRAME.match(line)
            if match:
                frames.append((match["sym"], match["dso"].rsplit("/", 1)[-1]))
        # Inlined frames name no library: they belong to the next frame that does.
        fixed = []
        for index, (sym, dso) in enumerate(frames):
            if dso == "inlined":
                dso = next((d for _, d in frames[index + 1 :] if d != "inlined"), "?")
            fixed.append((sym, dso))
        if fixed:
            stacks.append(fixed)
    return stacks


def summarize(stacks: list[list[tuple[str, str]]], top: int) -> str:
    total = len(stacks)
    kernel = sum(1 for s in stacks if s[0][1].startswith("[kernel"))
    by_place: Counter[str] = Counter()
    owners: Counter[str] = Counter()
    for stack in stacks:
        dso = stack[0][1]
        if dso.startswith("[kernel"):
            continue
        if "__mypyc" in dso:
            by_place["compiled pgrouter code"] += 1
        elif "libpython" in dso:
            by_place["CPython runtime"] += 1
        elif "uvloop" in dso or dso.startswith("loop."):
            by_place["uvloop"] += 1
        else:
            by_place[dso] += 1
        owner = next((f for f, d in stack if "__mypyc" in d and f.startswith("CPyDef_")), None)
        owners[_python_name(owner) if owner else "(no compiled frame: event loop)"] += 1
    user = total - kernel
    lines = [f"{total} samples: kernel {100 * kernel / total:.1f}%, user {100 * user / total:.1f}%"]
    lines.append("user time by where the sample was:")
    lines += [f"  {100 * n / max(user, 1):5.1f}%  {name}" for name, n in by_place.most_common()]
    lines.append("user time by the innermost compiled function (CPython calls it made included):")
    lines += [f"  {100 * n / max(user, 1):5.1f}%  {name}" for name, n in owners.most_common(top)]
    return "\n".join(lines)


def _python_name(symbol: str) -> str:
    """``CPyDef_dispatch___Dispatch____pump`` -> ``dispatch: Dispatch._pump``."""
    body = symbol.split("_", 1)[1]
    module, _, rest = body.partition("___")
    cls, sep, method = rest.partition("___")
    return f"{module}: {cls}.{method}" if sep else f"{module}: {cls}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pid", type=int)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "perf.data"
        try:
            record(args.pid, args.seconds, data)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"perf record failed ({exc}); install linux-perf, run as root", file=sys.stderr)
            return 1
        print(summarize(samples(data), args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
