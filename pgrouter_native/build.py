"""Building the compiled modules with mypyc.

Owns: ``build()``: type-check and compile ``COMPILED`` with mypyc, build the C
extensions with the system's C compiler, and install them with their manifest in
``build/native/`` in one rename, so a reader sees the old build or the new one, never
half of either. Does nothing when the build there is already current.
Must not touch: the sources (they are read, never changed) or any other directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pgrouter_native import (
    BUILD_DIR,
    COMPILED,
    MANIFEST,
    ROOT,
    check,
    interpreter_tag,
    read_manifest,
    source_digest,
)


class BuildError(RuntimeError):
    """The compiled modules could not be built; the message says what to install."""


def missing_tools() -> list[str]:
    """What the build needs and this machine lacks, as install hints."""
    hints = []
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        hints.append(f"Python's C headers ({include}/Python.h): apt-get install python3-dev")
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        hints.append(f"a C compiler ({compiler}): apt-get install gcc")
    try:
        import mypyc  # noqa: F401
    except ImportError:
        hints.append("mypyc: pip install mypy (the 'native' extra)")
    return hints


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def extra_cflags() -> list[str]:
    """C flags added to Python's own for the build. ``-fno-semantic-interposition``: the
    runtime helpers mypyc compiles into the extension (``CPyStr_EqualLiteral``,
    ``CPyList_GetItemShort``, ...) are called directly and may be inlined, instead of
    through the PLT as symbols another library could replace (CPython builds itself with
    it for the same reason). 6 to 10% less time per transaction in benchmarks/hotpath.py.
    GCC and Clang on Linux only; elsewhere, Python's flags as they are."""
    compiler = os.path.basename((sysconfig.get_config_var("CC") or "cc").split()[0])
    if sys.platform.startswith("linux") and ("gcc" in compiler or "clang" in compiler):
        return ["-fno-semantic-interposition"]
    return []


@contextlib.contextmanager
def _cflags(flags: list[str]) -> Iterator[None]:
    """Append ``flags`` to $CFLAGS, which distutils adds to every compile, for a while."""
    before = os.environ.get("CFLAGS")
    if flags:
        os.environ["CFLAGS"] = " ".join(([before] if before else []) + flags)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CFLAGS", None)
        else:
            os.environ["CFLAGS"] = before


def _compile(root: Path, work: Path, jobs: int) -> dict[str, Path]:
    """Run mypyc and the C compiler; returns module name -> built extension."""
    from mypyc.build import mypycify
    from setuptools import Distribution

    lib = work / "lib"
    with _cwd(root), _cflags(extra_cflags()):  # mypy reads pyproject.toml from root
        extensions = mypycify(list(COMPILED), target_dir=str(work / "c"), opt_level="3")
        dist = Distribution({"name": "pgrouter-native", "ext_modules": extensions})
        dist.script_name = "pgrouter_native"
        dist.script_args = [
            "--quiet",  # one line per extension, not every compiler command
            "build_ext",
            f"--build-lib={lib}",
            f"--build-temp={work / 'tmp'}",
            f"--parallel={jobs}",
        ]
        dist.parse_command_line()
        dist.run_commands()
    built: dict[str, Path] = {}
    for extension in extensions:
        path = lib / Path(*extension.name.split("."))
        matches = [p for p in path.parent.glob(path.name + ".*") if p.is_file()]
        if len(matches) != 1:
            raise BuildError(f"mypyc built no single file for {extension.name}: {matches}")
        built[extension.name] = matches[0]
    return built


def _current(root: Path, build_dir: Path) -> bool:
    """The build in ``build_dir`` serves the sources under ``root`` and was made with
    this machine's C flags."""
    manifest = read_manifest(build_dir)
    flags = manifest.get("cflags", []) if manifest is not None else None
    return bool(check(root, build_dir)[0]) and flags == extra_cflags()


def build(
    root: Path = ROOT,
    target: Path = BUILD_DIR,
    *,
    jobs: int = 0,
    force: bool = False,
    reuse: Path | None = None,
) -> str:
    """Build unless the build in ``target`` is current; returns what was done. ``reuse``:
    another build directory to copy from when it was made from the same sources (a copy
    of the tree, such as a benchmark's snapshot, needs no compile of its own). A build
    made with other C flags than ``extra_cflags()`` is made again (it still runs: the
    flags change speed, not behaviour)."""
    if not force and _current(root, target):
        return f"compiled modules: already current in {target}"
    if not force and reuse is not None and _current(root, reuse):
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(reuse, target)
        return f"compiled modules: copied from {reuse} (same sources)"
    hints = missing_tools()
    if hints:
        raise BuildError("cannot build the compiled modules; missing: " + "; ".join(hints))
    digest = source_digest(root)
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="native-", dir=target.parent))
    try:
        built = _compile(root, work, jobs or os.cpu_count() or 1)
        if source_digest(root) != digest:
            raise BuildError("the sources changed while building; run the build again")
        stage = work / "stage"
        stage.mkdir()
        modules = {}
        for name, path in built.items():
            relative = path.relative_to(work / "lib")
            (stage / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, stage / relative)
            modules[name] = relative.as_posix()
        manifest = {
            "digest": digest,
            "interpreter": interpreter_tag(),
            "modules": modules,
            "cflags": extra_cflags(),  # on top of Python's own
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        old = work / "old"
        if target.exists():
            target.rename(old)
        stage.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    took = time.monotonic() - started
    return f"compiled modules: built {len(COMPILED)} modules in {took:.0f}s into {target}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pgrouter_native",
        description="Build pgrouter's compiled (mypyc) modules, or say whether they are used.",
    )
    parser.add_argument("command", choices=("build", "status"))
    parser.add_argument("--force", action="store_true", help="rebuild even when current")
    parser.add_argument("--jobs", type=int, default=0, help="parallel C compiles (CPU count)")
    parser.add_argument(
        "--reuse", type=Path, help="copy this build directory instead when it has the same sources"
    )
    args = parser.parse_args(argv)
    if args.command == "status":
        files, why = check()
        print(f"compiled: {len(files)} files in {BUILD_DIR}" if files else f"interpreted: {why}")
        return 0 if files else 1
    try:
        print(build(jobs=args.jobs, force=args.force, reuse=args.reuse), flush=True)
    except BuildError as exc:
        print(f"pgrouter_native: {exc}", file=sys.stderr)
        return 1
    return 0
