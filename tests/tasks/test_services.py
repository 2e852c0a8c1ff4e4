"""systemd units for the coordinator and a hospital's node: systemd accepts them, their
command lines are the ones a person would type (absolute paths), and the coordinator's
runs and stops as systemd would run and stop it."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tasks.processes import BIN, free_port
from tests.helpers.cli import SPINEFL, assert_one_line_error, spinefl
from tests.helpers.flower_processes import flower_processes, left_after


def unit_lines(path: Path) -> dict[str, str]:
    """The unit's settings (the last of a key), comments left out."""
    found = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found[key] = value
    return found


def assert_systemd_accepts(path: Path) -> None:
    """``systemd-analyze verify`` finds nothing to say (it checks the keys, their values
    and that ExecStart's program exists and is executable); skipped without systemd."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@pytest.fixture
def coordinator(tmp_path) -> Path:
    folder = tmp_path / "coordinator"
    done = spinefl("coordinator", "init", "--out", str(folder), "--host", "localhost",
                   "--port", str(free_port()), "--superlink-port", str(free_port()))
    assert done.returncode == 0, done.stderr
    return folder


@pytest.mark.slow
def test_the_coordinator_service_runs_and_stops_as_systemd_would(coordinator, tmp_path):
    done = spinefl("coordinator", "service", "--dir", str(coordinator), "--user", "fl")
    assert done.returncode == 0, done.stderr
    unit = coordinator / "spinefl-coordinator.service"
    settings = unit_lines(unit)
    assert (settings["User"], settings["Restart"], settings["KillMode"]) == (
        "fl", "on-failure", "mixed")
    assert settings["ReadWritePaths"] == str(coordinator.resolve())
    assert "useradd --system" in unit.read_text() and "AmbientCapabilities" not in settings
    command = shlex.split(settings["ExecStart"])
    assert command == [str(BIN / "spinefl"), "coordinator", "start", "--dir",
                       str(coordinator.resolve())]
    assert_systemd_accepts(unit)
    log = tmp_path / "service.log"
    with log.open("w") as output:  # ExecStart as systemd starts it: not from a shell
        service = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                   cwd=settings["WorkingDirectory"], start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "Uvicorn running" not in log.read_text():
            assert service.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        os.kill(service.pid, signal.SIGTERM)  # KillMode=mixed: the main process only
        assert service.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if service.poll() is None:
            service.kill()
    assert left_after(lambda: flower_processes(tmp_path), 10) == set()


def test_a_node_service_runs_join_with_its_options(coordinator, tiny_cohort, tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    tiny_cohort.select(site="ct-a").with_absolute_paths(data).save(data / "manifest.csv")
    keys = tmp_path / "keys"
    assert spinefl("hospital", "keys", "--out", str(keys), "--name", "ct-a").returncode == 0
    relative = os.path.relpath(data)
    join = ["--superlink", "fl.example.org:9093", "--data", relative, "--key",
            str(keys / "node.key"), "--ca", str(coordinator / "ca.crt"), "--name", "ct-a",
            "--max-epsilon", "8", "--no-worker"]
    done = spinefl("hospital", "service", "--user", "fl", "--", *join)
    assert done.returncode == 0, done.stdout + done.stderr
    unit = data / "spinefl-node.service"
    settings = unit_lines(unit)
    command = shlex.split(settings["ExecStart"])
    assert command[:3] == [str(BIN / "spinefl"), "hospital", "join"]
    options = dict(zip(command[3::2], command[4::2], strict=False))
    assert options["--data"] == str(data.resolve()) and options["--max-epsilon"] == "8.0"
    assert options["--superlink"] == "fl.example.org:9093" and "--no-worker" in command
    assert "--runtime-port" not in command  # defaults stay defaults
    assert settings["ReadWritePaths"] == str(data.resolve()) and settings["User"] == "fl"
    assert_systemd_accepts(unit)

    unit.unlink()
    bad = [value if value != "fl.example.org:9093" else "no-port" for value in join]
    assert_one_line_error(spinefl("hospital", "service", "--", *bad),
                          "--superlink 'no-port': expected host:port")
    assert not unit.exists()
    assert_one_line_error(spinefl("coordinator", "service", "--dir", str(coordinator),
                                  "--user", "a b"), "--user 'a b': not a user name")
    assert SPINEFL.is_file()
