"""Benchmark: what a federation pays each hospital, for any task, over seeds, with error bars.

Runs `spinefl simulate` on a task's federated config once per training seed (the same
phantom cohort and split), and tables every metric of each hospital's global federated,
personal, local-only and pooled models on that hospital's test patients as mean ± sd over
the seeds. On the task's score it checks issue 17's targets: every hospital's personal
model at least max(local-only, pooled) - 0.01, and the global model at least 0.97 of
pooled (per hospital the ratio of the two models' means over the seeds, then the mean over
hospitals). Writes ``per_seed.csv``, ``summary.csv`` and ``summary.png`` (the score and two
more metrics, bars with sd) under ``--out``, and each seed's run in ``--out/seed-<n>``.

With ``--update-precision float32 float16`` each seed's federation runs once per precision
of the hospitals' replies (``federation.update_precision``; the baselines with the first
only): the later ones' models are tabled as models of their own (``federated-float16``,
``personal-float16``), with the
paired difference in score and the bytes each hospital sent a round against the float32
model's (the replies' ``update-bytes``). ``--no-baselines`` runs the federations alone.

    .venv/bin/python benchmarks/task_federated.py --config configs/federated.toml \\
        --personalisation ditto --out runs/bench-personal
    .venv/bin/python benchmarks/task_federated.py --config configs/federated_labelling.toml
    .venv/bin/python benchmarks/task_federated.py --config configs/federated_grading.toml
    .venv/bin/python benchmarks/task_federated.py --config configs/federated_cobb.toml
    .venv/bin/python benchmarks/task_federated.py --config configs/federated.toml \\
        --update-precision float32 float16 --no-baselines --out runs/bench-float16
    .venv/bin/python benchmarks/task_federated.py --config configs/federated.toml \\
        --strategy fedbn --set task.norm_affine=true --no-baselines --out runs/bench-fedbn
"""

from __future__ import annotations

import argparse
import copy
import time
import tomllib
from pathlib import Path
from typing import Any

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
from tasks.config import ConfigError
from tasks.packing import PRECISIONS
from tasks.registry import task_class
from tasks.stops import handle_stops

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--personalisation", choices=("none", "ditto", "finetune"),
                        help="federation.personalisation (default: the config's)")
    parser.add_argument("--strategy", help="federation.strategy (default: the config's)")
    parser.add_argument("--set", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                        help="config keys to change (TOML values, validated with the file), "
                        "e.g. task.norm_affine=true")
    parser.add_argument("--update-precision", nargs="+", choices=PRECISIONS,
                        help="federation.update_precision, one federation each (default: "
                        "the config's)")
    parser.add_argument("--no-baselines", action="store_true",
                        help="no local-only or pooled models")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, help="default: runs/bench-<config name>")
    parser.add_argument("--reuse", action="store_true",
                        help="read back a seed whose run folder holds a finished report "
                             "instead of running it again (a benchmark stopped part-way "
                             "carries on; the folder is trusted to be this config's)")
    args = parser.parse_args()
    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        parser.error(f"--set: {e}")
    for key in ("personalisation", "strategy"):
        if getattr(args, key):
            overrides.setdefault("federation", {})[key] = getattr(args, key)
    try:
        base = load_simulation(args.config, overrides)
    except ConfigError as e:
        parser.error(str(e))
    handle_stops()  # SIGTERM and SIGHUP too: every process it started is stopped
    console = Console()
    out = args.out or ROOT / "runs" / f"bench-{args.config.stem}"
    rows, sent = [], []
    started = time.perf_counter()
    precisions = args.update_precision or [None]
    for seed in args.seeds:
        for precision in precisions:
            config = copy.deepcopy(base)
            config["train"]["seed"] = seed
            name = f"seed-{seed}"
            if precision is not None:
                config["federation"]["update_precision"] = precision
            if precision not in (None, precisions[0]):
                name += f"-{precision}"
            if args.no_baselines or precision not in (None, precisions[0]):
                config["baselines"] = {"pooled": False, "local": False}
            config["output"]["dir"] = str(out / name)
            finished = out / name / "report" / "results.csv"
            if args.reuse and finished.is_file():
                console.print(f"{name}: reusing {finished}")
                results = pd.read_csv(finished)
            else:
                console.rule(name)
                results = simulate(config, force=True, console=console)
            label = config["federation"]["update_precision"]
            if precision not in (None, precisions[0]):  # its models, apart from the first's
                results = results.assign(model=results.model + f"-{label}")
            rows.append(results.assign(seed=seed))
            sent.append(update_bytes(out / name).assign(seed=seed, precision=label))
    minutes = (time.perf_counter() - started) / 60
    task = task_class(config["task"]["name"])(
        {k: v for k, v in config["task"].items() if k != "name"})
    per_seed = pd.concat(rows, ignore_index=True)
    per_seed.to_csv(out / "per_seed.csv", index=False)
    names = dict.fromkeys([task.score, *task.metric_names()])  # the score first
    metrics = [m for m in names if m in per_seed and per_seed[m].notna().any()]

    summary = per_seed.groupby(["hospital", "model"])[["test_images", *metrics]].agg(
        ["mean", "std"])
    summary.columns = [f"{name} {stat}" for name, stat in summary.columns]
    order = {model: i for i, model in enumerate(MODELS)}
    summary = summary.sort_index(key=lambda index: index.map(
        lambda v: order.get(v, len(order))) if index.name == "model" else index)
    summary.to_csv(out / "summary.csv")
    setting = config["federation"]["personalisation"]
    table = Table(title=f"{task.name}: test metrics, mean ± sd over seeds {args.seeds} "
                        f"(personalisation {setting}; {minutes:.0f} min in all)")
    for column in ("hospital", "model", "images", *metrics):
        table.add_column(column)
    for (hospital, model), row in summary.iterrows():
        table.add_row(str(hospital), str(model), str(int(row["test_images mean"])),
                      *(f"{row[f'{m} mean']:.3f} ± {row[f'{m} std']:.3f}" for m in metrics))
    console.print(table)
    rates = ("_majority", "_prevalence")  # the data's reference rates, not the model's
    plot(per_seed, [m for m in metrics if not m.endswith(rates)][:3], out / "summary.png",
         len(args.seeds))
    console.print(f"Written: {out / 'per_seed.csv'}, {out / 'summary.csv'}, "
                  f"{out / 'summary.png'}")
    console.print(targets(per_seed, task.score))
    if len(precisions) > 1:
        console.print(precision_cost(per_seed, pd.concat(sent), task, precisions))


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``SECTION.KEY=VALUE`` items (VALUE in TOML) as overrides by section, then key."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        name, equals, value = item.partition("=")
        section, dot, key = name.partition(".")
        if not (equals and dot and section and key):
            raise ValueError(f"{item!r}: expected SECTION.KEY=VALUE")
        try:
            overrides.setdefault(section, {})[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{item!r}: the value is not TOML ({e})") from None
    return overrides


def targets(per_seed: pd.DataFrame, score: str) -> str:
    """Issue 17's targets on the task's score, from each seed's figures; a comparison takes
    only the (hospital, seed) pairs that have both sides' models."""
    wide = per_seed.pivot_table(index=["hospital", "seed"], columns="model", values=score)
    if not {"federated", "pooled"} <= set(wide):
        return "no federated or no pooled model: the targets are not checked"
    paired = wide.dropna(subset=["federated", "pooled"])
    means = paired.groupby("hospital").mean()
    ratios = (means["federated"] / means["pooled"])[means["pooled"] > 0]
    line = (f"global / pooled on {score} (each hospital's mean over seeds, then the mean over "
            f"{len(ratios)} hospitals with a positive pooled score): {ratios.mean():.3f} (target "
            "0.97); global - pooled per hospital: "
            + ", ".join(f"{h} {d:+.3f}" for h, d in (means["federated"] - means["pooled"]).items()))
    if {"personal", "local"} <= set(wide):
        paired = wide.dropna(subset=["personal", "local", "pooled"])
        margin = (paired["personal"] - paired[["local", "pooled"]].max(axis=1)).groupby(
            "hospital").mean()
        line += ("; personal - max(local, pooled) per hospital: "
                 + ", ".join(f"{h} {m:+.3f}" for h, m in margin.items())
                 + f" (target >= -0.01 everywhere: {bool((margin >= -0.01).all())})")
    missing = int(wide.isna().sum().sum())
    return line + (f"; {missing} (hospital, seed, model) results missing" if missing else "")


def update_bytes(run: Path) -> pd.DataFrame:
    """Each hospital's mean bytes of weights sent a round (its replies' ``update-bytes``)
    in a seed's run folder (no rows when its federation recorded none)."""
    metrics = pd.read_csv(next(run.rglob("federated_metrics.csv")))
    if "train_update-bytes" not in metrics:
        return pd.DataFrame(columns=["hospital", "bytes"])
    return (metrics.groupby("hospital")["train_update-bytes"].mean().rename("bytes")
            .reset_index())


def precision_cost(per_seed: pd.DataFrame, sent: pd.DataFrame, task, precisions: list[str]
                   ) -> str:
    """Each later precision's score against the first's, paired by seed and hospital, and
    the bytes a hospital sent a round against the float32 model's."""
    model_bytes = 4 * sum(t.numel() for t in task.build_model().state_dict().values()
                          if t.is_floating_point())
    wide = per_seed.pivot_table(index=["hospital", "seed"], columns="model", values=task.score)
    lines = []
    for precision in precisions[1:]:
        difference = (wide[f"federated-{precision}"] - wide["federated"]).groupby("hospital")
        lines.append(f"{task.score}, federated-{precision} - federated ({precisions[0]}) per "
                     "hospital, mean ± sd over seeds: " + ", ".join(
                         f"{h} {m:+.4f} ± {s:.4f}" for h, m, s in zip(
                             difference.mean().index, difference.mean(), difference.std(),
                             strict=True)))
    ratio = sent.groupby("precision")["bytes"].mean() / model_bytes
    lines.append("bytes sent a round per hospital / float32 model: " + ", ".join(
        f"{p} {r:.3f}" for p, r in ratio.items()))
    return "\n".join(lines)


def plot(per_seed: pd.DataFrame, metrics: list[str], path: Path, seeds: int) -> None:
    """Grouped bars (hospital x model) with sd error bars, one panel per metric."""
    present = set(per_seed.model)
    models = [m for m in MODELS if m in present] + sorted(present - set(MODELS))
    hospitals = sorted(set(per_seed.hospital))
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4),
                                squeeze=False)
    width = 0.8 / len(models)
    for axis, metric in zip(axes[0], metrics, strict=True):
        stats = per_seed.groupby(["model", "hospital"])[metric].agg(["mean", "std"])
        for i, model in enumerate(models):
            values = stats.loc[model].reindex(hospitals)
            axis.bar(np.arange(len(hospitals)) + i * width, values["mean"], width,
                     yerr=values["std"], capsize=3, label=model)
        axis.set_xticks(np.arange(len(hospitals)) + width * (len(models) - 1) / 2, hospitals,
                        fontsize=8)
        axis.set(title=f"{metric} (mean ± sd, {seeds} seeds)")
        axis.grid(axis="y", alpha=0.3)
    axes[0, -1].legend(title="model", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
