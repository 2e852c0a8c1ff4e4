"""Benchmark: one task's federated / local-only / pooled comparison on its phantom benchmark.

Runs `spinefl simulate` on the task's default federated config, then prints every metric of
every model on each hospital's test patients (the simulate report's table holds the score
only), and writes them as CSV and a PNG bar chart beside the report.

    .venv/bin/python benchmarks/task_federated.py --config configs/federated_labelling.toml
    .venv/bin/python benchmarks/task_federated.py --config configs/federated_grading.toml
    .venv/bin/python benchmarks/task_federated.py --config configs/federated_cobb.toml
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

from simulation.config import load_simulation
from simulation.report import MODELS
from simulation.simulate import simulate
from tasks.registry import task_class
from tasks.stops import handle_stops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="Run folder (default: the config's).")
    args = parser.parse_args()
    handle_stops()  # SIGTERM and SIGHUP too: every process it started is stopped
    console = Console()
    config = load_simulation(args.config)
    if args.out:
        config["output"]["dir"] = str(args.out)
    out = Path(config["output"]["dir"])
    task = task_class(config["task"]["name"])(
        {k: v for k, v in config["task"].items() if k != "name"})

    started = time.perf_counter()
    results = simulate(config, force=True, console=console)
    minutes = (time.perf_counter() - started) / 60

    metrics = [m for m in task.metric_names() if m in results and results[m].notna().any()]
    table = results.set_index(["hospital", "model"])[["test_images", *metrics]].sort_index()
    table.to_csv(out / "report" / "all_metrics.csv")
    shown = Table(title=f"{task.name}: test metrics per hospital ({minutes:.1f} min in all)")
    for column in ("hospital", "model", "images", *metrics):
        shown.add_column(column)
    for (hospital, model), row in table.iterrows():
        shown.add_row(str(hospital), str(model), str(int(row["test_images"])),
                      *(f"{row[m]:.3f}" for m in metrics))
    console.print(shown)

    shown_metrics = metrics[:3]
    figure, axes = plt.subplots(1, len(shown_metrics), figsize=(5 * len(shown_metrics), 4),
                                squeeze=False)
    for axis, metric in zip(axes[0], shown_metrics, strict=True):
        pivot = results.pivot_table(index="hospital", columns="model", values=metric)
        pivot[[m for m in MODELS if m in pivot]].plot.bar(ax=axis, rot=0, legend=False)
        axis.set(title=metric, xlabel="")
        axis.grid(axis="y", alpha=0.3)
    axes[0, -1].legend(title="model", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(out / "report" / "all_metrics.png", dpi=100)
    console.print(f"Written: {out / 'report' / 'all_metrics.csv'}, "
                  f"{out / 'report' / 'all_metrics.png'}")


if __name__ == "__main__":
    main()
