"""Processes spinefl starts (SuperLink, SuperNodes, `flwr run`): found, watched and stopped.

The hospital's commands (a SuperNode) and the coordinator's (a SuperLink, `flwr run`)
both start Flower processes; under the one-way imports this shared room is the one
place both can use.

Every command and test that starts a Flower process stops it and everything it
started in turn (Flower's SuperExec, ServerApp and ClientApp processes, Ray
workers), found with psutil (Linux and macOS alike).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import psutil

from tasks.errors import UserError
from tasks.locks import held_locks

# Flower's executables, installed beside the running Python.
BIN = Path(sys.executable).parent
# Nothing a spinefl process starts reports home: Flower's telemetry and update check, Ray's
# usage statistics.
QUIET = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
         "RAY_DISABLE_USAGE_STATS": "1"}


def _ephemeral_start() -> int:
    """The first port of the kernel's range for outgoing connections (Linux; 32768 else)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses now, below the kernel's range for outgoing
    connections, so that none takes it meanwhile (a SuperLink or proxy restarted on the same
    port finds it free). Drawn with the OS's randomness: runs seed ``random`` alike."""
    start = _ephemeral_start()
    draw = random.SystemRandom()
    for _ in range(100):
        port = draw.randrange(max(1024, start - 12000), start)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:  # that range is full: any port the OS gives
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def descendants(*roots: int) -> set[int]:
    """Every live process below any of ``roots`` (one look at the process table)."""
    children: dict[int, list[int]] = {}
    for process in psutil.process_iter(["ppid"]):
        children.setdefault(process.info["ppid"], []).append(process.pid)
    found, stack = set(), list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def stop_tree(process: subprocess.Popen, grace: float = 15.0) -> None:
    """Stop a process and everything below it, what it starts while stopping included
    (a Ray worker restarting): SIGTERM, SIGKILL after ``grace`` s; returns once all are gone."""
    _stop_all(lambda alive: {process.pid} | descendants(process.pid, *alive), grace)
    process.wait(timeout=10)


def stop_below(pid: int, grace: float = 15.0, also: Iterable[psutil.Process] = ()) -> None:
    """Stop everything below process ``pid`` (not ``pid`` itself), and every process of
    ``also`` still running (the same process: psutil checks its start time; and what is
    below it), as ``stop_tree`` does."""
    known = list(also)

    def find(alive: set[int]) -> set[int]:
        extra = {process.pid for process in known if process.is_running()}
        return extra | descendants(pid, *extra, *alive)

    _stop_all(find, grace)


def _stop_all(find: Callable[[set[int]], set[int]], grace: float) -> None:
    """SIGTERM whatever ``find`` (given the pids still alive) returns, again and again until
    all are gone or ``grace`` s pass; then SIGKILL the rest and wait up to 10 s."""
    tree: set[int] = set()
    deadline = time.monotonic() + grace
    while True:
        found = find({pid for pid in tree if _alive(pid)})
        for pid in found - tree:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        tree |= found
        if time.monotonic() > deadline or not any(_alive(pid) for pid in tree):
            break
        time.sleep(0.2)
    tree |= _kill_at_once(lambda frozen: find(frozen | {pid for pid in tree if _alive(pid)}))
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and any(_alive(pid) for pid in tree):
        time.sleep(0.1)


def kill_tree(pid: int) -> None:
    """SIGKILL process ``pid`` and everything below it at once, as a power cut would."""
    _kill_at_once(lambda frozen: {pid} | descendants(pid, *frozen))


def _kill_at_once(find: Callable[[set[int]], set[int]]) -> set[int]:
    """SIGSTOP whatever ``find`` (given the pids stopped so far) returns until nothing new
    appears, then SIGKILL them all; the pids. Stopped first, none sees another die and acts
    on it (an nginx master forks a new worker for a killed one: an orphan holding the
    port)."""
    frozen: set[int] = set()
    while found := {pid for pid in find(frozen) - frozen if _alive(pid)}:
        for pid in found:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        frozen |= found
    for pid in frozen:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return frozen


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, waiting to be reaped, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def spawn(command: list[str], **options: Any) -> subprocess.Popen:
    """Start ``command`` (``subprocess.Popen`` ``options``) in its own session under a guard
    (``tasks.guard``): it and everything it starts end when this process ends, a SIGKILL
    included. The guard holds this process's folder locks until they have all ended."""
    guard = [sys.executable, "-m", "tasks.guard", str(os.getpid()), *command]
    return subprocess.Popen(guard, start_new_session=True, pass_fds=held_locks(), **options)


def flower_env(home: Path) -> dict[str, str]:
    """The environment Flower's processes run in: their own Flower home (``FLWR_HOME``),
    this environment's executables first on PATH (SuperLink and SuperNode start Flower's
    helper processes by name), nothing reported home (``QUIET``)."""
    return {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            **QUIET}


def wait_until_healthy(port: int, process: subprocess.Popen, timeout: float) -> None:
    """Return once a plain-HTTP SuperLink answers ``/health`` on 127.0.0.1:``port``;
    RuntimeError if it exits or stays silent for ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the SuperLink exited with status {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the SuperLink did not answer on port {port} in {timeout:g} s")


def run_in_foreground(commands: dict[str, list[str]], env: dict[str, str], cwd: Path
                      ) -> None:
    """Run long-lived processes (what each is -> its command) until one exits or this
    process is stopped (Ctrl-C, SIGTERM, SIGHUP: see ``tasks.stops``), then stop them all
    and everything they started; UserError naming the one that ended by itself."""
    processes = {what: spawn(command, env=env, cwd=cwd) for what, command in commands.items()}
    try:
        while not (ended := {what: p.returncode for what, p in processes.items()
                             if p.poll() is not None}):
            time.sleep(0.3)
    finally:
        for process in processes.values():
            stop_tree(process)
    what, status = next(iter(ended.items()))
    if status != 0 or len(processes) > 1:
        raise UserError(f"{what} exited with status {status} (its log is above)")
