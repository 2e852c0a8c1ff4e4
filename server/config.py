"""The federated experiment config: what the coordinator's run is.

It is a run config (``tasks.training.RUN_KEYS``: data, task, train, output)
plus a ``[federation]`` section. ``train`` holds the hospitals' local
optimisation (batch size, learning rate, seed, device) and ``train.epochs``
the epochs of the pooled and local-only baselines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.config import Key, Schema, load_toml
from tasks.contract import Task
from tasks.training import RUN_KEYS, TASK_NAME_KEY, validate_for_task

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg", "fedbn")

FEDERATION_KEYS = (
    Key("strategy", "str", "fedavg", "Aggregation: `fedavg`; `fedprox` (proximal term at the "
        "hospitals); `fedadam`/`fedyogi` (adaptive server optimiser); `fedmedian` and "
        "`fedtrimmedavg` (robust); `fedbn` (FedAvg with normalisation layers kept local).",
        choices=STRATEGIES),
    Key("rounds", "int", 5, "Federated rounds.", minimum=1),
    Key("local_epochs", "int", 1, "Local epochs per round at each hospital.", minimum=1),
    Key("local_steps", "int", 0, "If > 0, at most this many local steps per round instead of "
        "whole epochs.", minimum=0),
    Key("fraction_train", "float", 1.0, "Fraction of hospitals sampled for training each round.",
        minimum=0.0),
    Key("fraction_evaluate", "float", 1.0, "Fraction of hospitals sampled for evaluation.",
        minimum=0.0),
    Key("min_hospitals", "int", 2, "Fewest hospitals a round needs (and waits for).", minimum=1),
    Key("round_timeout", "float", 1800.0, "Seconds a round waits for replies before going on "
        "with those that arrived.", minimum=1.0),
    Key("proximal_mu", "float", 0.01, "FedProx proximal weight mu.", minimum=0.0),
    Key("server_lr", "float", 0.01, "Server learning rate (eta) of FedAdam/FedYogi.",
        minimum=0.0),
    Key("trim_beta", "float", 0.2, "Fraction trimmed at each end by FedTrimmedAvg (< 0.5).",
        minimum=0.0),
    Key("init_checkpoint", "str", "", "Start from this checkpoint's weights (transfer "
        "learning); its task settings must match [task]."),
)


def experiment_schema(task: type[Task]) -> Schema:
    """The full schema of a federated experiment for one task."""
    return {"data": RUN_KEYS["data"], "task": (TASK_NAME_KEY, *task.keys),
            "train": RUN_KEYS["train"], "federation": FEDERATION_KEYS,
            "output": RUN_KEYS["output"]}


def validate_experiment(raw: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """Validate a parsed experiment (defaults filled)."""
    return validate_for_task(raw, experiment_schema, where)


def load_experiment(path: Path) -> dict[str, dict[str, Any]]:
    """Read and validate an experiment file."""
    return validate_experiment(load_toml(path), str(path))
