"""The last link of the config chain: a simulate config (``spinefl simulate``).

An experiment (``server.config``) plus where the data come from (phantoms or a
manifest), how they are split into virtual hospitals, which baselines run, and
the virtual hospitals' own budgets. Loading it runs every check of the chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from server.config import EXPERIMENT_CHECKS, FEDERATION_KEYS
from tasks.config import ConfigError, Key, below
from tasks.contract import Task
from tasks.run_config import RUN_KEYS, TASK_NAME_KEY, Check, load_config

METHODS = ("site", "iid", "dirichlet", "quantity", "modality")

SIMULATION_KEYS = {
    "phantoms": (
        Key("enabled", "bool", True, "Generate phantoms (else use data.manifest as it is)."),
        Key("config", "path", "", "Cohort config (TOML, relative to this config file's "
            "folder); empty for the embedded default."),
        Key("dir", "str", "data/phantoms", "Where the phantoms are written, relative to the "
            "working folder (reused when the same cohort is already there)."),
    ),
    "partition": (
        Key("method", "str", "site", "`site`: one hospital per site (natural split); `iid`; "
            "`dirichlet` (skew over `column`); `quantity` (sizes up to `ratio` apart); "
            "`modality` (hospital i takes patients imaged only with `mixes[i]`).",
            choices=METHODS),
        Key("hospitals", "int", 3, "Number of hospitals (ignored by `site`).", minimum=1),
        Key("column", "str", "site", "Manifest column the Dirichlet skew is over."),
        Key("alpha", "float", 0.5, "Dirichlet concentration (small = strong skew).",
            above=0.0),
        Key("ratio", "float", 10.0, "Largest / smallest hospital for `quantity`.", minimum=1.0),
        Key("mixes", "list[str]", ["MR", "CT", "CT+MR"], "Modalities of each hospital for "
            "`modality`, `+`-joined (e.g. one hospital only MR, one only CT)."),
        Key("seed", "int", 0, "Seed of the partition."),
    ),
    "baselines": (
        Key("pooled", "bool", True, "Train on all hospitals' data pooled."),
        Key("local", "bool", True, "Train each hospital on its own data alone."),
    ),
    "ray": (
        Key("address", "str", "", "The Ray cluster the virtual hospitals run on: empty for a "
            "private one on this machine, started and stopped with the run; `auto` for the "
            "one `ray start` started on this machine; `HOST:PORT` for a cluster's head "
            "(its GCS port). Every node of a cluster needs spinefl installed and the "
            "output folder at the same path (a shared file system)."),
        Key("cpus_per_hospital", "int", 2, "CPUs a virtual hospital's ClientApp holds "
            "while it runs (Ray runs as many at once as the cluster's CPUs allow).",
            minimum=1),
        Key("gpus_per_hospital", "float", 0.0, "Share of a GPU a virtual hospital holds "
            "(0.5: two share one card).", minimum=0.0),
    ),
    "hospitals": (
        Key("max_epsilon", "float", 0.0, "Each virtual hospital's own privacy budget (its "
            "node config's `max-epsilon`): rounds past it are refused; 0 = no limit.",
            minimum=0.0),
        Key("delta", "float", 1e-5, "Each virtual hospital's delta (its node config's "
            "`delta`).", above=0.0, check=below(1.0)),
    ),
}


def simulation_schema(task: type[Task]) -> dict[str, tuple[Key, ...]]:
    """The schema of a simulate config for one task."""
    return {"data": (Key("manifest", "path", "", "Manifest to partition when phantoms are "
                         "off (relative to the config file's folder)."),),
            **SIMULATION_KEYS, "task": (TASK_NAME_KEY, *task.keys),
            "train": RUN_KEYS["train"], "privacy": RUN_KEYS["privacy"],
            "federation": FEDERATION_KEYS, "output": RUN_KEYS["output"]}


def check_simulation(config: dict[str, dict[str, Any]], where: str) -> None:
    """Refuse a simulation with no data to run on."""
    if not config["phantoms"]["enabled"] and not config["data"]["manifest"]:
        raise ConfigError(f"{where}: set phantoms.enabled = true or data.manifest")


SIMULATION_CHECKS: tuple[Check, ...] = (*EXPERIMENT_CHECKS, check_simulation)


def load_simulation(path: Path | None, overrides: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """A validated simulate config (``configs/federated.toml`` when ``path`` is None), every
    check of the chain run (run, experiment, simulation) before anything is written;
    ``overrides`` (by section, then key) win over the file and are validated with it."""
    path = path or Path(__file__).resolve().parents[1] / "configs" / "federated.toml"
    return load_config(path, simulation_schema, SIMULATION_CHECKS, overrides)


