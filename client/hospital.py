"""Which hospital a client node is, and its data.

In deployment the node config names the data (``data-path``: a prepared
folder holding ``manifest.csv``) and optionally the hospital
(``hospital-name``). In simulation the node config's ``partition-id`` picks a
virtual hospital from the partitions folder the server names in its message
config (``partitions``: ``hospitals.json`` listing each hospital's name and
manifest).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import UserError
from tasks.manifest import Manifest

_MANIFESTS: dict[Path, Manifest] = {}


@dataclass(frozen=True)
class Hospital:
    """A node's name and its manifest's path."""

    name: str
    manifest_path: Path

    def manifest(self) -> Manifest:
        """The validated manifest (read once per process)."""
        if self.manifest_path not in _MANIFESTS:
            _MANIFESTS[self.manifest_path] = Manifest.load(self.manifest_path)
        return _MANIFESTS[self.manifest_path]


def resolve_hospital(node_config: dict[str, Any], message_config: dict[str, Any]) -> Hospital:
    """The hospital a node is, from its node config (and the server's partitions in simulation)."""
    if "data-path" in node_config:
        folder = Path(str(node_config["data-path"]))
        name = str(node_config.get("hospital-name", folder.name))
        return Hospital(name, folder / "manifest.csv")
    if "partition-id" in node_config and message_config.get("partitions"):
        listing = Path(str(message_config["partitions"])) / "hospitals.json"
        hospitals = json.loads(listing.read_text())
        entry = hospitals[int(node_config["partition-id"])]
        return Hospital(entry["name"], listing.parent / entry["manifest"])
    raise UserError("node config has no data-path (and no simulation partition): "
                    "start the node with --node-config 'data-path=\"<prepared folder>\"'")
