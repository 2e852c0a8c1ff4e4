"""The SuperExec's clock: while a launcher it started runs it does not ask for requests, and
it asks again as soon as that launcher ends; the names it replaces are the installed
Flower's."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import time

import pytest

from client.prompt_superexec import Launches, RequestClock

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pidfd: Linux")


def test_while_a_launcher_runs_the_superexec_waits_for_its_end_not_the_interval():
    launches, slept = Launches(), []
    clock = RequestClock(launches, slept.append, safety=20.0)
    clock.sleep(0.5)  # nothing started: Flower's interval
    assert slept == [0.5]
    process = launches.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    started = time.monotonic()
    clock.sleep(0.5)
    waited = time.monotonic() - started
    assert 1.0 < waited < 10.0  # until it ended, far below the safety bound
    assert process.returncode == 0 and launches.running() == [] and slept == [0.5]
    clock.sleep(0.5)  # ended: Flower's interval again
    assert slept == [0.5, 0.5]


def test_a_launcher_that_hangs_delays_the_next_ask_by_the_safety_bound_only():
    launches = Launches()
    clock = RequestClock(launches, pytest.fail, safety=0.5)
    hung = launches.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = time.monotonic()
        clock.sleep(0.5)
        assert 0.4 < time.monotonic() - started < 5.0
        assert launches.running() == [hung]
    finally:
        hung.kill()
        hung.wait()
    assert launches.running() == []


def test_launches_reap_what_they_started():
    launches = Launches()
    quick = [launches.Popen(["true"], stdout=launches.DEVNULL) for _ in range(3)]
    for process in quick:
        process.wait()
    assert launches.running() == [] and all(p.returncode == 0 for p in quick)
    assert launches.Popen is not subprocess.Popen and launches.PIPE == subprocess.PIPE


def test_the_names_replaced_are_the_installed_flowers():
    """An upgrade of flwr that changes the SuperExec's loop or its executor fails here."""
    import flwr.supercore.superexec.executor.subprocess_executor as executor
    import flwr.supercore.superexec.run_superexec as loop

    source = inspect.getsource(loop)
    assert "import time\n" in source
    assert re.findall(r"\btime\.\w+\(?[^)\n]*\)?", source) == ["time.sleep(task_poll_interval)"]
    source = inspect.getsource(executor)
    assert "import subprocess\n" in source
    assert set(re.findall(r"\bsubprocess\.\w+", source)) == {"subprocess.Popen",
                                                             "subprocess.DEVNULL"}
    assert "Popen(" not in source.replace("subprocess.Popen(", "")


def test_the_superexec_starts_with_the_clock_and_its_launches_recorded(monkeypatch):
    import flwr.supercore.cli
    import flwr.supercore.superexec.executor.subprocess_executor as executor
    import flwr.supercore.superexec.run_superexec as loop

    from client import prompt_superexec

    seen = []
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(loop, "time", loop.time)
    monkeypatch.setattr(executor, "subprocess", executor.subprocess)
    monkeypatch.setattr(flwr.supercore.cli, "flower_superexec",
                        lambda: seen.append((loop.time, executor.subprocess)))
    prompt_superexec.main()
    [(clock, launches)] = seen
    assert isinstance(clock, RequestClock) and clock.launches is launches
    assert isinstance(launches, Launches)


def test_a_hung_older_launcher_does_not_hold_up_the_asks_after_a_newer_one():
    """A launcher its node gave up on (Flower reported the ClientApp crashed and pulled the
    next message) is not waited for once a later launcher has started and ended."""
    launches, slept = Launches(), []
    clock = RequestClock(launches, slept.append, safety=20.0)
    hung = launches.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        launches.Popen(["true"]).wait()
        started = time.monotonic()
        clock.sleep(0.5)
        assert time.monotonic() - started < 5.0 and slept == [0.5]
        assert launches.running() == [hung]
    finally:
        hung.kill()
        hung.wait()


def test_without_process_descriptors_the_wait_is_flowers(monkeypatch):
    """A kernel before 5.3, or a seccomp profile that refuses pidfd_open."""
    def refused(pid: int) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "pidfd_open", refused)
    launches, slept = Launches(), []
    clock = RequestClock(launches, slept.append, safety=20.0)
    running = launches.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        clock.sleep(0.5)
        assert slept == [0.5]
    finally:
        running.kill()
        running.wait()


def test_the_module_starts_flowers_superexec_from_any_folder(tmp_path):
    """As ``hospital join`` starts it (``-P``: nothing from the working folder)."""
    done = subprocess.run([sys.executable, "-P", "-m", "client.prompt_superexec", "--help"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--runtime-api-address" in done.stdout
