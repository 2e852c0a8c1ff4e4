"""The node's warm worker: requests served by forks of a process that has already imported
what they need.

Flower's SuperNode starts a process for every request (the launcher, ``client.launcher``),
and importing torch, MONAI and the tasks costs seconds each time, every round.
``spinefl hospital join`` starts this worker beside the SuperNode: it imports the
installed ClientApp and everything its requests use once, then listens on a Unix socket
in the hospital's owner-only ``.spinefl`` folder. The launcher, once it has checked that
the hospital approved the run's bundle, hands the request (message and context, as
Flower's protobuf) to the worker; the worker forks and the child answers it and exits,
so a crash ends that request only, as it did in the launcher (children ask the kernel's
out-of-memory killer to take them first).
A launcher that goes away (a stopped run) takes its child with it. Without a worker
listening (``--no-worker``, still importing, or a data path too long for a Unix socket)
the launcher serves the request itself; a worker that dies stops ``hospital join``, as
any of its processes would (a service restarts it).

Only the hospital's account reaches the socket (0600 in a 0700 folder); what it runs is
the ClientApp installed at the hospital, as the launcher would.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path

from flwr.app import Context, Message
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    message_from_proto,
    message_to_proto,
)
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.supercore.task_identity import TaskIdentity

from tasks.stops import SIGNALS, Stopped, handle_stops

SOCKET = Path(".spinefl") / "worker.sock"
# The installed ClientApp and what its requests import (torch, MONAI, Opacus, the tasks).
WARM = ("client.app", "client.rounds", "client.privacy", "client.secure_aggregation",
        "opacus", "opacus.accountants")
_LENGTH = struct.Struct("!Q")
_IDENTITY = struct.Struct("!QQQ")  # Flower's task, run and node ids (Messages need them)
_ANSWERED, _FAILED = b"A", b"F"


class WorkerFailed(RuntimeError):
    """The worker's child raised while answering (its text is the exception's)."""


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


def ask(folder: Path, message: Message, context: Context) -> tuple[Message, Context] | None:
    """The worker's reply and context after answering ``message``; None when no worker
    listens for ``folder`` (the caller answers itself). WorkerFailed when the answer
    raised, or the child died before answering."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.connect(str(socket_path(folder)))
        except OSError:
            return None
        _send(connection, _IDENTITY.pack(TaskIdentity.task_id, TaskIdentity.run_id,
                                         TaskIdentity.node_id))
        _send(connection, message_to_proto(message).SerializeToString())
        _send(connection, context_to_proto(context).SerializeToString())
        try:
            status = _receive(connection)
            if status == _FAILED:
                raise WorkerFailed(_receive(connection).decode(errors="replace"))
            reply = message_from_proto(ProtoMessage.FromString(_receive(connection)))
            state = context_from_proto(ProtoContext.FromString(_receive(connection)))
        except (EOFError, OSError):
            raise WorkerFailed("the node's worker died while answering (see its log)") \
                from None
    return reply, state


def serve(folder: Path) -> None:
    """Import what requests need, then answer each connection in a fork until stopped."""
    for name in WARM:
        importlib.import_module(name)

    path = socket_path(folder)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    children: dict[int, socket.socket] = {}  # child pid -> its launcher's connection
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


def _serve_once(server: socket.socket, children: dict[int, socket.socket]) -> None:
    """Wait up to a second: fork a child for a new connection, kill the child of a launcher
    that hung up (POLLRDHUP: the request's data arriving does not count), reap ended ones."""
    poll = select.poll()
    poll.register(server, select.POLLIN)
    by_fd = {connection.fileno(): pid for pid, connection in children.items()}
    for fd in by_fd:
        poll.register(fd, select.POLLRDHUP)
    for fd, _ in poll.poll(1000):
        if fd == server.fileno():
            connection, _ = server.accept()
            signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # none between fork and reset
            pid = os.fork()
            if pid == 0:  # the child: answer, then exit whatever happens (never serve)
                status = 1
                try:
                    for name in SIGNALS:
                        signal.signal(name, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
                    with contextlib.suppress(OSError):  # under memory pressure, this one
                        Path("/proc/self/oom_score_adj").write_text("1000")
                    server.close()
                    for other in children.values():
                        other.close()
                    status = _answer(connection)
                finally:
                    os._exit(status)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            children[pid] = connection
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(by_fd[fd], signal.SIGKILL)
    for pid in list(children):
        ended, _ = os.waitpid(pid, os.WNOHANG)
        if ended:
            children.pop(pid).close()


def _answer(connection: socket.socket) -> int:
    """In the child: read the request, answer it with the ClientApp, write the reply."""
    from client.app import app

    try:
        identity = _IDENTITY.unpack(_receive(connection))
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = identity
        message = message_from_proto(ProtoMessage.FromString(_receive(connection)))
        context = context_from_proto(ProtoContext.FromString(_receive(connection)))
        started = time.perf_counter()
        try:
            reply = app(message, context)
        except Exception as e:  # the launcher replies with it, as Flower would
            _send(connection, _FAILED)
            _send(connection, f"{type(e).__name__}: {e}".encode())
            return 1
        print(f"{message.metadata.message_type} request of run {message.metadata.run_id} "
              f"answered in {time.perf_counter() - started:.1f} s", flush=True)
        _send(connection, _ANSWERED)
        _send(connection, message_to_proto(reply).SerializeToString())
        _send(connection, context_to_proto(context).SerializeToString())
        return 0
    except (OSError, EOFError):  # the launcher went away
        return 1
    except Exception:  # the reply could not be made or sent: say why in the worker's log
        traceback.print_exc()
        return 1
    finally:
        connection.close()
        sys.stdout.flush()
        sys.stderr.flush()


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
