"""A hospital's SuperNode: how ``spinefl hospital join`` starts ``flower-supernode``.

The node connects to the coordinator's SuperLink over TLS, trusting only the
coordinator's CA (``--root-certificates``), and authenticates with the
hospital's private node key (``--auth-supernode-private-key``; the coordinator
registered the public half). Its node config, written to
``<data>/.spinefl/node-config.toml``, names the prepared data folder, the
hospital's name, its privacy budget and the tasks it accepts
(``client.hospital``). Flower's own files (the apps it is sent) live in
``<data>/.spinefl/flower``. Runtime dependency installation stays off
(flower-supernode's default): a node runs only what is installed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from tasks.device import select_device
from tasks.errors import UserError
from tasks.manifest import Manifest
from tasks.processes import BIN

NODE_CONFIG = Path(".spinefl") / "node-config.toml"
FLOWER_HOME = Path(".spinefl") / "flower"


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
    insecure: bool = False
    device: str = "auto"


def check_membership(member: Membership) -> None:
    """Refuse, with one line naming the file, what would make the node fail later."""
    host, _, port = member.superlink.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--superlink '{member.superlink}': expected host:port")
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
    select_device(member.device)
    if member.insecure:
        return
    if member.ca is None:
        raise UserError("--ca: the coordinator's ca.crt is needed (or --insecure for local "
                        "testing)")
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
    path = data / NODE_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(config))
    return path


def supernode_command(member: Membership) -> list[str]:
    """The ``flower-supernode`` command line for this membership (checked first)."""
    check_membership(member)
    command = [str(BIN / "flower-supernode"), "--superlink", member.superlink,
               "--auth-supernode-private-key", str(member.key.resolve()),
               "--node-config", str(write_node_config(member)),
               "--port", str(member.runtime_port)]
    if member.insecure:
        return [*command, "--insecure"]
    return [*command, "--root-certificates", str(member.ca.resolve())]
