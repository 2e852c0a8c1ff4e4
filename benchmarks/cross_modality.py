"""Benchmark: does cross-modality intensity augmentation let a model trained on CT alone
segment MR? (What a CT-only hospital's model meets in an MR hospital's data.)

Generates the embedded default phantom cohort (two CT scanners, one MR scanner with T1 and
T2), trains the default segmentation config on its CT patients only (train and val
splits) with ``task.intensity_augmentation`` "standard" and "cross-modality", for several
seeds, and scores each model on the CT test patients and on every MR image (no MR image is
ever trained on or used to choose the model). Prints mean ± sd over the seeds and writes
``results.csv``, ``summary.csv`` and ``summary.png`` under ``--out``.

    .venv/bin/python benchmarks/cross_modality.py --out runs/bench-cross-modality
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
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

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("standard", "cross-modality")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-cross-modality")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "segmentation.toml")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    handle_stops()  # SIGTERM and SIGHUP too: every process it started is stopped
    console = Console()
    started = time.perf_counter()
    manifest = generate(load_cohort_config(None), args.out / "phantoms")
    ct_only = manifest.select(modality="CT", split=("train", "val"))
    ct_only.save(args.out / "phantoms" / "ct_train.csv")
    tests = {"CT (test)": manifest.select(modality="CT", split="test"),
             "MR (all, never trained on)": manifest.select(modality="MR")}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for intensity in SETTINGS:
        for seed in args.seeds:
            console.rule(f"{intensity}, seed {seed}")
            config = load_run_config(args.config, {
                "data": {"manifest": str(args.out / "phantoms" / "ct_train.csv")},
                "task": {"intensity_augmentation": intensity},
                "train": {"epochs": args.epochs, "seed": seed},
                "output": {"dir": str(args.out / f"{intensity}-seed-{seed}")}})
            result = train(config, force=True, console=console)
            task, model, _ = load_checkpoint(result.folder / "model.pt")
            model.to(device)
            for name, rows_of in tests.items():
                metrics = evaluate(task, model, rows_of, device).metrics
                rows.append({"augmentation": intensity, "seed": seed, "test": name,
                             "images": len(rows_of), **metrics})
    minutes = (time.perf_counter() - started) / 60
    results = pd.DataFrame(rows)
    results.to_csv(args.out / "results.csv", index=False)
    summary = results.groupby(["test", "augmentation"])["dice_mean"].agg(["mean", "std"])
    summary.to_csv(args.out / "summary.csv")

    table = Table(title=f"Mean Dice of a CT-only model, mean ± sd over seeds {args.seeds} "
                        f"({minutes:.0f} min in all)")
    for column in ("test images", *SETTINGS):
        table.add_column(column)
    for test in tests:
        table.add_row(f"{test}: {len(tests[test])}",
                      *(f"{summary.loc[(test, s), 'mean']:.3f} ± "
                        f"{summary.loc[(test, s), 'std']:.3f}" for s in SETTINGS))
    console.print(table)

    figure, axis = plt.subplots(figsize=(7, 4))
    for i, intensity in enumerate(SETTINGS):
        means = [summary.loc[(test, intensity), "mean"] for test in tests]
        sds = [summary.loc[(test, intensity), "std"] for test in tests]
        axis.bar(np.arange(len(tests)) + 0.4 * i, means, 0.4, yerr=sds, capsize=3,
                 label=intensity)
    axis.set_xticks(np.arange(len(tests)) + 0.2, list(tests))
    axis.set(ylabel="test mean Dice", ylim=(0, 1),
             title=f"Trained on CT only, mean ± sd over {len(args.seeds)} seeds")
    axis.legend(title="intensity augmentation")
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.out / "summary.png", dpi=100)
    gain = (summary.loc[("MR (all, never trained on)", "cross-modality"), "mean"]
            - summary.loc[("MR (all, never trained on)", "standard"), "mean"])
    console.print(f"Written: {args.out / 'summary.csv'}, {args.out / 'summary.png'}")
    console.print(f"MR Dice gained by cross-modality augmentation: {gain:+.3f}")


if __name__ == "__main__":
    main()
