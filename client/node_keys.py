"""A hospital node's key pair for SuperNode authentication, in the format Flower reads.

``node.key`` is an ECDSA P-384 private key in OpenSSH format (what
``flower-supernode --auth-supernode-private-key`` loads), written owner-only;
``node.pub`` is its public key as one OpenSSH line (what the coordinator
registers with ``flwr supernode register``). Only the public key leaves the
hospital.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tasks.errors import UserError

PRIVATE, PUBLIC = "node.key", "node.pub"


def create_node_keys(out: Path, comment: str = "") -> tuple[Path, Path]:
    """Write a new key pair into ``out`` (refusing to overwrite one); the two paths."""
    private, public = out / PRIVATE, out / PUBLIC
    if private.exists() or public.exists():
        raise UserError(f"{out}: already holds a node key pair; the coordinator registered "
                        "that one (remove it first to make a new one)")
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
    public.write_text(f"{line} {comment}".strip() + "\n")
    return private, public
