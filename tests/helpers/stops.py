"""Stop a real process at a chosen moment, as a user, a scheduler or the kernel would."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


def stop_when(command: list[str], ready: Callable[[], bool], stop: int,
              timeout: float = 240, **options) -> subprocess.Popen:
    """Start ``command`` (``subprocess.Popen`` ``options``; output discarded unless given);
    send signal ``stop`` once ``ready()`` holds; return the process once it has ended
    (SIGKILL after 90 s more). Fails if it ends first or ``ready`` waits past ``timeout``."""
    options = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, **options}
    run = subprocess.Popen(command, **options)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert run.poll() is None, "it ended before it could be stopped"
            assert time.monotonic() < deadline, f"not ready within {timeout:g} s"
            time.sleep(0.05)
        run.send_signal(stop)
        run.wait(timeout=90)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    return run
