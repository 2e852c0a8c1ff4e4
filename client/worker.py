"""The node's warm worker: requests served by forks of a process that has already imported
what they need.

Flower's SuperExec starts a process for every request (the launcher, ``client.launcher``),
and importing Flower, torch, MONAI and the tasks costs seconds of CPU each time, every
round. ``spinefl hospital join`` starts this worker beside the SuperNode: it imports
``client.runtime_request`` and everything a request uses once, then listens on a Unix
socket in the hospital's owner-only ``.spinefl`` folder, named to the SuperExec's
launchers in ``SPINEFL_WORKER_SOCKET``. A launcher (Python's standard library only) hands
the worker its command line (``hand_off``). The worker reads it, forks, tells the launcher
the request started, and the child serves the request as the launcher would have
(``client.runtime_request``: pulled from the SuperNode's Runtime API, the bundle's
approval checked, answered by the installed ClientApp, the reply pushed). The launcher
sends the worker the signals it gets (SIGINT, SIGTERM, SIGHUP, SIGQUIT), and the worker
passes each to the child while it has not reaped it (Flower's handlers in the child end
the request as ``flwr-clientapp``'s would). Once it reaps the child, the worker sends the
launcher the child's exit status, and the launcher exits with it.

A crash ends that request only (children ask the kernel's out-of-memory killer to take
them first): no reply leaves at once, and the SuperNode reports the ClientApp crashed
when its heartbeats stop (Flower's, within about a minute), as for a ``flwr-clientapp``
that crashed. A launcher that goes away (killed) takes its child with it. A fork that
fails leaves the launcher to serve the request itself, as it does without a worker
listening (``--no-worker``, still importing, or a data path too long for a Unix socket);
a worker that dies stops ``hospital join``, as any of its processes would (a service
restarts it).

Only the hospital's account reaches the socket (0600 in a 0700 folder); what a request
runs is the ClientApp installed at the hospital, as in the launcher.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import NamedTuple

from tasks.stops import SIGNALS, Stopped, handle_stops

SOCKET = Path(".spinefl") / "worker.sock"
# The environment variable that names the socket to the node's launchers.
WORKER_SOCKET = "SPINEFL_WORKER_SOCKET"
# What requests import: Flower's Runtime API client, the installed ClientApp, torch, MONAI,
# Opacus and the tasks; and httpcore, which httpx imports only when a request's client
# makes its first connection pool (with trio and h11: about 0.3 s of CPU, 0.7-0.9 s in
# each fork while three hospitals start a round at once on 2 cores).
WARM = ("client.runtime_request", "client.rounds", "client.privacy",
        "client.secure_aggregation", "opacus", "opacus.accountants", "httpcore")
# The signals a launcher passes on to the fork serving its request (Flower's handlers).
FORWARDED = (*SIGNALS, signal.SIGQUIT)
ACCEPT_TIMEOUT = 5.0  # seconds a launcher has to send its request once connected
_LENGTH = struct.Struct("!Q")


def socket_path(folder: Path) -> Path:
    """Where the worker of the hospital whose data is in ``folder`` listens."""
    return folder / SOCKET


def unavailable(folder: Path) -> str | None:
    """Why no worker can serve the hospital whose data is in ``folder``, or None: it needs
    Linux (a launcher that hangs up is seen with POLLRDHUP) and a socket path that fits a
    Unix socket address (107 bytes)."""
    if not hasattr(select, "POLLRDHUP"):
        return "the warm worker needs Linux"
    if len(os.fsencode(socket_path(folder.resolve()))) > 107:
        return f"{folder.resolve()}: too long a path for the worker's socket"
    return None


def hand_off(path: Path, argv: list[str]) -> int | None:
    """The exit status of the request ``flwr-clientapp``'s arguments ``argv`` name, served
    by a fork of the worker listening on ``path``, the signals this process gets sent on
    to it; None when no worker listens or it could not fork (the caller serves it; a
    signal that came meanwhile then ends this process as it would have)."""
    pending: list[int] = []
    started = False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:

        def forward(signum: int, _: object) -> None:
            if not started:
                pending.append(signum)
                return
            with contextlib.suppress(OSError):  # the worker is gone: its EOF says so
                _send(connection, str(signum).encode())

        previous = {name: signal.signal(name, forward) for name in FORWARDED}
        try:
            try:
                connection.connect(str(path))
                _send(connection, json.dumps({"argv": argv, "cwd": os.getcwd()}).encode())
                _receive(connection)  # started
            except (OSError, EOFError):
                return None
            started = True
            for signum in pending:
                forward(signum, None)
            try:
                code = int(_receive(connection))
            except (OSError, EOFError):
                print(f"spinefl: the node's worker ({path}) ended the request without an "
                      "exit status (see its log)", file=sys.stderr)
                return 1
        finally:
            for name, handler in previous.items():
                signal.signal(name, handler)
            if not started and pending:
                signal.raise_signal(pending[0])
    if code < 0:
        print(f"spinefl: the worker's fork serving the request was killed by signal {-code} "
              f"(see the worker's log, {path.parent})", file=sys.stderr)
        return 128 - code
    return code


def serve(folder: Path) -> None:
    """Import what requests need, then serve each launcher in a fork until stopped."""
    for name in WARM:
        importlib.import_module(name)

    path = socket_path(folder)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    children: dict[int, _Launcher] = {}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        previous = os.umask(0o177)
        try:
            server.bind(str(path))
        finally:
            os.umask(previous)
        server.listen()
        print(f"Worker ready on {path}", flush=True)
        try:
            while True:
                _serve_once(server, children)
        finally:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            path.unlink(missing_ok=True)


class _Launcher(NamedTuple):
    """The connection of the launcher a fork serves, when the fork started, and a descriptor
    readable once the fork has ended (None where the kernel has none: the fork's end is
    then seen within a second)."""

    connection: socket.socket
    started: float
    ended: int | None


def end_of(pid: int) -> int | None:
    """A descriptor readable once the child ``pid`` has ended, or None where the kernel
    gives none (``os.pidfd_open``: Linux 5.3 or later, unless a seccomp profile refuses)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _serve_once(server: socket.socket, children: dict[int, _Launcher]) -> None:
    """Wait until something happens, or a second: start a fork for a new launcher; pass a
    launcher's signals to its fork; kill the fork of a launcher that hung up; reap ended
    forks and send their launchers the exit status at once (a fork may leave through
    Flower's ``os._exit``, so the worker says it; the launcher's end lets its SuperExec
    ask for the next request)."""
    poll = select.poll()
    poll.register(server, select.POLLIN)
    by_fd = {launcher.connection.fileno(): pid for pid, launcher in children.items()}
    for fd in by_fd:
        poll.register(fd, select.POLLIN | select.POLLRDHUP)
    ends = {launcher.ended for launcher in children.values() if launcher.ended is not None}
    for fd in ends:
        poll.register(fd, select.POLLIN)
    for fd, events in poll.poll(1000):
        if fd in ends:  # a fork ended: reaped below
            continue
        if fd == server.fileno():
            _start(server, children)
            continue
        pid = by_fd[fd]
        try:
            signum = None if events & select.POLLRDHUP else int(
                _receive(children[pid].connection))
        except (OSError, EOFError, ValueError):
            signum = None
        with contextlib.suppress(ProcessLookupError):  # not reaped yet: still our child
            os.kill(pid, signal.SIGKILL if signum is None else signum)
    for pid in list(children):
        ended, status = os.waitpid(pid, os.WNOHANG)
        if ended:
            launcher = children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            print(f"request answered in {time.perf_counter() - launcher.started:.1f} s, "
                  f"exit status {code}", flush=True)
            with contextlib.suppress(OSError):
                _send(launcher.connection, str(code).encode())
            launcher.connection.close()
            if launcher.ended is not None:
                os.close(launcher.ended)


def _start(server: socket.socket, children: dict[int, _Launcher]) -> None:
    """Read a new launcher's request and serve it in a fork (a launcher that sends no
    request within a few seconds, or a fork that fails, is hung up on)."""
    connection, _ = server.accept()
    try:
        connection.settimeout(ACCEPT_TIMEOUT)
        request = json.loads(_receive(connection))
        connection.settimeout(None)
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # none between fork and reset
        try:
            pid = os.fork()
            if pid == 0:  # the child: serve, then exit whatever happens (never loop)
                status = 1
                try:
                    for name in SIGNALS:
                        signal.signal(name, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
                    with contextlib.suppress(OSError):  # under memory pressure, this one
                        Path("/proc/self/oom_score_adj").write_text("1000")
                    server.close()
                    connection.close()
                    for launcher in children.values():
                        launcher.connection.close()
                        if launcher.ended is not None:
                            os.close(launcher.ended)
                    status = _answer(request)
                finally:
                    os._exit(status)
            children[pid] = _Launcher(connection, time.perf_counter(), end_of(pid))
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    except (OSError, EOFError, ValueError) as e:
        print(f"a launcher's request was not started: {type(e).__name__}: {e}", flush=True)
        connection.close()
        return
    with contextlib.suppress(OSError):  # a launcher gone already: reaped later
        _send(connection, b"started")


def _answer(request: dict) -> int:
    """In the child: serve the launcher's request; its exit status."""
    from client.runtime_request import serve_command_line

    try:
        os.chdir(request["cwd"])
        serve_command_line(request["argv"])
        return 0
    except SystemExit as e:  # Flower's exit, or the arguments refused
        return _exit_status(e.code)
    except Exception:  # the request could not be served: say why in the worker's log
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _exit_status(code: object) -> int:
    """The process exit status ``sys.exit(code)`` gives (a message is printed, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _send(connection: socket.socket, data: bytes) -> None:
    connection.sendall(_LENGTH.pack(len(data)) + data)


def _receive(connection: socket.socket) -> bytes:
    (length,) = _LENGTH.unpack(_exactly(connection, _LENGTH.size))
    return _exactly(connection, length)


def _exactly(connection: socket.socket, count: int) -> bytes:
    chunks, left = [], count
    while left:
        chunk = connection.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def main() -> None:
    """``python -m client.worker --data FOLDER``: started by ``spinefl hospital join``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    folder = parser.parse_args().data.resolve()
    handle_stops()
    try:
        serve(folder)
    except Stopped as stop:
        sys.exit(128 + stop.signum)


if __name__ == "__main__":
    main()
