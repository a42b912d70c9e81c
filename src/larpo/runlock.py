"""One process per run directory: an exclusive lock that the OS releases when its holder dies.

The lock is an ``flock`` (through ``filelock``) on ``<run_dir>/.larpo.lock``, so a killed run
never leaves a stale claim behind. The holder's pid and host are written beside it, for the
message another process gets. Within one process the lock is re-entrant, so a sweep can hold a
run directory while ``larpo.loop.run`` works in it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .config import ConfigError
from .io import make_dir, write_text_atomic

LOCK = ".larpo.lock"
HOLDER = ".larpo.lock.holder"
_held: set[Path] = set()


class RunDirectoryBusy(ConfigError):
    """Another process holds the run directory (exit code 2 from the command line)."""


def _holder(run_dir: Path) -> str:
    """Who holds the lock, as its holder wrote it (it writes just after taking the lock: wait a moment)."""
    for _ in range(40):
        try:
            return (run_dir / HOLDER).read_text().strip()
        except FileNotFoundError:
            time.sleep(0.05)
    return "holder unknown"


@contextmanager
def run_dir_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir`` exclusively for the ``with`` block, or raise :class:`RunDirectoryBusy` at once."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        yield
        return
    make_dir(run_dir)
    lock = FileLock(run_dir / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:  # an OSError too: first
        raise RunDirectoryBusy(
            f"{run_dir}: in use by another larpo process ({_holder(run_dir)}); wait for it to finish or pass another --out"
        ) from None
    except OSError as e:
        raise ConfigError(f"--out {run_dir}: cannot write in it ({e.strerror})") from None
    _held.add(run_dir)
    try:
        write_text_atomic(run_dir / HOLDER, f"pid {os.getpid()} on {socket.gethostname()}\n")
        yield
    finally:
        _held.discard(run_dir)
        (run_dir / HOLDER).unlink(missing_ok=True)
        lock.release()
