"""Worker processes: several pgrouter processes sharing one listening port.

Owns: starting ``workers`` copies of ``pgrouter serve`` (each binds the port with
SO_REUSEPORT, so the kernel spreads new connections over them), forwarding SIGHUP /
SIGTERM / SIGINT to them, starting a new worker when one dies unexpectedly, and the
private directory holding each worker's cancel socket. Also the small facts a worker
needs about itself (``WorkerSlot``): which BackendKeyData belong to it, and where a
sibling listens for the CancelRequests it receives for the others.
Must not touch: anything a worker does (each one is a whole Proxy with its own pools,
monitor, admin console and metrics endpoint).

Why processes: one Python process keeps one core busy at most, while PostgreSQL, the
clients and the proxy compete for all of them; PgCat and PgDog use threads for the same
reason, PgBouncer offers ``so_reuseport`` processes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

log = logging.getLogger("pgrouter.workers")

WORKER_BITS = 8  # the low bits of a client's BackendKeyData pid: its worker's index
MAX_WORKERS = 1 << WORKER_BITS
_COUNTER_LIMIT = 1 << (31 - WORKER_BITS)  # pids stay positive int32
RESPAWN_PAUSE = 1.0  # seconds before restarting a worker that died right after start


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """One worker's identity within its group."""

    index: int
    directory: Path  # private (0700), holds every worker's cancel socket

    def socket_path(self, index: int) -> Path:
        return self.directory / f"cancel-{index}.sock"

    def backend_pid(self, counter: int) -> int:
        """The BackendKeyData pid for this worker's ``counter``-th client."""
        return (counter % _COUNTER_LIMIT) << WORKER_BITS | self.index


def owner_of(pid: int) -> int:
    """The index of the worker that gave out BackendKeyData ``pid``."""
    return pid & (MAX_WORKERS - 1)


def supervise(count: int, config_path: Path) -> int:
    """Run ``count`` workers until they have all stopped; returns the exit status."""
    directory = Path(tempfile.mkdtemp(prefix="pgrouter-workers-"))
    os.chmod(directory, 0o700)
    procs: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
    stopping = False

    def spawn(index: int) -> None:
        argv = [sys.executable, "-m", "router", "serve", "-c", str(config_path)]
        argv += ["--worker-index", str(index), "--worker-dir", str(directory)]
        # A session of its own: a terminal's Ctrl-C reaches the supervisor only, which
        # passes each signal on once.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        procs[index] = (proc, time.monotonic())
        log.info("worker %d started (pid %d)", index, proc.pid)

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    status = 0
    failed_starts: dict[int, int] = {}
    try:
        for index in range(count):
            spawn(index)
        while procs:
            time.sleep(0.1)
            for index, (proc, started) in list(procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                del procs[index]
                if stopping:  # ended by the signal passed on, before its handlers were set
                    if code not in (-signal.SIGTERM, -signal.SIGINT):
                        status = status or code
                    continue
                if code == 0:  # it was told to stop (the admin console's SHUTDOWN): all do
                    log.info("worker %d stopped; stopping the others", index)
                    forward(signal.SIGTERM, None)
                    continue
                log.warning("worker %d (pid %d) exited with status %d", index, proc.pid, code)
                quick = time.monotonic() - started < RESPAWN_PAUSE
                failed_starts[index] = failed_starts.get(index, 0) + 1 if quick else 0
                if failed_starts[index] >= 3:  # it cannot start (port taken, bad config...)
                    log.error("worker %d keeps failing to start; stopping", index)
                    status = code
                    forward(signal.SIGTERM, None)
                    continue
                if quick:
                    time.sleep(RESPAWN_PAUSE)
                spawn(index)
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(directory, ignore_errors=True)
    return status
