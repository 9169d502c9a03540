"""Sampling pgrouter with py-spy and summarizing the collapsed stacks.

Owns: running ``py-spy record --format raw`` against a pid for a bounded time, and turning
its collapsed stacks ("frame;frame;... count") into per-function self and inclusive
sample counts.
Must not touch: what load runs while sampling (pooling.py starts pgbench around it).

A function is named ``func (path)`` with the line number dropped, so every line of one
function adds up. Paths are shortened: the repository root and site-packages prefixes are
removed. Self time is the leaf frame of each sample; inclusive time counts a function
once per sample however many times it appears in that stack (recursion).

The frames every sample shares (runpy, ``router/__main__``, ``cli.main``, ``uvloop.run``,
``asyncio.Runner.run``) are cut off. A sample whose deepest Python frame is the runner
itself was inside uvloop's C code (epoll, socket reads, callback dispatch) with no
Python callback running; it is counted as EVENT_LOOP. Stacks rooted elsewhere are
coroutines resumed by a task step (C code in asyncio/uvloop), kept as they are.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks.targets import REPO_ROOT
from pgrouter_native import COMPILED

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::\d+)?\)$")
_SITE = re.compile(r"^.*/(?:site|dist)-packages/")
_STDLIB = re.compile(r"^.*/lib/python3\.\d+/")
_ENTRY = ("Runner.run (", "run (uvloop/", "run_until_complete (")
EVENT_LOOP = "[uvloop C code: poll, socket reads, callback dispatch]"


LIBC = "[libc: system calls (read, write, epoll), clock]"
CPYTHON = "[CPython runtime: objects, calls, dicts, allocation]"
MYPYC_RUNTIME = "[mypyc runtime helpers]"
SOCKET_WRITES = "socket writes: ClientSession.send + ServerConnection.send (transport.write)"
_WRITERS = ("ClientSession.send (", "ServerConnection.send (")


@dataclass
class Profile:
    samples: int
    self_counts: Counter[str]
    inclusive_counts: Counter[str]
    file_counts: Counter[str]
    raw_path: Path
    rate_hz: int
    seconds: int


def find_pyspy() -> str:
    for candidate in (REPO_ROOT / ".venv" / "bin" / "py-spy", shutil.which("py-spy")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy")


def pyspy_version() -> str:
    """For the report; "not installed" rather than an error (only the profile part needs it)."""
    try:
        pyspy = find_pyspy()
    except RuntimeError:
        return "not installed"
    out = subprocess.run(
        [pyspy, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    return out.strip() or "unknown"


def start_record(pid: int, out: Path, seconds: int, rate_hz: int) -> subprocess.Popen[str]:
    # Blocking mode (pgrouter is paused for each sample): --nonblocking gave torn stacks.
    # --native: the compiled modules (pgrouter_native) are C frames to py-spy.
    argv = [find_pyspy(), "record", "--pid", str(pid), "--duration", str(seconds), "--native"]
    argv += ["--rate", str(rate_hz), "--format", "raw", "--output", str(out)]
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish_record(proc: subprocess.Popen[str], seconds: int) -> str:
    try:
        out, _ = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    if proc.returncode != 0:
        raise RuntimeError(f"py-spy failed (exit {proc.returncode}): {out.strip()[-800:]}")
    return out


def short_path(path: str) -> str:
    root = str(REPO_ROOT) + "/"
    if path.startswith(root):
        return path[len(root) :]
    path = _SITE.sub("", path)
    return _STDLIB.sub("<stdlib>/", path)


def frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    func, path = match["func"], match["path"]
    if func.startswith(("CPyDef_", "CPyPy_")):
        return compiled_name(func)
    if path.endswith((".c", ".h", "]")) or ".so" in path or path == "?":
        return native_bucket(func, path)
    return f"{func} ({short_path(path)})"


# The compiled modules by short name (mypyc names C functions after the module's last
# component): "dispatch" -> "router/dispatch.py".
_COMPILED_PATHS = {Path(p).stem: p for p in COMPILED}
_UVLOOP_SOURCES = ("loop.c", "core.c", "linux.c", "stream.c", "uv-common.c", "timer.c")


def compiled_name(func: str) -> str:
    """``CPyDef_dispatch___Dispatch____pump`` -> ``Dispatch._pump (router/dispatch.py)``."""
    body = func.split("_", 1)[1]
    module, _, rest = body.partition("___")
    path = _COMPILED_PATHS.get(module, module)
    cls, sep, method = rest.partition("___")
    name = f"{cls}.{method}" if sep else cls
    return f"{name} ({path})"


def native_bucket(func: str, path: str) -> str:
    """C code outside the compiled modules, by where it lives."""
    if path.startswith(_UVLOOP_SOURCES) or "uvloop" in path:
        return EVENT_LOOP
    if "libc" in path or "vdso" in path:
        return LIBC
    if path.startswith("__native_") or "mypyc" in path or func.startswith("CPy"):
        return MYPYC_RUNTIME
    return CPYTHON


def strip_entry(names: list[str]) -> list[str]:
    """Drop the frames up to the event loop's runner; an empty rest is EVENT_LOOP."""
    cut = -1
    for index, name in enumerate(names):
        if name.startswith(_ENTRY):
            cut = index
    if cut < 0:
        return names
    return names[cut + 1 :] or [EVENT_LOOP]


def aggregate(raw_path: Path, rate_hz: int, seconds: int) -> Profile:
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        names = strip_entry([frame_name(f) for f in stack.split(";") if f])
        total += count
        self_counts[names[-1]] += count
        by_file[file_of(names[-1])] += count
        for name in set(names):
            inclusive[name] += count
    return Profile(total, self_counts, inclusive, by_file, raw_path, rate_hz, seconds)


def file_of(name: str) -> str:
    """The source file of an aggregated frame name; the socket writers and the event loop
    are kept apart from the files they live in, since their time is mostly not Python."""
    if name.startswith(_WRITERS):
        return SOCKET_WRITES
    if name == EVENT_LOOP or not name.endswith(")"):
        return name
    path = name[name.rfind("(") + 1 : -1]
    return (
        "<string> (code generated at run time, e.g. dataclass __init__)"
        if path == "<string>"
        else path
    )
