"""Which worker gave out a BackendKeyData pid, and where its cancel socket is."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.workers import MAX_WORKERS, WorkerSlot, owner_of


@pytest.mark.parametrize("index", [0, 1, 7, MAX_WORKERS - 1])
@pytest.mark.parametrize("counter", [1, 2, 1000, 2**23 - 1, 2**23, 2**40])
def test_a_pid_names_its_worker_and_stays_a_positive_int32(index: int, counter: int) -> None:
    pid = WorkerSlot(index, Path("/run/x")).backend_pid(counter)
    assert owner_of(pid) == index
    assert 0 <= pid < 2**31


def test_consecutive_clients_of_a_worker_get_distinct_pids() -> None:
    slot = WorkerSlot(3, Path("/run/x"))
    pids = {slot.backend_pid(n) for n in range(1, 5000)}
    assert len(pids) == 4999


def test_every_worker_has_its_own_cancel_socket() -> None:
    slot = WorkerSlot(0, Path("/run/pgrouter-workers-1"))
    paths = {slot.socket_path(index) for index in range(4)}
    assert len(paths) == 4
    assert all(path.parent == Path("/run/pgrouter-workers-1") for path in paths)
