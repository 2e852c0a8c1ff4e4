"""Benchmark: what patient-level privacy costs in Dice, federated and pooled, from scratch and
from a public starting model.

Runs `spinefl simulate` on the DP benchmark (configs/federated_dp.toml: three
hospitals of 100 phantom patients, 70 of them training, each with its own
scanner) without DP and with DP-SGD at a target epsilon per patient of 8, 4
and 1 (delta 1e-5, RDP accountant), each from scratch and from the public
starting model (trained once here on configs/phantoms_public.toml's cohort
with configs/public_pretrain.toml), over several seeds. Every run trains the
federated model and the pooled baseline and scores both on every hospital's
test patients. DP runs take the recipe of configs/federated_dp.toml; runs
without DP train on slices with the schedule in NO_DP below.

Prints and writes (``--out``): ``runs.csv`` (one row per run, model and
hospital; finished runs are kept, so a stopped benchmark goes on where it
stopped), ``dp_utility.csv`` (test Dice, mean of the hospitals, mean and sd
over seeds, and its ratio to the run without DP from the same start) and
``dp_utility.png``.

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

from client.training import train  # noqa: E402
from simulation.config import load_simulation  # noqa: E402
from simulation.phantoms.config import cohort_config  # noqa: E402
from simulation.phantoms.generator import generate  # noqa: E402
from simulation.simulate import evaluate_on_hospitals, simulate  # noqa: E402
from tasks.config import load_toml  # noqa: E402
from tasks.device import select_device  # noqa: E402
from tasks.manifest import Manifest  # noqa: E402
from tasks.run_config import load_run_config  # noqa: E402
from tasks.stops import handle_stops  # noqa: E402
from tasks.tables import markdown_table  # noqa: E402

EPSILONS = (8.0, 4.0, 1.0)
STARTS = ("scratch", "public")
# Without DP the unit is the slice: batches of 32 slices, whole passes over them.
NO_DP = {"train": {"batch_size": 32, "epochs": 1, "lr": 0.002, "schedule": "cosine"},
         "federation": {"rounds": 4, "local_epochs": 1, "local_steps": 150}}


def public_model(out: Path, console: Console) -> Path:
    """The public starting model: configs/public_pretrain.toml on its phantom cohort, trained
    once into ``out/public`` (reused when there)."""
    model = out / "public" / "model.pt"
    if model.is_file():
        return model
    cohort_path = ROOT / "configs" / "phantoms_public.toml"
    manifest = generate(cohort_config(load_toml(cohort_path), str(cohort_path)),
                        out / "data" / "phantoms-public")
    config = load_run_config(ROOT / "configs" / "public_pretrain.toml",
                             {"data": {"manifest": str(manifest)},
                              "output": {"dir": str(out / "public")}})
    console.rule("public starting model")
    train(config, force=True, console=console)
    return model


def settings(base: dict, start: Path | None, epsilon: float | None, seed: int,
             out: Path) -> dict:
    """The benchmark's experiment at one start, privacy level (None = no DP) and seed."""
    config = copy.deepcopy(base)
    config["baselines"]["local"] = False
    config["output"]["dir"] = str(out)
    config["train"]["seed"] = seed
    config["train"]["init_checkpoint"] = str(start) if start else ""
    if epsilon is None:
        config["privacy"]["enabled"] = False
        config["hospitals"]["max_epsilon"] = 0.0
        for section, values in NO_DP.items():
            config[section].update(values)
    else:
        config["privacy"]["target_epsilon"] = epsilon
        config["hospitals"]["max_epsilon"] = max(epsilon, config["hospitals"]["max_epsilon"])
    return config


def label(epsilon: float | None) -> str:
    return "no DP" if epsilon is None else f"{epsilon:g}"


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean over hospitals per run, then mean and sd over seeds, and the ratio to no DP from
    the same start (ratio of the seed means)."""
    per_run = runs.groupby(["start", "epsilon", "model", "seed"], sort=False)["dice_mean"] \
        .mean().reset_index()
    table = per_run.groupby(["start", "epsilon", "model"], sort=False)["dice_mean"] \
        .agg(["mean", "std", "count"]).reset_index()
    reference = table[table.epsilon == "no DP"].set_index(["start", "model"])["mean"]
    table["ratio_to_no_dp"] = [
        row["mean"] / reference.get((row["start"], row["model"]), float("nan"))
        for _, row in table.iterrows()]
    table = table.rename(columns={"mean": "dice_mean", "std": "dice_sd", "count": "seeds"})
    return table


def plot(table: pd.DataFrame, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    order = ["no DP", *[f"{e:g}" for e in EPSILONS]]
    for (start, model), group in table.groupby(["start", "model"], sort=False):
        group = group.set_index("epsilon").reindex([o for o in order if o in set(group.epsilon)])
        axis.errorbar(group.index, group["dice_mean"], yerr=group["dice_sd"].fillna(0),
                      marker="o", capsize=3, label=f"{model}, from {start}")
    axis.set(xlabel="epsilon per patient (delta 1e-5)",
             ylabel="test Dice (mean of hospitals)", ylim=(0, 1),
             title="Privacy and utility (mean and sd over seeds)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-dp"))
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "federated_dp.toml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS))
    parser.add_argument("--starts", nargs="+", default=list(STARTS), choices=STARTS)
    args = parser.parse_args()
    handle_stops()  # SIGTERM and SIGHUP too: every process it started is stopped
    console = Console()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = load_simulation(args.config)
    public = public_model(out, console) if "public" in args.starts else None
    record = out / "runs.csv"
    runs = pd.read_csv(record, dtype={"epsilon": str}) if record.is_file() else pd.DataFrame()
    if public is not None and (runs.empty or not (runs.model == "public only").any()):
        cohort = Manifest.load(Path(base["phantoms"]["dir"]) / "manifest.csv")
        hospitals = [(site, Manifest(cohort.table[cohort.table.site == site], cohort.root))
                     for site in sorted(cohort.table.site.unique())]
        rows = evaluate_on_hospitals(public, hospitals, select_device("auto"))
        extra = pd.DataFrame([{"start": "public", "epsilon": "no DP", "seed": 0,
                               "model": "public only", **row} for row in rows])
        runs = pd.concat([runs, extra], ignore_index=True)
        runs.to_csv(record, index=False)
    for seed in args.seeds:  # every setting once, then again: a stopped run has them all
        for start in reversed(args.starts):
            for epsilon in (None, *args.epsilons):
                done = not runs.empty and ((runs.start == start) & (runs.epsilon == label(
                    epsilon)) & (runs.seed == seed) & (runs.model != "public only")).any()
                if done:
                    continue
                console.rule(f"from {start}, epsilon {label(epsilon)}, seed {seed}")
                folder = out / "runs" / f"{start}-{label(epsilon).replace(' ', '-')}-{seed}"
                config = settings(base, public if start == "public" else None, epsilon, seed,
                                  folder)
                results = simulate(config, force=True, console=console)
                extra = pd.DataFrame([{"start": start, "epsilon": label(epsilon), "seed": seed,
                                       **row} for row in results.to_dict("records")])
                runs = pd.concat([runs, extra], ignore_index=True)
                runs.to_csv(record, index=False)
    table = summarise(runs[runs.model != "public only"])
    table.to_csv(out / "dp_utility.csv", index=False)
    console.print(markdown_table(table))
    public_only = runs[runs.model == "public only"]
    if not public_only.empty:
        console.print(f"Public model alone (no training at the hospitals): test Dice "
                      f"{public_only.dice_mean.mean():.3f} (mean of hospitals)")
    plot(table, out / "dp_utility.png")
    console.print(f"Table: {out / 'dp_utility.csv'}  Plot: {out / 'dp_utility.png'}")


if __name__ == "__main__":
    main()
