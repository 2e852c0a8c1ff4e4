"""``python -m client.prompt_superexec ARGS``: Flower's ``flower-superexec ARGS``, not asking
for requests while the one it started is still being served.

flwr 1.42's SuperExec (``flwr/supercore/superexec/run_superexec.py``) asks the SuperNode's
Runtime API for a request to start every ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` s, each ask
an HTTP request with an HMAC the SuperNode checks (a few ms of CPU on each side), all
through training rounds of minutes that share the hospital's cores. A SuperNode hands out
one message at a time and pulls the next only once the ClientApp has replied, so no request
can come while the launcher this SuperExec started runs. Here that module's clock
(``RequestClock``) waits for that launcher to end instead, at most ``SAFETY`` s (a launcher
that hangs after its node has given up on it delays the next request by no more), and the
SuperExec asks again as soon as it ends; its launchers are recorded through the executor
module's ``subprocess`` (``Launches``). Without ``os.pidfd_open`` (not Linux) the clock is
Flower's. Everything else is Flower's; the names replaced are checked against the installed
flwr (``tests/client``).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

SAFETY = 10.0  # seconds between asks while a launcher runs


class Launches:
    """The ``subprocess`` module as the executor sees it: every process it starts is kept
    (and reaped here) until it has ended."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:  # the name Flower calls
        process = subprocess.Popen(*args, **kwargs)
        self.started = [*self.running(), process]
        return process

    def running(self) -> list[subprocess.Popen]:
        """The processes started that have not ended."""
        return [process for process in self.started if process.poll() is None]


class RequestClock:
    """The ``time`` module as the SuperExec's loop sees it: its wait between asks lasts until
    the launchers it started have ended (at most ``safety`` s) while one runs."""

    def __init__(self, launches: Launches, sleep: Callable[[float], None] = time.sleep,
                 safety: float = SAFETY) -> None:
        self.launches, self._sleep, self.safety = launches, sleep, safety

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        running = self.launches.running()
        if not running or not hasattr(os, "pidfd_open"):
            self._sleep(seconds)
            return
        try:
            descriptor = os.pidfd_open(running[-1].pid)
        except ProcessLookupError:  # ended since: ask at once
            return
        try:
            select.select([descriptor], [], [], self.safety)  # readable once it has ended
        finally:
            os.close(descriptor)
        self.launches.running()  # reaped


def main() -> None:
    import flwr.supercore.superexec.executor.subprocess_executor as executor
    import flwr.supercore.superexec.run_superexec as loop
    from flwr.supercore.cli import flower_superexec

    launches = Launches()
    executor.subprocess = launches  # the module's names; nothing else changes
    loop.time = RequestClock(launches)
    sys.argv[0] = "flower-superexec"
    flower_superexec()


if __name__ == "__main__":
    main()
