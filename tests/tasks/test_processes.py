"""Stopping a process tree leaves nothing behind, also what the tree starts while stopping."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from tasks.processes import descendants, kill_tree, stop_tree
from tests.helpers.flower_processes import left_after, running
from tests.helpers.stops import stop_when

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


# A command that spawns (through the guard) a child whose own child double-forks: the
# grandchild's parent exits, so it is an orphan nobody's process tree names any more.
SPAWNER = """
import subprocess, sys, time
from tasks.processes import spawn
ORPHAN = ("import os, sys, time\\n"
          "if os.fork() == 0:\\n"
          "    time.sleep(600)\\n")
CHILD = ("import subprocess, sys, time; "
         "subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]]); "
         "time.sleep(600)")
spawn([sys.executable, "-c", CHILD, ORPHAN, sys.argv[1]])
time.sleep(600)
"""


def test_what_a_command_spawned_ends_when_the_command_is_killed(tmp_path):
    """SIGKILL (no handler runs) of a command: the guard it spawned through ends the child
    and the orphaned grandchild within seconds."""
    marker = str(tmp_path / "tree")
    # Ready once the command, the guard, the child and the double-forked grandchild run.
    stop_when([sys.executable, "-c", SPAWNER, marker], lambda: len(running(tmp_path)) >= 4,
              signal.SIGKILL, timeout=30, stdout=None, stderr=None)
    assert left_after(lambda: running(tmp_path), 10) == set(), \
        "a spawned process outlived its command's SIGKILL"


# A master that keeps forking workers (an nginx master replacing a killed worker, a Ray
# raylet starting one): a tree that grows while it is killed. Killed from one look at the
# tree, every worker forked after the look survives as an orphan (one kept the proxy's port).
MASTER = """
import os, sys, time
for count in range(400):
    if os.fork() == 0:
        os.execve("/bin/sleep", ["sleep", "600"], {"POOL": sys.argv[1]})
    if count == 4:
        open(sys.argv[1] + ".ready", "w").close()
    time.sleep(0.002)
time.sleep(600)
"""


def test_a_power_cut_leaves_nothing_of_a_tree_growing_while_it_is_cut(tmp_path):
    marker = tmp_path / "pool"
    master = subprocess.Popen([sys.executable, "-c", MASTER, str(marker)])
    deadline = time.monotonic() + 30
    while not (tmp_path / "pool.ready").exists():
        assert time.monotonic() < deadline, "the master did not start its workers"
        time.sleep(0.05)
    kill_tree(master.pid)
    assert master.wait(timeout=10) == -signal.SIGKILL
    assert left_after(lambda: running(marker), 5) == set(), "a worker outlived the power cut"


def test_stopping_below_a_process_also_stops_what_was_seen_below_it_before_it_was_adopted(
        tmp_path):
    """Where no subreaper adopts orphans (macOS), a guard stops what it saw below it even
    after another process adopted it: here a process outside the tree, named in ``also``."""
    import psutil

    from tasks.processes import stop_below

    marker = tmp_path / "adopted"
    outside = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)",
                                str(marker)])
    below = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        stop_below(below.pid, grace=2.0, also=[psutil.Process(outside.pid)])
        assert outside.wait(timeout=10) == -signal.SIGTERM
    finally:
        for process in (outside, below):
            process.kill()
            process.wait()
