"""Pooled (centralised) training of any task on a manifest: `spinefl train`.

This is also the 'pooled' baseline that federated runs are compared with.
A run folder holds, for a person to inspect::

    config.toml          the resolved config (every default filled in)
    metrics.csv          one row per epoch: training loss, validation metrics, time
    metrics.png          the same as curves
    checkpoint_last.pt   weights, optimizer and epoch of the latest epoch
    model.pt             the best model by the task's score (what `spinefl predict` takes)
    val_per_image.csv    the best model's metrics per validation image
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tomli_w
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tasks.checkpoint import save_checkpoint
from tasks.config import ConfigError, Key, Schema, load_toml, validate
from tasks.contract import Task
from tasks.device import select_device
from tasks.errors import UserError
from tasks.manifest import Manifest
from tasks.plots import plot_history
from tasks.privacy import (
    PRIVACY_KEYS,
    PrivateRound,
    check_privacy,
    compatible,
    epsilon,
    planned_noise,
)
from tasks.registry import TASKS, task_class
from tasks.schedule import cosine_lr, run_share, set_lr

RUN_KEYS: Schema = {
    "data": (
        Key("manifest", "str", None, "Manifest to train on (path, relative to the working "
            "folder); `split` picks training and validation rows.", required=True),
    ),
    "train": (
        Key("epochs", "int", 30, "Passes over the training data.", minimum=1),
        Key("batch_size", "int", 16, "Samples per step (with DP: expected patients per step).",
            minimum=1),
        Key("lr", "float", 1e-3, "Adam learning rate.", minimum=0.0),
        Key("schedule", "str", "constant", "`constant` learning rate, or `cosine`: decayed to "
            "0 along a half cosine over the run (epochs, or the time budget if that ends "
            "first), so the last models are settled rather than the luck of one step.",
            choices=("constant", "cosine")),
        Key("weight_decay", "float", 1e-5, "Adam weight decay.", minimum=0.0),
        Key("seed", "int", 0, "Seed of initialisation, sampling and augmentation."),
        Key("device", "str", "auto", "`auto` (CUDA when present, else CPU), `cpu`, `cuda`, "
            "`cuda:N`."),
        Key("max_minutes", "float", 0.0, "Time budget: stop before an epoch that would end "
            "past it at the pace so far (0 = no limit).", minimum=0.0),
        Key("eval_every", "int", 1, "Evaluate on the validation split every N epochs (and "
            "after the last).", minimum=1),
    ),
    "privacy": PRIVACY_KEYS,
    "output": (
        Key("dir", "str", "runs/train", "Run folder (refused if it holds another run, "
            "unless --force)."),
    ),
}
TASK_NAME_KEY = Key("name", "str", None, "Task to train.", choices=tuple(sorted(TASKS)),
                    required=True)


def run_schema(task: type[Task]) -> Schema:
    """The full schema of a run config for one task."""
    return {"data": RUN_KEYS["data"], "task": (TASK_NAME_KEY, *task.keys),
            "train": RUN_KEYS["train"], "privacy": RUN_KEYS["privacy"],
            "output": RUN_KEYS["output"]}


def validate_for_task(raw: dict[str, Any], schema_for: Callable[[type[Task]], Schema],
                      where: str) -> dict[str, dict[str, Any]]:
    """Validate a config whose schema depends on its ``task.name`` (run, experiment, simulate)."""
    task_section = raw.get("task", {})
    name = task_section.get("name") if isinstance(task_section, dict) else None
    if name is None:
        raise ConfigError(f"{where}: missing required key task.name (one of {', '.join(TASKS)})")
    if name not in TASKS:
        raise ConfigError(f"{where}: task.name '{name}' is not a task "
                          f"(known: {', '.join(sorted(TASKS))})")
    config = validate(raw, schema_for(task_class(name)), where)
    if "privacy" in config:
        check_privacy(config["privacy"], where)
    return config


def load_run_config(path: Path, overrides: dict[str, dict[str, Any]] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """Read and validate a run config; ``overrides`` (e.g. from CLI options) win over the file."""
    raw = load_toml(path)
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    return validate_for_task(raw, run_schema, str(path))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch for one run (called by the run, never at import)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def claim_run_folder(out: Path, force: bool) -> None:
    """Create ``out``; refuse a folder that already holds files unless ``force``."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        held = ", ".join(sorted(p.name for p in out.iterdir())[:4])
        raise UserError(f"{out}: already holds another run ({held}, ...); "
                        "choose another output folder or pass --force to overwrite it")
    out.mkdir(parents=True, exist_ok=True)


@dataclass
class RunResult:
    """Where a run's outputs are and how it ended."""

    folder: Path
    history: pd.DataFrame
    best: dict[str, float]


def train(config: dict[str, dict[str, Any]], force: bool = False,
          console: Console | None = None) -> RunResult:
    """Train the configured task on the manifest's train split, validating on its val split."""
    console = console or Console()
    out = Path(config["output"]["dir"])
    manifest = Manifest.load(Path(config["data"]["manifest"]))
    settings = {k: v for k, v in config["task"].items() if k != "name"}
    task = task_class(config["task"]["name"])(settings)
    train_rows = task.select(manifest.select(split="train"))
    val_rows = task.select(manifest.select(split="val"))
    if len(train_rows) == 0:
        raise UserError(f"{config['data']['manifest']}: no training rows for this task "
                        f"(split 'train', with labels, of the task's modalities)")
    claim_run_folder(out, force)
    (out / "config.toml").write_text(tomli_w.dumps(config))

    run, privacy = config["train"], config["privacy"]
    seed_everything(run["seed"])
    device = select_device(run["device"])
    private = privacy["enabled"]
    model = task.build_model()
    model = (compatible(model) if private else model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=run["lr"],
                                 weight_decay=run["weight_decay"])
    batches = task.train_data(train_rows, run["batch_size"], run["seed"], per_patient=private)
    console.print(f"Training [bold]{task.name}[/] on {len(train_rows)} images "
                  f"({len(val_rows)} for validation) on {device}")
    releases = []
    if private:
        rate = 1.0 / len(batches)
        noise = planned_noise(privacy, rate, run["epochs"] * len(batches), privacy["delta"])
        console.print(f"DP-SGD: {len(batches.dataset)} patients, sample rate {rate:.4g}, "
                      f"noise multiplier {noise:.4g}, clipping norm {privacy['max_grad_norm']:g}")

    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    started = time.perf_counter()
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("epochs", total=run["epochs"], status="")
        for epoch in range(1, run["epochs"] + 1):
            row: dict[str, float] = {"epoch": epoch}
            if private:
                with PrivateRound(model, optimizer, batches, noise, privacy["max_grad_norm"],
                                  privacy["grad_sample_mode"]) as step:
                    row.update(task.train_epoch(step.model, step.batches, step.optimizer,
                                                device))
                releases.append(step.release)
                row["epsilon"] = epsilon(releases, privacy["delta"], privacy["accountant"])
            else:
                row.update(task.train_epoch(model, batches, optimizer, device))
            elapsed = time.perf_counter() - started
            if run["schedule"] == "cosine":
                share = run_share(epoch, run["epochs"], elapsed, 60 * run["max_minutes"])
                set_lr(optimizer, cosine_lr(run["lr"], share))
            # Stop when one more epoch (at the mean pace so far, validation included)
            # would end past the budget.
            over_time = run["max_minutes"] > 0 and elapsed * (epoch + 1) / epoch > 60 * run[
                "max_minutes"]
            last = epoch == run["epochs"] or over_time
            if len(val_rows) and (epoch % run["eval_every"] == 0 or last):
                evaluation = task.evaluate(model, val_rows, device)
                row.update({f"val_{k}": v for k, v in evaluation.metrics.items()})
                score = evaluation.metrics.get(task.score, float("nan"))
                # On a tie the later (longer trained) model wins.
                if not best or score >= best.get(f"val_{task.score}", -np.inf):
                    best = dict(row)
                    save_checkpoint(out / "model.pt", task, model, epoch=epoch,
                                    metrics=evaluation.metrics)
                    evaluation.per_image.to_csv(out / "val_per_image.csv", index=False)
            row["seconds"] = time.perf_counter() - started
            history.append(row)
            pd.DataFrame(history).to_csv(out / "metrics.csv", index=False)
            save_checkpoint(out / "checkpoint_last.pt", task, model, epoch=epoch,
                            optimizer=optimizer.state_dict())
            status = f"loss {row['train_loss']:.3f}"
            if f"val_{task.score}" in row:
                status += f"  val {task.score} {row[f'val_{task.score}']:.3f}"
            progress.update(bar, advance=1, status=status)
            if over_time:
                console.print(f"Stopping after epoch {epoch}: time budget of "
                              f"{run['max_minutes']:g} min reached")
                break
    if not best:  # no validation rows: the last model is the model
        save_checkpoint(out / "model.pt", task, model, epoch=history[-1]["epoch"], metrics={})
    frame = pd.DataFrame(history)
    plot_history(frame, out / "metrics.png", f"val_{task.score}")
    return RunResult(out, frame, best)
