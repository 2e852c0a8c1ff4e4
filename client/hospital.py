"""Which hospital a client node is, and its data.

In deployment the node config names the data (``data-path``: a prepared
folder holding ``manifest.csv``), optionally the hospital (``hospital-name``),
its privacy budget (``max-epsilon``, ``delta``), the tasks it accepts
(``accept-tasks``, comma-separated; all when absent), how many evaluation
requests it answers over all runs (``max-evaluations``; an evaluation
releases validation metrics that no DP accountant covers, so a node with a
budget answers at most ``DEFAULT_MAX_EVALUATIONS`` unless it says otherwise)
and the device it trains on (``device``: ``auto``, ``cpu``, ``cuda[:N]``, ``mps``; the
hospital's choice, never the coordinator's). In simulation the node config's
``partition-id`` picks a virtual hospital from the partitions folder the server names in its message
config (``partitions``: ``hospitals.json`` listing each hospital's name,
manifest, budget and device). The privacy ledger lives
in the hospital's data folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import UserError

if TYPE_CHECKING:
    from tasks.manifest import Manifest

DEFAULT_DELTA = 1e-5


@dataclass(frozen=True)
class Budget:
    """The hospital's limit: total epsilon at its delta (None = no limit, ledger only)."""

    max_epsilon: float | None
    delta: float


NO_LIMIT = Budget(None, DEFAULT_DELTA)
DEFAULT_MAX_EVALUATIONS = 100

_MANIFESTS: dict[Path, Manifest] = {}


@dataclass(frozen=True)
class Hospital:
    """A node's name, its manifest's path and its privacy budget."""

    name: str
    manifest_path: Path
    budget: Budget = NO_LIMIT
    accepted_tasks: tuple[str, ...] | None = None
    device: str = "auto"
    max_evaluations: int | None = None

    @property
    def folder(self) -> Path:
        """The hospital's data folder (where its privacy ledger is kept)."""
        return self.manifest_path.parent

    @property
    def prepared_folder(self) -> Path:
        """Where its prepared training data is cached (owner-only; ``tasks.blocks.cache``)."""
        return self.folder / ".spinefl" / "prepared"

    def manifest(self) -> Manifest:
        """The validated manifest (read once per process)."""
        from tasks.manifest import Manifest  # pandas: only for requests that read data

        if self.manifest_path not in _MANIFESTS:
            _MANIFESTS[self.manifest_path] = Manifest.load(self.manifest_path)
        return _MANIFESTS[self.manifest_path]


def resolve_hospital(node_config: dict[str, Any], message_config: dict[str, Any]) -> Hospital:
    """The hospital a node is, from its node config (and the server's partitions in simulation)."""
    if "data-path" in node_config:
        folder = Path(str(node_config["data-path"]))
        name = str(node_config.get("hospital-name", folder.name))
        accepted = node_config.get("accept-tasks")
        tasks = tuple(t.strip() for t in str(accepted).split(",") if t.strip()) \
            if accepted is not None else None
        budget = _budget(node_config, "max-epsilon")
        return Hospital(name, folder / "manifest.csv", budget, tasks,
                        str(node_config.get("device", "auto")),
                        _evaluations(node_config, budget))
    if "partition-id" in node_config and message_config.get("partitions"):
        listing = Path(str(message_config["partitions"])) / "hospitals.json"
        hospitals = json.loads(listing.read_text())
        entry = hospitals[int(node_config["partition-id"])]
        return Hospital(entry["name"], listing.parent / entry["manifest"],
                        _budget(entry, "max_epsilon"), device=entry.get("device", "auto"))
    raise UserError("node config has no data-path (and no simulation partition): "
                    "start the node with --node-config 'data-path=\"<prepared folder>\"'")


def _budget(config: dict[str, Any], max_key: str) -> Budget:
    """The budget a node (or virtual hospital) sets; no ``max-epsilon`` means no limit."""
    try:
        limit = float(config[max_key]) if config.get(max_key) is not None else None
        delta = float(config.get("delta", DEFAULT_DELTA))
    except (TypeError, ValueError) as e:
        raise UserError(f"node config: {max_key} and delta must be numbers ({e})") from None
    if (limit is not None and limit <= 0) or not 0 < delta < 1:
        raise UserError(f"node config: {max_key} must be > 0 and delta in (0, 1)")
    return Budget(limit, delta)


def _evaluations(config: dict[str, Any], budget: Budget) -> int | None:
    """The node's limit on evaluations answered (``max-evaluations``; -1: none)."""
    default = DEFAULT_MAX_EVALUATIONS if budget.max_epsilon is not None else -1
    try:
        limit = int(config.get("max-evaluations", default))
    except (TypeError, ValueError) as e:
        raise UserError(f"node config: max-evaluations must be an integer ({e})") from None
    if limit < -1:
        raise UserError("node config: max-evaluations must be >= 0 (or -1: no limit)")
    return None if limit == -1 else limit
