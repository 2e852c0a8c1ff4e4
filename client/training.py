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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tomli_w
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from client.privacy import planned_noise
from client.trainer import DPSettings, LocalTrainer
from tasks.checkpoint import save_checkpoint, starting_weights
from tasks.contract import Evaluation, Task
from tasks.device import select_device
from tasks.errors import UserError
from tasks.evaluation import evaluate
from tasks.files import writable_folder, write_table, write_text
from tasks.locks import folder_lock, run_files
from tasks.manifest import Manifest
from tasks.plots import plot_history
from tasks.run_config import patient_draws, task_from_config
from tasks.tracking import ScalarLog


def claim_run_folder(out: Path, force: bool) -> None:
    """Create ``out``; refuse a folder that already holds a run unless ``force`` (its lock and
    the leftovers of interrupted writes do not count)."""
    writable_folder(out)
    held = run_files(out)
    if held and not force:
        raise UserError(f"{out}: already holds another run ({', '.join(held[:4])}, ...); "
                        "choose another output folder or pass --force to overwrite it")


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
    task = task_from_config(config)
    train_rows = task.select(manifest.select(split="train"))
    val_rows = task.select(manifest.select(split="val"))
    if len(train_rows) == 0:
        raise UserError(f"{config['data']['manifest']}: no training rows for this task "
                        f"(split 'train', with labels, of the task's modalities)")
    manifest.check_geometry(config["data"]["manifest"])
    if len(val_rows) == 0:
        console.print(f"[yellow]warning:[/] {config['data']['manifest']}: no validation rows "
                      "for this task (split 'val'): the last epoch's model is kept, unscored; "
                      "give the manifest a val split (more patients) to choose the best")
    with folder_lock(out):
        claim_run_folder(out, force)
        write_text(out / "config.toml", tomli_w.dumps(config))
        return _train(config, task, train_rows, val_rows, out, console)


def _train(config: dict[str, dict[str, Any]], task: Task, train_rows: Manifest,
           val_rows: Manifest, out: Path, console: Console) -> RunResult:
    run, privacy = config["train"], config["privacy"]
    device = select_device(run["device"])
    start = (starting_weights(Path(run["init_checkpoint"]), task)
             if run["init_checkpoint"] else None)
    trainer = LocalTrainer.start(task, run, device, seed=run["seed"], state=start,
                                 run_epochs=run["epochs"], max_minutes=run["max_minutes"])
    model = trainer.model
    batches = task.train_data(train_rows, run["batch_size"], run["seed"],
                              per_patient=patient_draws(privacy))
    console.print(f"Training [bold]{task.name}[/] on {len(train_rows)} images "
                  f"({len(val_rows)} for validation) on {device}")
    dp = None
    if privacy["enabled"]:
        rate = 1.0 / len(batches)
        noise = planned_noise(privacy, rate, run["epochs"] * len(batches), privacy["delta"])
        dp = DPSettings.of(privacy, task, noise, privacy["delta"])
        console.print(f"DP-SGD: {len(batches.dataset)} patients, sample rate {rate:.4g}, "
                      f"noise multiplier {noise:.4g}, clipping norm {privacy['max_grad_norm']:g}, "
                      f"{privacy['slices_per_patient']} samples x {privacy['augmentations']} "
                      f"augmentations per patient, training {privacy['trainable']} parameters")

    score = f"val_{task.score}"
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} steps"), TimeElapsedColumn(),
               TextColumn("left"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"))

    def validate(net: torch.nn.Module) -> Evaluation:
        return evaluate(task, net, val_rows, device)

    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("training", total=run["epochs"] * len(batches),
                                status=f"epoch 1/{run['epochs']}")

        def epoch_end(row: dict[str, float], evaluation: Evaluation | None) -> None:
            nonlocal best
            row = {"epoch": len(history) + 1, **row}
            if evaluation is not None and (not best or row[score] >= best.get(score, -np.inf)):
                # On a tie the later (longer trained) model wins.
                best = dict(row)
                save_checkpoint(out / "model.pt", task, model, epoch=row["epoch"],
                                metrics=evaluation.metrics)
                write_table(evaluation.per_image, out / "val_per_image.csv")
            row["seconds"] = trainer.elapsed()
            history.append(row)
            write_table(pd.DataFrame(history), out / "metrics.csv")
            scalars.add("train", row["epoch"], {k: v for k, v in row.items() if k != "epoch"})
            save_checkpoint(out / "checkpoint_last.pt", task, model, epoch=row["epoch"],
                            optimizer=trainer.optimizer.state_dict())
            status = f"epoch {row['epoch']}/{run['epochs']}  loss {row['train_loss']:.3f}"
            if score in row:
                status += f"  val {task.score} {row[score]:.3f}"
            progress.update(bar, status=status)

        scalars = ScalarLog(out)
        try:
            fit = trainer.fit(batches, run["epochs"], dp=dp,
                              evaluate=validate if len(val_rows) else None,
                              eval_every=run["eval_every"], on_epoch_end=epoch_end,
                              on_step=lambda: progress.advance(bar))
        finally:
            scalars.close()
    if fit.out_of_time:
        console.print(f"Stopped after epoch {len(history)}: time budget of "
                      f"{run['max_minutes']:g} min reached")
    if not best:  # no validation rows: the last model is the model
        save_checkpoint(out / "model.pt", task, model, epoch=history[-1]["epoch"], metrics={})
    frame = pd.DataFrame(history)
    plot_history(frame, out / "metrics.png", score)
    return RunResult(out, frame, best)
