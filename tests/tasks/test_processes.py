"""Stopping a process tree leaves nothing behind, also what the tree starts while stopping."""

from __future__ import annotations

import subprocess
import sys
import time

from tasks.processes import descendants, stop_tree
from tests.helpers.flower_processes import running

# A parent that, asked to stop, starts one more child (as a Ray raylet may restart a worker)
# and ignores SIGTERM; its first child ignores SIGTERM too. Only SIGKILL ends them.
PARENT = """
import signal, subprocess, sys, time
CHILD = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
children = [subprocess.Popen([sys.executable, "-c", CHILD, sys.argv[1]])]
def late(signum, frame):
    children.append(subprocess.Popen([sys.executable, "-c", CHILD, sys.argv[1]]))
signal.signal(signal.SIGTERM, late)
open(sys.argv[1], "w").close()
while True:
    time.sleep(0.1)
"""


def test_a_tree_that_spawns_while_stopping_is_gone_when_stop_returns(tmp_path):
    ready = tmp_path / "ready"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(ready)])
    deadline = time.monotonic() + 30
    while not (ready.exists() and descendants(parent.pid)):
        assert time.monotonic() < deadline, "the parent did not start its child"
        time.sleep(0.05)
    started = time.monotonic()
    stop_tree(parent, grace=1.0)
    took = time.monotonic() - started
    # The late child's parent dies by SIGKILL, so only a look while stopping finds it.
    assert running(ready) == set()
    assert parent.returncode is not None and took < 15
