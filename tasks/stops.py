"""How a spinefl command ends when it is told to stop.

Ctrl-C (SIGINT), SIGTERM (systemd, ``timeout``, Slurm) and SIGHUP (a closed terminal
or SSH session) stop a command the same way: ``Stopped`` (a KeyboardInterrupt) is
raised in the main thread, every ``finally`` on the way out runs (the Flower
processes it started are stopped, its folder lock is released, no half-written file
is left under a final name), and the command exits with 128 + the signal. Signals
that arrive while it stops are ignored, so stopping finishes. SIGKILL cannot be
handled: ``tasks.guard`` stops what the command started then.
"""

from __future__ import annotations

import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []


class Stopped(KeyboardInterrupt):
    """The command was told to stop by ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _handle(signum: int, frame: object) -> None:
    if _received:  # already stopping
        return
    _received.append(signum)
    raise Stopped(signum)


def handle_stops() -> None:
    """Stop on SIGINT, SIGTERM and SIGHUP as described above (call once, from main)."""
    for name in SIGNALS:
        signal.signal(name, _handle)


def stop_signal() -> int | None:
    """The signal that stopped this command, or None."""
    return _received[0] if _received else None
