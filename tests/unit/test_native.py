"""The compiled-module switch: a build is used only when it matches the sources exactly.

Builds are faked with files (no compiler runs here); what is tested is ``check``'s
verdict and that the hook serves a listed module from its file and nothing else.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

import pytest

import pgrouter_native
from pgrouter_native import MANIFEST, check, interpreter_tag, source_digest


def sources(root: Path) -> Path:
    """A copy of the three packages' sources under ``root``."""
    for package in pgrouter_native.PACKAGES:
        shutil.copytree(
            pgrouter_native.ROOT / package,
            root / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.so"),
        )
    return root


def fake_build(root: Path, build: Path, **overrides: object) -> Path:
    """A build directory whose manifest matches ``root`` unless ``overrides`` say not."""
    build.mkdir(parents=True)
    (build / "router").mkdir()
    (build / "router" / "lexer.so").write_bytes(b"")
    manifest = {
        "digest": source_digest(root),
        "interpreter": interpreter_tag(),
        "modules": {"router.lexer": "router/lexer.so"},
        **overrides,
    }
    (build / MANIFEST).write_text(json.dumps(manifest))
    return build


def test_a_matching_build_is_used(tmp_path: Path) -> None:
    root = sources(tmp_path / "src")
    build = fake_build(root, tmp_path / "build")
    files, why = check(root, build)
    assert why == ""
    assert files == {"router.lexer": str(build / "router" / "lexer.so")}


def test_no_build_says_how_to_make_one(tmp_path: Path) -> None:
    files, why = check(sources(tmp_path / "src"), tmp_path / "nothing")
    assert files == {}
    assert "no build" in why and "bootstrap" in why


def test_an_edited_source_disables_the_whole_build(tmp_path: Path) -> None:
    root = sources(tmp_path / "src")
    build = fake_build(root, tmp_path / "build")
    admin = root / "router" / "admin.py"  # not compiled itself, but compiled code uses it
    admin.write_text(admin.read_text() + "\n# edited\n")
    files, why = check(root, build)
    assert files == {}
    assert "sources changed" in why


def test_a_new_source_file_changes_the_digest(tmp_path: Path) -> None:
    root = sources(tmp_path / "src")
    before = source_digest(root)
    (root / "router" / "extra.py").write_text("")
    assert source_digest(root) != before


def test_a_build_for_another_interpreter_is_refused(tmp_path: Path) -> None:
    root = sources(tmp_path / "src")
    build = fake_build(root, tmp_path / "build", interpreter="cpython-39.cpython-39-x.so")
    files, why = check(root, build)
    assert files == {}
    assert "cpython-39" in why


def test_an_incomplete_build_is_refused(tmp_path: Path) -> None:
    root = sources(tmp_path / "src")
    build = fake_build(root, tmp_path / "build")
    (build / "router" / "lexer.so").unlink()
    files, why = check(root, build)
    assert files == {} and "incomplete" in why


def test_a_corrupt_manifest_is_no_build(tmp_path: Path) -> None:
    root = sources(tmp_path / "src")
    build = fake_build(root, tmp_path / "build")
    (build / MANIFEST).write_text("{not json")
    assert check(root, build) == ({}, f"no build in {build} (run ./scripts/bootstrap.sh)")


def test_the_hook_serves_listed_modules_from_their_files_only() -> None:
    finder = pgrouter_native._Finder({"router.lexer": "/x/router/lexer.so"})
    spec = finder.find_spec("router.lexer", None)
    assert spec is not None and spec.origin == "/x/router/lexer.so"
    assert isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
    assert finder.find_spec("router.admin", None) is None


def test_this_process_reports_what_it_runs() -> None:
    __import__("router.dispatch")
    status = pgrouter_native.status()
    assert status.startswith(("compiled: ", "interpreted: "))
    assert pgrouter_native.compiled("router.dispatch") == status.startswith("compiled: ")


def test_turned_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgrouter_native, "_status", "interpreted: activate() not called")
    monkeypatch.setattr(pgrouter_native, "_finder", None)
    monkeypatch.setenv("PGROUTER_NATIVE", "0")
    hooks = list(sys.meta_path)
    assert pgrouter_native.activate() == "interpreted: PGROUTER_NATIVE=0"
    assert sys.meta_path == hooks


def test_the_build_adds_its_c_flag_for_gcc_and_clang_on_linux_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pgrouter_native import build

    compilers = {"CC": "gcc -pthread"}
    monkeypatch.setattr(sysconfig, "get_config_var", compilers.get)
    monkeypatch.setattr(sys, "platform", "linux")
    assert build.extra_cflags() == ["-fno-semantic-interposition"]
    compilers["CC"] = "/usr/bin/clang"
    assert build.extra_cflags() == ["-fno-semantic-interposition"]
    compilers["CC"] = "icc"
    assert build.extra_cflags() == []
    compilers["CC"] = "gcc"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert build.extra_cflags() == []


def test_the_c_flags_are_added_for_the_compile_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgrouter_native import build

    monkeypatch.setenv("CFLAGS", "-O2")
    with build._cflags(["-fno-semantic-interposition"]):
        assert os.environ["CFLAGS"] == "-O2 -fno-semantic-interposition"
    assert os.environ["CFLAGS"] == "-O2"
    monkeypatch.delenv("CFLAGS")
    with build._cflags(["-fx"]):
        assert os.environ["CFLAGS"] == "-fx"
    assert "CFLAGS" not in os.environ


def test_the_current_build_records_its_c_flags() -> None:
    manifest = pgrouter_native.read_manifest(pgrouter_native.BUILD_DIR)
    if manifest is None:
        pytest.fail("no build in build/native: run ./scripts/bootstrap.sh")
    from pgrouter_native import build

    assert manifest.get("cflags") == build.extra_cflags()


def test_a_build_made_with_other_c_flags_is_made_again_but_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgrouter_native import build

    monkeypatch.setattr(build, "extra_cflags", lambda: ["-fx"])
    root = sources(tmp_path / "src")
    older = fake_build(root, tmp_path / "older")  # from before the flags were recorded
    other = fake_build(root, tmp_path / "other", cflags=["-fy"])
    same = fake_build(root, tmp_path / "same", cflags=["-fx"])
    assert not build._current(root, older) and not build._current(root, other)
    assert build._current(root, same)
    assert check(root, other)[1] == ""  # the import hook still serves it
    assert build.build(root, same) == f"compiled modules: already current in {same}"
