"""Run the Flower App on one machine: a private local SuperLink in simulation mode.

``run_federated`` starts ``flower-superlink --simulation`` on a free loopback
port with its own Flower home (so the user's ~/.flwr is never touched),
submits the app with ``flwr run`` (runtime dependency installation disabled:
there is no internet at a hospital either), streams the run's log, and stops
every process it started (the SuperLink, the simulation runtime and its Ray
workers) when the run ends, fails, or is interrupted.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from tasks.errors import UserError

APP_DIR = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONNECTION = "spinefl-local"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def stop_tree(process: subprocess.Popen, grace: float = 15.0) -> None:
    """Stop a process and everything below it: SIGTERM, then SIGKILL after ``grace`` s."""
    tree = descendants(process.pid) | {process.pid}
    for pid in tree:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.2)
    for pid in tree:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextmanager
def local_superlink(workdir: Path) -> Iterator[dict[str, str]]:
    """A SuperLink in simulation mode on 127.0.0.1; yields the environment to reach it."""
    port = free_port()
    home = workdir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
           "RAY_DISABLE_USAGE_STATS": "1", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    log = (workdir / "superlink.log").open("w")
    superlink = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--insecure", "--simulation",
         "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_until_healthy(port, superlink, timeout=60.0)
        yield env
    finally:
        stop_tree(superlink)
        log.close()


def _wait_until_healthy(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the local SuperLink exited with status {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the local SuperLink did not answer on port {port} in {timeout:g} s")


def run_federated(experiment: Path, partitions: Path, hospitals: int, workdir: Path,
                  on_line: Callable[[str], None] = lambda line: None) -> None:
    """Run the federated experiment over ``hospitals`` simulated nodes; block until done.

    Every log line of the run is written to ``workdir/run.log`` and passed to ``on_line``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    with local_superlink(workdir) as env, (workdir / "run.log").open("w") as log:
        command = [str(BIN / "flwr"), "run", str(APP_DIR), CONNECTION,
                   "--run-config", f"experiment='{experiment}' partitions='{partitions}'",
                   "--federation-config", f"num-supernodes={hospitals}", "--stream"]
        run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, start_new_session=True)
        try:
            for line in run.stdout:
                log.write(line)
                on_line(line.rstrip("\n"))
            status = run.wait()
        finally:
            if run.poll() is None:
                stop_tree(run)
        if status != 0:
            raise UserError(f"the federated run failed (status {status}); "
                            f"see {workdir / 'run.log'}")
