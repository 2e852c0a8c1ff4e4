"""The federated experiment config: what the coordinator's run is.

The second link of the config chain (``tasks.run_config``): a run config plus
a ``[federation]`` section, with the checks of federation and privacy settings
that do not go together. ``train`` holds the hospitals' local optimisation
(``LOCAL_TRAIN_KEYS``, sent to every hospital) and the keys only runs on one
machine use (``train.epochs`` of the pooled and local-only baselines, their
device and time budget), which are never sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.config import ConfigError, Key, Schema, below
from tasks.contract import Task
from tasks.packing import PRECISIONS
from tasks.run_config import (
    PERSONAL_KEYS,
    RUN_CHECKS,
    RUN_KEYS,
    TASK_NAME_KEY,
    Check,
    load_config,
    validate_config,
)

STRATEGIES = ("fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedmedian",
              "fedtrimmedavg", "fedbn")

FEDERATION_KEYS = (
    Key("strategy", "str", "fedavg", "Aggregation: `fedavg`; `fedavgm` (FedAvg with server "
        "momentum); `fedprox` (proximal term at the "
        "hospitals); `fedadam`/`fedyogi` (adaptive server optimiser); `fedmedian` and "
        "`fedtrimmedavg` (robust); `fedbn` (FedAvg with normalisation layers kept local).",
        choices=STRATEGIES),
    Key("rounds", "int", 5, "Federated rounds.", minimum=1),
    Key("local_epochs", "int", 1, "Local epochs per round at each hospital.", minimum=1),
    Key("local_steps", "int", 0, "If > 0, at most this many local steps per round instead of "
        "whole epochs.", minimum=0),
    Key("fraction_train", "float", 1.0, "Fraction of hospitals sampled for training each round.",
        above=0.0, maximum=1.0),
    Key("fraction_evaluate", "float", 1.0, "Fraction of hospitals sampled for the evaluation "
        "after the last round (earlier rounds' aggregates are validated by the hospitals "
        "sampled to train in the next).",
        minimum=0.0, maximum=1.0),
    Key("min_hospitals", "int", 2, "Fewest hospitals a round needs (and waits for).", minimum=1),
    Key("round_timeout", "float", 1800.0, "Seconds a round waits for replies before going on "
        "with those that arrived.", minimum=1.0),
    Key("proximal_mu", "float", 0.01, "FedProx proximal weight mu.", minimum=0.0),
    Key("server_lr", "float", 0.01, "Server learning rate (eta) of FedAdam/FedYogi.",
        above=0.0),
    Key("server_momentum", "float", 0.9, "Server momentum of FedAvgM (its server learning "
        "rate is 1: the average update, plus momentum).", minimum=0.0, check=below(1.0)),
    Key("trim_beta", "float", 0.2, "Fraction trimmed at each end by FedTrimmedAvg (< 0.5).",
        minimum=0.0, check=below(0.5)),
    Key("max_update_norm", "float", 0.0, "Updates (new weights minus global) whose L2 norm "
        "is above this are refused before aggregation, like non-finite or misshapen ones "
        "(0 = no norm bound).", minimum=0.0),
    Key("central_dp", "bool", False, "Hospital-level DP at the server (DP-FedAvg): each "
        "hospital's update clipped, Gaussian noise added to the uniform average "
        "(strategy `fedavg` only; every hospital every round)."),
    Key("central_noise_multiplier", "float", 1.0, "Central DP noise sigma: the noise std is "
        "sigma * clipping norm / hospitals.", minimum=0.0),
    Key("central_clipping_norm", "float", 1.0, "Central DP clipping norm of each hospital's "
        "update (L2, over all weights).", above=0.0),
    Key("central_delta", "float", 1e-5, "Delta of the reported hospital-level epsilon.",
        above=0.0, check=below(1.0)),
    Key("secure_aggregation", "bool", False, "Secure aggregation (Flower's SecAgg+): the "
        "coordinator sees only the sum of the hospitals' weights (strategy `fedavg` or "
        "`fedbn`, at least 3 hospitals; uniform average; no per-update norm bound)."),
    Key("secagg_clipping_range", "float", 8.0, "SecAgg+ clips every weight to [-c, c] "
        "before quantising it; hospitals report the fraction they clipped.", above=0.0),
    Key("secagg_threshold", "float", 0.6, "Fraction of a hospital's neighbours needed to "
        "rebuild its masks when it drops out (higher: more private, less tolerant); more "
        "than half, or hospitals refuse to take part.", above=0.5, maximum=1.0),
    Key("update_precision", "str", "float32", "What a hospital sends back each round: "
        "`float32` (its weights) or `float16` (its update, new weights minus global, in "
        "float16: half the bytes; not with secure aggregation, which quantises itself).",
        choices=PRECISIONS),
    *PERSONAL_KEYS,
)


def experiment_schema(task: type[Task]) -> Schema:
    """The full schema of a federated experiment for one task."""
    return {"data": (Key("manifest", "str", "", "Unused by a federated run: each hospital "
                         "trains on its own manifest."),), "task": (TASK_NAME_KEY, *task.keys),
            "train": RUN_KEYS["train"], "privacy": RUN_KEYS["privacy"],
            "federation": FEDERATION_KEYS, "output": RUN_KEYS["output"]}


def check_combination(experiment: dict[str, dict[str, Any]], where: str) -> None:
    """Refuse federation and privacy settings that cannot be honoured together."""
    federation, privacy = experiment["federation"], experiment["privacy"]
    if privacy["enabled"] and federation["strategy"] == "fedprox":
        raise ConfigError(f"{where}: federation.strategy 'fedprox' with privacy.enabled: the "
                          "proximal term is not part of the clipped per-patient gradients; "
                          "use fedavg or fedbn with DP")
    if federation["central_dp"] and (federation["strategy"] != "fedavg"
                                     or federation["fraction_train"] != 1.0):
        raise ConfigError(f"{where}: federation.central_dp needs strategy 'fedavg' and "
                          "fraction_train = 1 (every hospital, uniform average)")
    if federation["secure_aggregation"]:
        problem = None
        if federation["strategy"] not in ("fedavg", "fedbn"):
            problem = f"strategy '{federation['strategy']}' needs each update; use fedavg or fedbn"
        elif federation["central_dp"]:
            problem = ("central_dp clips each update at the server, which secure aggregation "
                       "hides; use the hospitals' own DP ([privacy])")
        elif federation["max_update_norm"] > 0:
            problem = "max_update_norm checks each update, which secure aggregation hides"
        elif federation["update_precision"] != "float32":
            problem = "update_precision must be float32 (SecAgg+ quantises the weights itself)"
        elif federation["min_hospitals"] < 3:
            problem = "min_hospitals must be at least 3 (with 2, each learns the other's update)"
        if problem:
            raise ConfigError(f"{where}: federation.secure_aggregation: {problem}")


EXPERIMENT_CHECKS: tuple[Check, ...] = (*RUN_CHECKS, check_combination)


def validate_experiment(raw: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """Validate a parsed experiment (defaults filled), settings that do not go together too."""
    return validate_config(raw, experiment_schema, EXPERIMENT_CHECKS, where)


def load_experiment(path: Path) -> dict[str, dict[str, Any]]:
    """Read and validate an experiment file."""
    return load_config(path, experiment_schema, EXPERIMENT_CHECKS)
