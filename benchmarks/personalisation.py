"""Benchmark: what a federation pays each hospital, over several seeds, with error bars.

Runs `spinefl simulate` on a federated config once per seed (training seed; the same
phantom cohort and split), with each hospital keeping a personal model, and tables each
hospital's test score of the global federated model, its personal model, its local-only
model and the pooled model as mean and sd over the seeds. It checks issue 17's targets:
every hospital's personal model at least max(local-only, pooled) - 0.01, and the global
model at least 0.97 of pooled (the mean over hospitals of the per-hospital ratio). Writes
``per_seed.csv``, ``summary.csv`` and ``summary.png`` (bars with sd) under ``--out``.

    .venv/bin/python benchmarks/personalisation.py --out runs/bench-personal
    .venv/bin/python benchmarks/personalisation.py --personalisation finetune \\
        --out runs/bench-finetune --seeds 0 1 2
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
from rich.console import Console
from rich.table import Table

from simulation.config import load_simulation
from simulation.report import MODELS
from simulation.simulate import simulate
from tasks.registry import task_class
from tasks.stops import handle_stops

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "federated.toml")
    parser.add_argument("--personalisation", default="ditto", choices=("ditto", "finetune"))
    parser.add_argument("--strategy", help="federation.strategy (default: the config's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-personal")
    args = parser.parse_args()
    handle_stops()  # SIGTERM and SIGHUP too: every process it started is stopped
    console = Console()
    rows = []
    started = time.perf_counter()
    for seed in args.seeds:
        config = load_simulation(args.config)
        config["train"]["seed"] = seed
        config["federation"]["personalisation"] = args.personalisation
        if args.strategy:
            config["federation"]["strategy"] = args.strategy
        config["output"]["dir"] = str(args.out / f"seed-{seed}")
        console.rule(f"seed {seed}")
        results = simulate(config, force=True, console=console)
        rows.append(results.assign(seed=seed))
    minutes = (time.perf_counter() - started) / 60
    score = task_class(config["task"]["name"]).score
    per_seed = pd.concat(rows, ignore_index=True)
    per_seed.to_csv(args.out / "per_seed.csv", index=False)

    wide = per_seed.pivot_table(index=["hospital", "seed"], columns="model", values=score)
    models = [m for m in MODELS if m in wide]
    wide["best baseline"] = wide[["local", "pooled"]].max(axis=1)
    wide["personal - best baseline"] = wide["personal"] - wide["best baseline"]
    wide["federated / pooled"] = wide["federated"] / wide["pooled"]
    summary = wide.groupby("hospital").agg(["mean", "std"])
    summary.columns = [f"{name} {stat}" for name, stat in summary.columns]
    summary.to_csv(args.out / "summary.csv")

    table = Table(title=f"Test {score}, mean ± sd over seeds {args.seeds} "
                        f"({args.personalisation}; {minutes:.0f} min in all)")
    columns = [*models, "personal - best baseline", "federated / pooled"]
    for column in ("hospital", *columns):
        table.add_column(column)
    for hospital, row in summary.iterrows():
        table.add_row(str(hospital), *(f"{row[f'{c} mean']:.3f} ± {row[f'{c} std']:.3f}"
                                       for c in columns))
    console.print(table)

    figure, axis = plt.subplots(figsize=(8, 4))
    hospitals = list(summary.index)
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        axis.bar(np.arange(len(hospitals)) + i * width, summary[f"{model} mean"], width,
                 yerr=summary[f"{model} std"], capsize=3, label=model)
    axis.set_xticks(np.arange(len(hospitals)) + width * (len(models) - 1) / 2, hospitals)
    axis.set(ylabel=f"test {score}", ylim=(0, 1),
             title=f"Each hospital's test patients, mean ± sd over {len(args.seeds)} seeds")
    axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.out / "summary.png", dpi=100)

    margin = summary["personal - best baseline mean"]
    ratio = summary["federated / pooled mean"].mean()
    console.print(f"Written: {args.out / 'summary.csv'}, {args.out / 'summary.png'}")
    console.print(f"personal >= max(local, pooled) - 0.01 at every hospital: "
                  f"{bool((margin >= -0.01).all())} (worst {margin.min():+.3f}); "
                  f"global / pooled {ratio:.3f} (target 0.97)")


if __name__ == "__main__":
    main()
