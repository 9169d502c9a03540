"""Compiled modules: pgrouter's hot path built with mypyc, used only when current.

Owns: the list of modules compiled with mypyc (``COMPILED``), the manifest a build
leaves in ``build/native/`` (the source digest it was built from, the interpreter it was
built for, the file of each compiled module), and ``activate()``, which installs an
import hook serving those modules from the build when, and only when, the manifest
matches the sources on disk and the running interpreter. Anything else (no build, an
edited source, another Python) leaves every module interpreted, and ``status()`` says why.
Must not touch: what the modules do. The same source runs compiled or interpreted; the
build (``python -m pgrouter_native build``, run by scripts/bootstrap.sh) only makes it
faster. ``PGROUTER_NATIVE=0`` turns compiled modules off for a process.

Why a digest of every source, not only the compiled ones: mypyc compiles a module
against the types of everything it imports, so an edit to any of them can make the build
wrong. The check reads about 0.6 MB once per process.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGES = ("protocol", "router", "policies")
# The per-message path: framing, relay, forwarding, pooling, routing, classification.
COMPILED = (
    "protocol/_wire.py",
    "protocol/framing.py",
    "router/tracker.py",
    "router/lexer.py",
    "router/sessionstate.py",
    "router/prepared.py",
    "router/hints.py",
    "router/lsn.py",
    "router/commands.py",
    "router/deferred.py",
    "router/params.py",
    "router/backends.py",
    "router/inbox.py",
    "router/functions.py",
    "router/routing.py",
    "router/monitor.py",
    "router/director.py",
    "router/classifier.py",
    "router/units.py",
    "router/forward.py",
    "router/server.py",
    "router/pool.py",
    "router/capture.py",
    "router/dispatch.py",
    "router/client.py",
    "policies/lag.py",
    "policies/match.py",
)
ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build" / "native"
MANIFEST = "manifest.json"
ENV = "PGROUTER_NATIVE"

_status = "interpreted: activate() not called"
_finder: _Finder | None = None


def interpreter_tag() -> str:
    """What a build must have been made for: the extension suffix names the ABI."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return f"{sys.implementation.cache_tag}{suffix}"


def source_digest(root: Path = ROOT) -> str:
    """SHA-256 over every .py file of the three packages (path and content)."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


def read_manifest(build_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads((build_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check(root: Path = ROOT, build_dir: Path = BUILD_DIR) -> tuple[dict[str, str], str]:
    """(module name -> extension file, "") when the build in ``build_dir`` is usable for
    the sources under ``root``; ({}, why not) otherwise."""
    manifest = read_manifest(build_dir)
    if manifest is None:
        return {}, f"no build in {build_dir} (run ./scripts/bootstrap.sh)"
    if manifest.get("interpreter") != interpreter_tag():
        return {}, f"the build is for {manifest.get('interpreter')}, not {interpreter_tag()}"
    if manifest.get("digest") != source_digest(root):
        return {}, "the sources changed since the build (run ./scripts/bootstrap.sh)"
    modules = manifest.get("modules")
    if not isinstance(modules, dict) or not modules:
        return {}, "the build's manifest lists no modules"
    files = {str(name): str(build_dir / str(file)) for name, file in modules.items()}
    missing = [f for f in files.values() if not os.path.exists(f)]
    if missing:
        return {}, f"the build is incomplete ({missing[0]} is missing)"
    return files, ""


class _Finder(importlib.abc.MetaPathFinder):
    """Serves the compiled modules of one build; every other import goes on as usual."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, file)
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def activate() -> str:
    """Serve the compiled modules if the build is current; returns ``status()``. Called
    by each package's ``__init__`` before any of its modules loads; runs once."""
    global _status, _finder
    if _finder is not None or not _status.startswith("interpreted: activate"):
        return _status
    if os.environ.get(ENV, "").lower() in ("0", "off", "no", "false"):
        _status = f"interpreted: {ENV}={os.environ[ENV]}"
        return _status
    files, why = check()
    if not files:
        _status = f"interpreted: {why}"
        return _status
    early = [name for name in files if name in sys.modules]
    if early:  # imported before the hook: mixing the two builds is not safe
        _status = f"interpreted: {early[0]} was imported before activation"
        return _status
    _finder = _Finder(files)
    sys.meta_path.insert(0, _finder)
    compiled = sum(1 for name in files if "__mypyc" not in name)
    _status = f"compiled: {compiled} modules (mypyc)"
    return _status


def status() -> str:
    """``compiled: N modules (mypyc)`` or ``interpreted: <why>``."""
    return _status


def build_mode() -> str:
    """``compiled`` or ``interpreted``: what SHOW VERSION and pgrouter_info say."""
    return _status.split(":", 1)[0]


def compiled(module: str) -> bool:
    """Whether ``module`` (e.g. "router.dispatch") was loaded from the build."""
    loaded = sys.modules.get(module)
    file = getattr(loaded, "__file__", "") or ""
    return file.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def build_platform() -> str:
    return sysconfig.get_platform()
