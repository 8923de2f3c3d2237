"""Locks that keep two ``cellfeat extract`` runs on one output folder out of each other's way.

A requeued cluster job, or a second terminal, may start ``extract`` on an ``--out`` that another
run is still writing. Each run takes an exclusive lock a plate (``OUT/.locks/{experiment}/Plate{p}.lock``)
for the plates it works on, and a short one an experiment while it rewrites that experiment's
profile tables. Locks are ``flock`` locks on open files: the kernel drops them when their
process ends, however it ends (a SIGKILLed run leaves no stale lock behind), and they work on
local and NFSv4 file systems. The lock file holds the holder's host and pid, for the message.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_DIR = ".locks"


class LockBusy(RuntimeError):
    """Another process holds the lock."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder or 'another process'}")
        self.path, self.holder = path, holder


class FileLock:
    """An exclusive ``flock`` on ``path``; :meth:`acquire` with ``wait=False`` raises :class:`LockBusy`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, *, wait: bool = False, timeout: float = 600.0) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait or time.monotonic() > deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    os.close(fd)
                    raise LockBusy(self.path, holder) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        return self.acquire(wait=True)

    def __exit__(self, *exc) -> None:
        self.release()


def plate_lock(out: Path, experiment: str, plate_stem: str) -> FileLock:
    return FileLock(out / LOCK_DIR / experiment / f"{plate_stem}.lock")


def experiment_lock(out: Path, experiment: str) -> FileLock:
    return FileLock(out / LOCK_DIR / experiment / "tables.lock")
