"""The node's warm worker and its launcher, really started: a launcher hands its command line
to the worker, a fork of the worker serves it with Flower's Runtime API client (the
launcher itself never imports Flower), the launcher passes on its signals and exits with
the fork's status; only the hospital's account reaches the socket, and a request whose
launcher goes away or whose fork dies ends cleanly.

The Runtime API here is a plain HTTP server on 127.0.0.1 that answers every call with one
status and records it: what is tested is the hand-off, not Flower's API (a real SuperNode's
is served in tests/e2e/test_deployment.py, where every request goes through the worker).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from client.worker import WORKER_SOCKET, socket_path
from tasks.processes import BIN, descendants, stop_tree
from tests.helpers.deployment import ROOT

pytestmark = pytest.mark.slow  # a real worker process, seconds to import

TOKEN = "a-token-of-this-request"


class RuntimeAPI(ThreadingHTTPServer):
    """Answers every call with ``status`` (a 503 is retried by Flower's client for ever: a
    request in progress) and records the path and token of each."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.status = 503
        self.calls: list[tuple[str, str]] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: RuntimeAPI

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.calls.append((self.path, " ".join(
            value for name, value in self.headers.items() if TOKEN in value)))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def runtime_api() -> Iterator[RuntimeAPI]:
    server = RuntimeAPI()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    """A hospital folder and its running worker; it removes its socket when stopped."""
    folder = tmp_path_factory.mktemp("hospital")
    log = (folder / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "client.worker", "--data", str(folder)],
                              stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "Worker ready" not in (folder / "worker.log").read_text():
        assert worker.poll() is None and time.monotonic() < deadline, \
            (folder / "worker.log").read_text()
        time.sleep(0.2)
    yield folder, worker
    stop_tree(worker)
    log.close()
    assert worker.returncode == 128 + 15 and not socket_path(folder).exists()


def launch(socket: Path, api: RuntimeAPI) -> subprocess.Popen:
    """The launcher as the SuperExec starts it for a request (``flwr-clientapp``'s
    arguments), the worker's socket in its environment."""
    return subprocess.Popen([str(BIN / "spinefl-clientapp"), "--runtime-api-address",
                             api.address, "--token", TOKEN, "--insecure"],
                            env={**os.environ, WORKER_SOCKET: str(socket)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def serving(worker: subprocess.Popen, launcher: subprocess.Popen, api: RuntimeAPI) -> int:
    """The pid of the worker's fork once it is calling the Runtime API for ``launcher``."""
    deadline = time.monotonic() + 60
    while not (api.calls and descendants(worker.pid)):
        assert launcher.poll() is None, launcher.communicate()
        assert time.monotonic() < deadline, "no fork of the worker took the request"
        time.sleep(0.1)
    (fork,) = descendants(worker.pid)
    return fork


def idle(worker: subprocess.Popen) -> None:
    """Wait until the worker has reaped the forks of earlier requests (within a second)."""
    deadline = time.monotonic() + 10
    while descendants(worker.pid):
        assert time.monotonic() < deadline, "an earlier request's fork is still there"
        time.sleep(0.1)


def test_the_launcher_imports_nothing_but_the_standard_library():
    """What every request pays before the hand-off: no Flower, torch or tasks."""
    def loaded(statement: str) -> set[str]:
        return set(subprocess.run([sys.executable, "-c", f"import sys{statement}; "
                                   "print(' '.join(sys.modules))"],
                                  capture_output=True, text=True, check=True).stdout.split())

    at_start = loaded("")  # what the interpreter and the venv's .pth files load anyway
    ours = {"client", "client.launcher", "client.worker", "tasks", "tasks.stops"}
    others = [name for name in loaded(", client.launcher") - at_start - ours
              if name.split(".")[0] not in sys.stdlib_module_names]
    assert not others, others


def test_a_request_imports_nothing_the_worker_has_not_imported_before_it_calls_flower():
    """The fork's first steps, making Flower's Runtime API client and its first request
    (here to a closed port), load no module the worker left out (httpx imports its
    transport lazily: about 0.3 s of CPU in every fork)."""
    statement = ("import contextlib, importlib, sys\n"
                 "from client.worker import WARM\n"
                 "for name in WARM: importlib.import_module(name)\n"
                 "before = set(sys.modules)\n"
                 "from client.runtime_request import RuntimeHttpClient\n"
                 "from flwr.supernode.runtime.run_clientapp import PullTaskInputRequest\n"
                 "client = RuntimeHttpClient.from_server_address(server_address='127.0.0.1:9',"
                 " insecure=True, root_certificates=None, interceptors=[])\n"
                 "with contextlib.suppress(Exception):\n"
                 "    client.PullTaskInput(PullTaskInputRequest())\n"
                 "print(' '.join(sorted(set(sys.modules) - before)))")
    loaded = subprocess.run([sys.executable, "-c", statement], capture_output=True,
                            text=True, check=True, cwd=ROOT).stdout.split()
    assert not loaded, loaded


def test_a_fork_of_the_worker_serves_the_request_and_the_launcher_exits_with_its_status(
        hospital, runtime_api):
    """The fork calls the Runtime API at the launcher's address with its token; refused
    (401, as a SuperNode refuses an unknown token), Flower's client stops the request (a
    graceful exit, status 0, as in ``flwr-clientapp``) and the launcher exits with the
    fork's status; only the hospital's account reaches the socket."""
    folder, worker = hospital
    assert stat.S_IMODE(socket_path(folder).stat().st_mode) == 0o600
    assert stat.S_IMODE(socket_path(folder).parent.stat().st_mode) == 0o700
    idle(worker)
    answered = (folder / "worker.log").read_text().count("answered in")
    launcher = launch(socket_path(folder), runtime_api)
    fork = serving(worker, launcher, runtime_api)
    assert fork != launcher.pid
    runtime_api.status = 401
    _, errors = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, errors
    assert all(TOKEN in token for _, token in runtime_api.calls), runtime_api.calls
    log = (folder / "worker.log").read_text()
    assert log.count("answered in") == answered + 1
    assert "Task stopped" in log.split("Worker ready")[-1]  # Flower's own stop, in the fork
    assert log.rstrip().endswith(f"exit status {launcher.returncode}"), log[-2000:]
    assert worker.poll() is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT])
def test_a_stopped_launcher_stops_its_fork_through_flower(hospital, runtime_api, signum):
    """A signal Flower handles, sent to the launcher (a node stopping), reaches the fork,
    whose Flower handlers report the request to the Runtime API and end it; the launcher
    exits with the fork's status."""
    folder, worker = hospital
    idle(worker)
    launcher = launch(socket_path(folder), runtime_api)
    fork = serving(worker, launcher, runtime_api)
    assert not [path for path, _ in runtime_api.calls if path.endswith("push-task-output")]
    launcher.send_signal(signum)
    _, errors = launcher.communicate(timeout=60)
    assert fork not in descendants(worker.pid)
    # The fork's Flower handler told the Runtime API the request ended, as flwr-clientapp's
    assert [path for path, _ in runtime_api.calls if path.endswith("push-task-output")]
    log = (folder / "worker.log").read_text()
    assert log.rstrip().endswith(f"exit status {launcher.returncode}"), log[-2000:]
    assert "without an exit status" not in errors and "killed" not in errors, errors
    assert worker.poll() is None


def test_a_launcher_that_goes_away_takes_its_request_with_it(hospital, runtime_api):
    """A launcher killed mid-request (a SuperExec gone): the worker kills the fork serving it
    within seconds, and serves the next request."""
    folder, worker = hospital
    idle(worker)
    launcher = launch(socket_path(folder), runtime_api)
    fork = serving(worker, launcher, runtime_api)
    launcher.kill()
    launcher.communicate()
    deadline = time.monotonic() + 10
    while fork in descendants(worker.pid):
        assert time.monotonic() < deadline, "the abandoned request's fork is still running"
        time.sleep(0.1)
    runtime_api.calls.clear()
    runtime_api.status = 401
    answered = (folder / "worker.log").read_text().count("answered in")
    _, errors = launch(socket_path(folder), runtime_api).communicate(timeout=60)
    assert runtime_api.calls and worker.poll() is None, errors
    assert (folder / "worker.log").read_text().count("answered in") == answered + 1


def test_a_launcher_that_sends_no_request_is_hung_up_on(hospital, runtime_api):
    """A local process that connects and sends garbage, or nothing: the worker logs it,
    forks nothing and serves the next launcher."""
    import socket as sockets

    folder, worker = hospital
    idle(worker)
    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as garbage:
        garbage.connect(str(socket_path(folder)))
        garbage.sendall(b"\x00" * 7 + b"\x03abc")
        assert garbage.recv(16) == b""  # hung up on
    assert not descendants(worker.pid)
    assert "was not started" in (folder / "worker.log").read_text()
    runtime_api.status = 401
    _, errors = launch(socket_path(folder), runtime_api).communicate(timeout=60)
    assert runtime_api.calls and worker.poll() is None, errors


def test_a_fork_that_dies_fails_its_request_not_the_worker(hospital, runtime_api):
    """The launcher learns of its fork's end at once (its SuperExec waits for the launcher
    to end before asking for the next request), not at the worker's next look."""
    folder, worker = hospital
    waits = []
    for _ in range(4):  # a worker that looked every second would be seen in one of them
        idle(worker)
        launcher = launch(socket_path(folder), runtime_api)
        fork = serving(worker, launcher, runtime_api)
        killed = time.monotonic()
        os.kill(fork, signal.SIGKILL)  # out of memory, as the kernel would
        _, errors = launcher.communicate(timeout=30)
        waits.append(time.monotonic() - killed)
        assert launcher.returncode == 128 + 9 and "killed by signal 9" in errors, errors
    assert max(waits) < 0.4, waits
    assert worker.poll() is None


def test_without_a_worker_the_launcher_serves_the_request_itself(tmp_path, runtime_api):
    runtime_api.status = 401
    launcher = launch(tmp_path / "no-worker.sock", runtime_api)
    output, errors = launcher.communicate(timeout=60)
    assert runtime_api.calls and launcher.returncode == 0, errors
    assert "Task stopped" in output + errors  # Flower's own stop, in the launcher itself
