"""Output folders held by one run at a time.

Every command that writes a folder (simulate, train, predict, hospital prepare and
join, coordinator start) holds that folder's lock while it runs: a second command
into the same folder is refused, naming the holder. The lock is an advisory
``flock`` on ``<folder>/.spinefl.lock``, so the kernel releases it however the
holder ends (SIGKILL included) and a dead holder's lock is taken over. Processes
started through ``tasks.processes.spawn`` inherit the locks this process holds: a
folder stays locked until everything working in it has ended. Taking a lock sweeps
away the temporary files of writers that died mid-write (``tasks.files``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil

from tasks.errors import UserError
from tasks.files import sweep_temporaries, writable_folder

LOCK = ".spinefl.lock"
# Descriptors of the locks this process holds (inherited by spawned guards).
_HELD: set[int] = set()


def run_files(folder: Path) -> list[str]:
    """The names of what ``folder`` holds besides its lock and interrupted writes' leftovers
    (what tells whether it already holds a run or a cohort)."""
    return sorted(p.name for p in folder.iterdir()
                  if p.name != LOCK and not p.name.startswith(".part-"))


def held_locks() -> tuple[int, ...]:
    """The file descriptors of the folder locks this process holds now."""
    return tuple(sorted(_HELD))


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock (creating the folder) while the block runs; UserError naming
    the holder when another live process holds it."""
    writable_folder(folder)
    path = folder / LOCK
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(descriptor)
            os.close(descriptor)
            raise UserError(f"{folder}: in use by {holder}; wait for it to end, or stop it, "
                            "before running again into this folder") from None
        # The holder before us may have removed the file between our open and our lock.
        if os.path.exists(path) and os.path.samestat(os.fstat(descriptor), os.stat(path)):
            break
        os.close(descriptor)
    os.ftruncate(descriptor, 0)
    os.write(descriptor, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "command": " ".join(["spinefl", *sys.argv[1:]]),
                                     "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    _HELD.add(descriptor)
    sweep_temporaries(folder)
    try:
        yield
    finally:
        _HELD.discard(descriptor)
        with suppress(OSError):
            path.unlink()
        os.close(descriptor)


def _holder(descriptor: int) -> str:
    """Who holds a lock, from what it wrote into the lock file."""
    try:
        facts = json.loads(os.pread(descriptor, 4096, 0) or b"{}")
        pid = int(facts["pid"])
    except (ValueError, KeyError, TypeError):
        return "another run"
    state = "running" if psutil.pid_exists(pid) else "ended; its processes are stopping"
    return (f"'{facts.get('command', '?')}' (pid {pid} on {facts.get('host', '?')}, since "
            f"{facts.get('since', '?')}, {state})")
