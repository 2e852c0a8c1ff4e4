"""A hospital's SuperNode: how ``spinefl hospital join`` starts ``flower-supernode``.

The node connects to the coordinator's SuperLink (through its proxy) over TLS,
trusting only the coordinator's CA (``--root-certificates``), and authenticates
with the hospital's private node key (``--auth-supernode-private-key``; the
coordinator registered the public half). Its node config, written to
``<data>/.spinefl/node-config.toml``, names the prepared data folder, the
hospital's name, its privacy budget, its limit on evaluations and the tasks it
accepts (``client.hospital``). Flower's own files (the bundles it is sent)
live in ``<data>/.spinefl/flower``.

The SuperNode runs with process isolation: it only queues requests on its local
Runtime API (127.0.0.1, ``--runtime-port``), which hands them out only to a
holder of the node's secret (``<data>/.spinefl/superexec.secret``), so no other
account on the machine can take them. ``spinefl hospital join`` starts the
SuperExec that holds it; for each request it starts a program by name:
``flwr-clientapp`` for a ClientApp, others (``flwr-agentapp``, ...) for other
kinds, each of which would import the bundle's code. Its whole PATH is
``<data>/.spinefl/bin``: the hospital's launcher as ``flwr-clientapp``
(``client.launcher``: requests of bundles the hospital approved are served by
the ClientApp installed here, never by code from a bundle; in a fork of the node's warm
worker, ``client.worker``, when it runs) and, for every other
task kind, a stub that refuses. Nothing is installed at run time. A data folder
others can write to is refused (the ledger, audit log and approvals live in
it); ``.spinefl`` is kept owner-only.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.supercore.constant import TASK_TYPE_TO_COMMAND

from client.launcher import LAUNCHER_NAME
from client.worker import WORKER_SOCKET, socket_path
from tasks.device import select_device
from tasks.errors import UserError
from tasks.manifest import Manifest
from tasks.processes import BIN

NODE_CONFIG = Path(".spinefl") / "node-config.toml"
FLOWER_HOME = Path(".spinefl") / "flower"
LAUNCHERS = Path(".spinefl") / "bin"


@dataclass(frozen=True)
class Membership:
    """What a hospital's node needs to join a federation."""

    superlink: str
    data: Path
    key: Path
    ca: Path | None = None
    name: str = ""
    max_epsilon: float | None = None
    delta: float = 1e-5
    accept_tasks: tuple[str, ...] = ()
    runtime_port: int = 9094
    device: str = "auto"
    max_evaluations: int | None = None


def check_membership(member: Membership) -> None:
    """Refuse, with one line naming the file, what would make the node fail later."""
    host, _, port = member.superlink.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--superlink '{member.superlink}': expected host:port")
    data = member.data.resolve()
    if ":" in str(data):
        raise UserError(f"--data {data}: a ':' in the path cannot be on the node's PATH "
                        "(its launcher lives there); move or link the folder")
    if data.is_dir() and data.stat().st_mode & 0o022:
        raise UserError(f"--data {data}: writable by group or others (its privacy ledger, "
                        "audit log and approvals live here); chmod go-w it")
    Manifest.load(member.data / "manifest.csv")
    try:
        key = load_ssh_private_key(member.key.read_bytes(), None)
    except (OSError, ValueError) as e:
        raise UserError(f"{member.key}: not a readable OpenSSH private key "
                        f"(made by `spinefl hospital keys`): {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UserError(f"{member.key}: Flower needs an elliptic-curve (NIST) node key")
    if member.key.stat().st_mode & 0o077:
        raise UserError(f"{member.key}: readable by others; chmod 600 it")
    if member.max_epsilon is not None and member.max_epsilon <= 0:
        raise UserError(f"--max-epsilon {member.max_epsilon:g}: must be > 0")
    if not 0 < member.delta < 1:
        raise UserError(f"--delta {member.delta:g}: must be in (0, 1)")
    if member.max_evaluations is not None and member.max_evaluations < -1:
        raise UserError(f"--max-evaluations {member.max_evaluations}: must be >= 0 "
                        "(or -1: no limit)")
    select_device(member.device)
    if member.ca is None:
        raise UserError("--ca: the coordinator's ca.crt is needed")
    try:
        x509.load_pem_x509_certificate(member.ca.read_bytes())
    except (OSError, ValueError) as e:
        raise UserError(f"{member.ca}: not a PEM certificate: {e}") from None


def write_node_config(member: Membership) -> Path:
    """The node config file for ``--node-config`` (``client.hospital`` reads its keys)."""
    data = member.data.resolve()
    config: dict[str, object] = {"data-path": str(data),
                                 "hospital-name": member.name or data.name,
                                 "delta": member.delta, "device": member.device}
    if member.max_epsilon is not None:
        config["max-epsilon"] = member.max_epsilon
    if member.accept_tasks:
        config["accept-tasks"] = ",".join(member.accept_tasks)
    if member.max_evaluations is not None:
        config["max-evaluations"] = member.max_evaluations
    path = node_folder(data) / NODE_CONFIG.name
    path.write_text(tomli_w.dumps(config))
    return path


def node_folder(data: Path) -> Path:
    """``<data>/.spinefl``, the node's own files (config, keys, approvals, launchers),
    made owner-only whatever the umask or an earlier mode."""
    folder = data.resolve() / NODE_CONFIG.parent
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


def superexec_secret(data: Path) -> Path:
    """``<data>/.spinefl/superexec.secret`` (32 random bytes, owner-only, made once): what
    the SuperExec proves itself with to the SuperNode's local Runtime API, so that no other
    local account can take the node's requests."""
    path = node_folder(data) / "superexec.secret"
    if not path.is_file():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(os.urandom(32))
    return path


def install_launchers(data: Path) -> Path:
    """``<data>/.spinefl/bin``, the SuperExec's whole PATH: the hospital's launcher as
    ``flwr-clientapp`` and, for every other kind of task Flower's SuperExec could be asked
    to start (``flwr-agentapp``, ``flwr-serverapp``, ...: each would run the bundle's code),
    a stub that refuses."""
    launcher = BIN / "spinefl-clientapp"
    if not launcher.is_file():
        raise UserError(f"{launcher}: not installed (pip install spinefl)")
    folder = node_folder(data) / LAUNCHERS.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700)
    for command in TASK_TYPE_TO_COMMAND.values():
        if command == LAUNCHER_NAME:
            (folder / command).symlink_to(launcher)
            continue
        stub = folder / command
        stub.write_text(f"#!/bin/sh\necho 'spinefl: this node runs ClientApps only; "
                        f"{command} refused' >&2\nexit 1\n")
        stub.chmod(0o700)
    return folder


def supernode_command(member: Membership) -> list[str]:
    """The ``flower-supernode`` command line for this membership (checked first), through
    ``client.prompt_supernode`` (Flower's SuperNode, looking for the next message promptly
    after a reply): process isolation, its local Runtime API open only to holders of
    ``superexec_secret``."""
    check_membership(member)
    return [sys.executable, "-P", "-m", "client.prompt_supernode",
            "--superlink", member.superlink,
            "--auth-supernode-private-key", str(member.key.resolve()),
            "--node-config", str(write_node_config(member)),
            "--port", str(member.runtime_port),
            "--root-certificates", str(member.ca.resolve()),
            "--isolation", "process",
            "--superexec-auth-secret-file", str(superexec_secret(member.data))]


def superexec_command(member: Membership) -> list[str]:
    """The ``flower-superexec`` command line that serves the node's requests, through
    ``client.prompt_superexec`` (Flower's SuperExec, not asking for requests while one is
    served): it claims them from the SuperNode's Runtime API on 127.0.0.1 with the secret
    and starts, by name from ``install_launchers``' folder, the hospital's launcher for
    each."""
    return [sys.executable, "-P", "-m", "client.prompt_superexec",
            "--runtime-api-address", f"127.0.0.1:{member.runtime_port}", "--insecure",
            "--superexec-auth-secret-file", str(superexec_secret(member.data))]


def worker_command(member: Membership) -> list[str]:
    """The node's warm worker (``client.worker``): the launchers hand it their requests."""
    return [sys.executable, "-P", "-m", "client.worker", "--data", str(member.data.resolve())]


# How often the SuperExec looks for a request to start while none it started runs
# (Flower's default: every 1 s; each look costs the SuperExec and the SuperNode about 5 ms
# of CPU).
TASK_POLL_INTERVAL = "0.5"


def supernode_env(member: Membership, base: dict[str, str]) -> dict[str, str]:
    """The environment of the SuperNode, its SuperExec and the node's worker: ``base`` with
    ``install_launchers``' folder as the whole PATH, so nothing else can be started by
    name, the SuperExec looking for requests every ``TASK_POLL_INTERVAL`` s, and the
    worker's socket named to the launchers (``client.worker``; a launcher that finds no
    worker there serves its request itself)."""
    return {**base, "PATH": str(install_launchers(member.data)),
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": TASK_POLL_INTERVAL,
            WORKER_SOCKET: str(socket_path(member.data.resolve()))}
