"""The hospital's trusted ClientApp launcher: what its SuperNode starts for every request.

Flower's SuperExec hands each request to a ``flwr-clientapp`` process, found by name on
the PATH, which would unpack the run's app bundle (FAB) and import the bundle's
``client/app.py`` ahead of anything installed: code chosen by whoever submitted the run.
``spinefl hospital join`` puts this launcher first on the SuperExec's PATH under that
name (``<data>/.spinefl/bin/flwr-clientapp``), so every request is served by
``client.runtime_request`` instead: the bundle's hash checked against the hospital's
approvals, the answer from the ClientApp installed at the hospital, never from the bundle.

Importing Flower alone costs about a second of CPU, every request of every round. So this
module imports only Python's standard library: when the node's warm worker listens (its
socket in ``SPINEFL_WORKER_SOCKET``, set by ``hospital join``), the launcher hands it
its command line and waits; a fork of the worker, Flower and the tasks already imported,
serves the request, the launcher sends on the signals it gets and exits with the fork's
status (``client.worker``). Without a worker it serves the request itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from client.worker import WORKER_SOCKET, hand_off

LAUNCHER_NAME = "flwr-clientapp"


def main() -> None:
    """``spinefl-clientapp``: the arguments of Flower's ``flwr-clientapp``."""
    argv = sys.argv[1:]
    worker = os.environ.get(WORKER_SOCKET)
    status = None if worker is None else hand_off(Path(worker), argv)
    if status is None:
        from client.runtime_request import serve_command_line

        serve_command_line(argv)
    sys.exit(status)
