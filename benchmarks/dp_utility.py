"""Benchmark: what patient-level privacy costs in Dice, federated and pooled.

Runs `spinefl simulate` on the default phantom benchmark (configs/federated.toml:
three hospitals of 18, 9 and 3 patients) without DP and with DP-SGD at a
target epsilon per patient of 8, 4 and 1 (delta 1e-5, RDP accountant,
clipping norm 1), federated and pooled (local-only baselines off), and prints
each model's test Dice per hospital and on average, with a plot.

DP runs draw patients, not slices: a step takes B = 4 expected patients (one
random slice each), a round is 8 local passes over the hospital's patients,
and the pooled baseline runs 60 passes, so that DP runs take a number of
steps of the same order as the non-private run. The noise multiplier of each
hospital (and of the pooled run) is the one that reaches the target epsilon
after all its steps.

    .venv/bin/python benchmarks/dp_utility.py --out runs/bench-dp
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulation.config import load_simulation  # noqa: E402
from simulation.report import markdown_table  # noqa: E402
from simulation.simulate import simulate  # noqa: E402

EPSILONS = (8.0, 4.0, 1.0)


def settings(base: dict, epsilon: float | None, out: Path) -> dict:
    """The benchmark's experiment at one privacy level (None = no DP)."""
    config = copy.deepcopy(base)
    config["baselines"]["local"] = False
    label = "no-dp" if epsilon is None else f"epsilon-{epsilon:g}"
    config["output"]["dir"] = str(out / label)
    if epsilon is not None:
        config["privacy"].update({"enabled": True, "target_epsilon": epsilon,
                                  "max_grad_norm": 1.0, "delta": 1e-5})
        config["train"].update({"batch_size": 4, "epochs": 60, "eval_every": 10})
        config["federation"]["local_epochs"] = 8
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-dp"))
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "federated.toml")
    args = parser.parse_args()
    console = Console()
    base = load_simulation(args.config)
    rows = []
    for epsilon in (None, *EPSILONS):
        config = settings(base, epsilon, args.out.resolve())
        console.rule(f"epsilon {epsilon if epsilon is not None else 'none (no DP)'}")
        results = simulate(config, force=True, console=console)
        for record in results.to_dict("records"):
            rows.append({"epsilon": "no DP" if epsilon is None else f"{epsilon:g}",
                         "model": record["model"], "hospital": record["hospital"],
                         "dice_mean": record["dice_mean"]})
    table = pd.DataFrame(rows)
    per_hospital = table.pivot_table(index=["epsilon", "model"], columns="hospital",
                                     values="dice_mean", sort=False)
    per_hospital["mean"] = per_hospital.mean(axis=1)
    per_hospital = per_hospital.reset_index()
    per_hospital.to_csv(args.out / "dp_utility.csv", index=False)
    console.print(markdown_table(per_hospital))
    figure, axis = plt.subplots(figsize=(6, 4))
    for model, group in per_hospital.groupby("model", sort=False):
        axis.plot(group["epsilon"], group["mean"], marker="o", label=model)
    axis.set(xlabel="epsilon per patient (delta 1e-5)", ylabel="test Dice (mean of hospitals)",
             ylim=(0, 1), title="Privacy and utility")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.out / "dp_utility.png", dpi=100)
    console.print(f"Table: {args.out / 'dp_utility.csv'}  Plot: {args.out / 'dp_utility.png'}")


if __name__ == "__main__":
    main()
