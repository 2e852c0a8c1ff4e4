"""The first link of the config chain: a run config, the keys every kind of run shares.

A run config (``spinefl train --config``) has ``[data]``, ``[task]``, ``[train]``,
``[privacy]`` and ``[output]``. The chain goes on elsewhere, each link adding its
sections and its checks of settings that do not go together: the federated
experiment (``server.config``: ``[federation]``), then the simulation
(``simulation.config``: phantoms, partition, baselines, virtual hospitals).
Every link validates once, at load, before anything is written.

``[train]`` holds two kinds of keys: those a hospital honours in every round
(``LOCAL_TRAIN_KEYS``: what the coordinator may ask of local training) and those
only a run on one machine uses (``POOLED_TRAIN_KEYS``: epochs, time budget,
evaluation cadence, device). A hospital's device is its own choice (its node
config), never the coordinator's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tasks.config import ConfigError, Key, Schema, below, load_toml, unknown_name, validate
from tasks.contract import PatientDraws, Task
from tasks.device import device_problem
from tasks.registry import TASKS, task_class

ACCOUNTANTS = ("rdp", "prv")
GRAD_SAMPLE_MODES = ("hooks", "functorch")

LOCAL_TRAIN_KEYS = (
    Key("batch_size", "int", 16, "Samples per step (with DP: expected patients per step).",
        minimum=1),
    Key("lr", "float", 1e-3, "Adam learning rate.", minimum=0.0),
    Key("schedule", "str", "constant", "`constant` learning rate, or `cosine`: decayed to "
        "0 along a half cosine over the run (all epochs, or all rounds of local epochs in a "
        "federation; or the time budget if that ends first), so the last models are settled "
        "rather than the luck of one step.", choices=("constant", "cosine")),
    Key("weight_decay", "float", 1e-5, "Adam weight decay.", minimum=0.0),
    Key("seed", "int", 0, "Seed of initialisation, sampling and augmentation."),
)
PERSONALISATIONS = ("none", "ditto", "finetune")
PERSONAL_KEYS = (
    Key("personalisation", "str", "none", "What each hospital ends with beside the global "
        "model, kept in its own data folder and never sent: `none`; `ditto` (a personal model "
        "trained every round on the hospital's data, pulled toward the global model by "
        "`personal_lambda`; Li et al., 2021); `finetune` (after the last round the global "
        "model fine-tuned for `personal_epochs`, kept only where it beats the global model on "
        "the hospital's val patients). Under `fedbn` the global model with the hospital's own "
        "normalisation layers is its model when this is `none`.", choices=PERSONALISATIONS),
    Key("personal_lambda", "float", 0.1, "Ditto's pull toward the global model: the personal "
        "loss adds (lambda / 2) * ||v - w_global||^2 (0: local training only; large: the "
        "global model).", minimum=0.0),
    Key("personal_epochs", "int", 1, "Epochs of personal training a round (Ditto; capped by "
        "`local_steps` as local training is) or of the final fine-tuning (`finetune`).",
        minimum=1),
)
POOLED_TRAIN_KEYS = (
    Key("epochs", "int", 30, "Passes over the training data (pooled and local-only runs; a "
        "federation's local work is `federation.local_epochs`).", minimum=1),
    Key("device", "str", "auto", "`auto` (CUDA when present, else Apple's MPS, else the "
        "CPU), `cpu`, `cuda`, `cuda:N`, `mps` (runs on this machine; a hospital node uses "
        "its own node config's `device`).", check=device_problem),
    Key("max_minutes", "float", 0.0, "Time budget of a run on this machine: stop before an "
        "epoch that would end past it at the pace so far (0 = no limit).", minimum=0.0),
    Key("eval_every", "int", 1, "Evaluate on the validation split every N epochs (and "
        "after the last).", minimum=1),
    Key("init_checkpoint", "path", "", "Start from this checkpoint's weights, e.g. a public "
        "starting model (relative to the config file's folder; a federation's global model "
        "starts from it); its task settings must match [task]."),
)

PRIVACY_KEYS = (
    Key("enabled", "bool", False, "Train with patient-level DP-SGD (Opacus)."),
    Key("noise_multiplier", "float", 0.0, "Noise sigma (std / clipping norm); 0 = derive it "
        "from `target_epsilon`.", minimum=0.0),
    Key("target_epsilon", "float", 0.0, "Epsilon per patient to reach at the end of the run "
        "(all rounds), when `noise_multiplier` is 0.", minimum=0.0),
    Key("max_grad_norm", "float", 1.0, "Clipping norm C of each patient's gradient.",
        above=0.0),
    Key("delta", "float", 1e-5, "Delta of pooled and local-only DP training; in federated "
        "runs each hospital accounts at its own delta (node config `delta`, default 1e-5).",
        above=0.0, check=below(1.0)),
    Key("accountant", "str", "rdp", "`rdp` (Renyi DP) or `prv` (privacy random variables, "
        "tighter).", choices=ACCOUNTANTS),
    Key("grad_sample_mode", "str", "hooks", "How Opacus computes per-patient gradients "
        "(`benchmarks/dp_overhead.py` measures them).", choices=GRAD_SAMPLE_MODES),
    Key("slices_per_patient", "int", 2, "Samples (slices, or patches in 3D) drawn from each "
        "patient a step includes; their gradients are averaged and the mean clipped once, so "
        "a patient still contributes at most one clipped gradient per step.", minimum=1),
    Key("augmentations", "int", 2, "Augmented copies of each drawn sample inside that mean "
        "(augmentation multiplicity; no privacy cost).", minimum=1),
    Key("trainable", "str", "all", "Parameters DP-SGD trains: `all`, or a part the task "
        "names (U-Net tasks: `decoder`, `head`; grading and fracture: `head`); the others keep the "
        "starting model's values and get neither gradient nor noise."),
)

RUN_KEYS: Schema = {
    "data": (
        Key("manifest", "path", None, "Manifest to train on (relative to the config file's "
            "folder); `split` picks training and validation rows.", required=True),
    ),
    "train": (*LOCAL_TRAIN_KEYS, *POOLED_TRAIN_KEYS),
    "privacy": PRIVACY_KEYS,
    "output": (
        Key("dir", "str", "runs/train", "Run folder, relative to the working folder (refused "
            "if it holds another run, unless --force)."),
    ),
}
TASK_NAME_KEY = Key("name", "str", None, "Task to train.", choices=tuple(sorted(TASKS)),
                    required=True)

SchemaFor = Callable[[type[Task]], Schema]
Check = Callable[[dict[str, dict[str, Any]], str], None]


def run_schema(task: type[Task]) -> Schema:
    """The full schema of a run config for one task."""
    return {"data": RUN_KEYS["data"], "task": (TASK_NAME_KEY, *task.keys),
            "train": RUN_KEYS["train"], "privacy": RUN_KEYS["privacy"],
            "output": RUN_KEYS["output"]}


def check_privacy(config: dict[str, dict[str, Any]], where: str) -> None:
    """Refuse DP settings that cannot be honoured (a ConfigError naming the keys)."""
    settings = config["privacy"]
    if not settings["enabled"]:
        return
    if settings["noise_multiplier"] <= 0 and settings["target_epsilon"] <= 0:
        raise ConfigError(f"{where}: privacy.enabled needs privacy.noise_multiplier > 0 or "
                          "privacy.target_epsilon > 0")
    if settings["max_grad_norm"] <= 0 or not 0 < settings["delta"] < 1:
        raise ConfigError(f"{where}: privacy.max_grad_norm must be > 0 and privacy.delta "
                          "in (0, 1)")
    parts = task_class(config["task"]["name"]).parts
    if settings["trainable"] != "all" and settings["trainable"] not in parts:
        raise ConfigError(f"{where}: privacy.trainable '{settings['trainable']}' is not a part "
                          f"of task {config['task']['name']} (choose all, "
                          f"{', '.join(sorted(parts))})")


def patient_draws(privacy: Mapping[str, Any]) -> PatientDraws | None:
    """How DP-SGD draws each patient's samples (None without DP: items are samples)."""
    if not privacy["enabled"]:
        return None
    return PatientDraws(privacy["slices_per_patient"], privacy["augmentations"])


def validate_config(raw: Mapping[str, Any], schema_for: SchemaFor, checks: tuple[Check, ...],
                    where: str, base: Path | None = None) -> dict[str, dict[str, Any]]:
    """Validate a config whose schema depends on its ``task.name`` (a run, an experiment, a
    simulation), then run every check of the chain's links on the result."""
    task_section = raw.get("task", {})
    name = task_section.get("name") if isinstance(task_section, Mapping) else None
    if name is None:
        raise ConfigError(f"{where}: missing required key task.name (one of {', '.join(TASKS)})")
    if name not in TASKS:
        raise ConfigError(f"{where}: task.name '{name}' is not a task "
                          f"(known: {', '.join(sorted(TASKS))})")
    config = validate(raw, schema_for(task_class(name)), where, base)
    for check in checks:
        check(config, where)
    return config


RUN_CHECKS: tuple[Check, ...] = (check_privacy,)


def load_config(path: Path, schema_for: SchemaFor, checks: tuple[Check, ...],
                overrides: Mapping[str, Mapping[str, Any]] | None = None
                ) -> dict[str, dict[str, Any]]:
    """Read and validate a config file of the chain; ``overrides`` (e.g. from CLI options) win
    over the file, and their paths stay as given (relative to the working folder)."""
    config = validate_config(load_toml(path), schema_for, checks, str(path),
                             path.resolve().parent)
    if overrides:
        for section in overrides:
            if section not in config:
                raise unknown_name(str(path), section, sorted(config), "section")
        merged = {section: {**body, **overrides.get(section, {})}
                  for section, body in config.items()}
        config = validate_config(merged, schema_for, checks, str(path))
    return config


def load_run_config(path: Path, overrides: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """Read and validate a run config (``spinefl train``)."""
    return load_config(path, run_schema, RUN_CHECKS, overrides)


def task_from_config(config: Mapping[str, Mapping[str, Any]]) -> Task:
    """The task a validated config's ``[task]`` section describes (the one way to build it)."""
    section = config["task"]
    return task_class(section["name"])({k: v for k, v in section.items() if k != "name"})
