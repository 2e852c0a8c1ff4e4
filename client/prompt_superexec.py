"""``python -m client.prompt_superexec ARGS``: Flower's ``flower-superexec ARGS``, not asking
for requests while the launcher it started last is running.

flwr 1.42's SuperExec (``flwr/supercore/superexec/run_superexec.py``) asks the SuperNode's
Runtime API for a request to start every ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` s, each ask
an HTTP request with an HMAC the SuperNode checks (a few ms of CPU on each side), all
through training rounds of minutes that share the hospital's cores. A SuperNode hands out
one message at a time and pulls the next only once the ClientApp has replied, and the
launcher ends right after that reply (its fork pushes the reply and exits; the worker
tells the launcher at once). Here that module's clock (``RequestClock``) waits for the
launcher it started last to end instead of the interval, and the SuperExec asks again as
soon as it has, so a message pulled meanwhile waits no longer than the launcher's end. A
launcher that hangs after its node has given up on it (Flower reports the ClientApp
crashed when its heartbeats stop, then pulls the next message) delays the next request by
at most ``SAFETY`` s; later waits are for later launchers. The launchers are recorded
through the executor module's ``subprocess`` (``Launches``). Where the kernel gives no
process descriptor (``os.pidfd_open``: Linux 5.3 or later) the clock is Flower's.
Everything else is Flower's; the names replaced are checked against the installed flwr
(``tests/client``).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from client.worker import end_of

SAFETY = 10.0  # seconds between asks while a launcher runs


class Launches:
    """The ``subprocess`` module as the executor sees it: every process it starts is kept
    (and reaped here) until it has ended; ``last`` is the one started last."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []
        self.last: subprocess.Popen | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:  # the name Flower calls
        process = subprocess.Popen(*args, **kwargs)
        self.started = [*self.running(), process]
        self.last = process
        return process

    def running(self) -> list[subprocess.Popen]:
        """The processes started that have not ended (those that have are reaped)."""
        return [process for process in self.started if process.poll() is None]


class RequestClock:
    """The ``time`` module as the SuperExec's loop sees it: while the launcher started last
    runs, its wait between asks lasts until that launcher ends (at most ``safety`` s)."""

    def __init__(self, launches: Launches, sleep: Callable[[float], None] = time.sleep,
                 safety: float = SAFETY) -> None:
        self.launches, self._sleep, self.safety = launches, sleep, safety

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        self.launches.running()  # reap what has ended
        last = self.launches.last
        if last is None or last.returncode is not None:
            self._sleep(seconds)
            return
        descriptor = end_of(last.pid)
        if descriptor is None:  # no process descriptors here: Flower's wait
            self._sleep(seconds)
            return
        try:
            ended = select.poll()
            ended.register(descriptor, select.POLLIN)  # readable once it has ended
            ended.poll(self.safety * 1000)
        finally:
            os.close(descriptor)
        self.launches.running()


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
