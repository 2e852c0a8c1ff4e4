"""Benchmark: the default segmentation configuration trained to convergence.

Generates the embedded default phantom cohort, trains configs/segmentation.toml
for longer (``--epochs``), then prints held-out (test split) Dice per structure
and per modality, and writes them as CSV and PNG next to the run.

    .venv/bin/python benchmarks/segmentation_default.py --out runs/bench-seg --epochs 40
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from rich.console import Console
from rich.table import Table

from client.training import train
from simulation.phantoms.config import load_cohort_config
from simulation.phantoms.generator import generate
from tasks.checkpoint import load_checkpoint
from tasks.evaluation import evaluate
from tasks.run_config import load_run_config
from tasks.stops import handle_stops

STRUCTURES = ("dice_vertebra", "dice_disc", "dice_canal", "dice_mean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-segmentation"))
    parser.add_argument("--config", type=Path, default=Path("configs/segmentation.toml"))
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    handle_stops()  # SIGTERM and SIGHUP too: every process it started is stopped
    console = Console()

    started = time.perf_counter()
    manifest = generate(load_cohort_config(None), args.out / "phantoms")
    config = load_run_config(args.config, {
        "data": {"manifest": str(args.out / "phantoms" / "manifest.csv")},
        "train": {"epochs": args.epochs}, "output": {"dir": str(args.out / "run")}})
    result = train(config, force=True, console=console)
    task, model, payload = load_checkpoint(result.folder / "model.pt")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    evaluation = evaluate(task, model.to(device), manifest.select(split="test"), device)

    per_image = evaluation.per_image
    per_image["group"] = per_image["modality"] + " " + per_image["site"]
    table = per_image.groupby("modality")[list(STRUCTURES)].mean()
    table.loc["all"] = per_image[list(STRUCTURES)].mean()
    table["images"] = per_image.groupby("modality").size()
    table.loc["all", "images"] = len(per_image)
    table.to_csv(args.out / "test_dice.csv")
    per_image.to_csv(args.out / "test_per_image.csv", index=False)

    shown = Table(title=f"Held-out test Dice (best epoch {payload['epoch']} of {args.epochs}, "
                        f"{time.perf_counter() - started:.0f} s in all, {device})")
    for column in ("modality", *STRUCTURES, "images"):
        shown.add_column(column)
    for modality, row in table.iterrows():
        shown.add_row(str(modality), *(f"{row[c]:.3f}" for c in STRUCTURES),
                      str(int(row["images"])))
    console.print(shown)

    figure, axis = plt.subplots(figsize=(7, 4))
    table.drop(index="all")[list(STRUCTURES)].T.plot.bar(ax=axis, rot=0)
    axis.set(ylim=(0, 1), ylabel="Dice", title="Held-out test Dice by structure and modality")
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.out / "test_dice.png", dpi=100)
    console.print(f"Written: {args.out / 'test_dice.csv'}, {args.out / 'test_dice.png'}")


if __name__ == "__main__":
    main()
