"""``python -m tasks.guard PARENT COMMAND...``: run COMMAND so that it, and everything it
starts, ends when PARENT ends, however PARENT ends.

``tasks.processes.spawn`` starts every Flower process under a guard. On Linux the
guard asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``: this
covers a SIGKILL of the spinefl command, which no handler sees) and adopts every
orphan below it (``PR_SET_CHILD_SUBREAPER``: a process whose parent exits still
counts as the guard's). Everywhere (macOS has neither) it also looks twice a second
whether its parent is gone; where no subreaper adopts orphans it also remembers every
process it has seen below it then, so an orphan that another process adopted is still
stopped. (Under a subreaper nothing below leaves the tree, and a walk of the process
table twice a second, in every guard, costs the CPU that training on the same machine
needs.) On SIGTERM, SIGINT or SIGHUP,
when its parent is gone, or when COMMAND exits, it stops everything below it and
everything it saw there, and exits with COMMAND's status (128 + the signal when
stopped).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

import psutil

from tasks.processes import stop_below
from tasks.stops import SIGNALS, Stopped, handle_stops

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
LOOK_EVERY = 0.5  # seconds between looks at the parent and the tree


def main(argv: list[str]) -> int:
    parent, command = int(argv[0]), argv[1:]
    adopts = False  # whether orphans below come to this process (a subreaper)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        adopts = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    handle_stops()
    status = 128 + signal.SIGTERM
    me = psutil.Process()
    seen: dict[int, psutil.Process] = {}  # every process seen below, adopted elsewhere or not
    try:
        if os.getppid() != parent:  # the parent died before the kernel could be asked
            return status
        child = subprocess.Popen(command)
        while os.getppid() == parent:  # reap adopted orphans too, until the command exits
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
            if pid == child.pid:
                status = child.returncode = os.waitstatus_to_exitcode(wait_status)
                if status < 0:
                    status = 128 - status
                break
            if pid == 0:
                if not adopts:
                    seen = {p.pid: p for p in seen.values() if p.is_running()}  # ended go
                    for process in me.children(recursive=True):
                        seen.setdefault(process.pid, process)  # first seen under that pid
                time.sleep(LOOK_EVERY)
    except Stopped as stop:
        status = 128 + stop.signum
    finally:
        for name in SIGNALS:  # nothing interrupts the stopping below
            signal.signal(name, signal.SIG_IGN)
        stop_below(os.getpid(), also=seen.values())
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
