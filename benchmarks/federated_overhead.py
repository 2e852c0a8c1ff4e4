"""Benchmark: what Flower costs on top of the training it runs.

Runs a federation over the embedded default phantom cohort split by site
(three hospitals), with a fixed number of local steps per round, and compares
the wall time of a round (server side, rounds after the first, which also
prepares data) with the pure compute the round contains: the same local steps
and the same validation, run by the task directly in this process, one
hospital after the other, with no Flower.

    .venv/bin/python benchmarks/federated_overhead.py --out runs/bench-overhead
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import tomli_w
import torch
from rich.console import Console

from client.trainer import LocalTrainer
from simulation.federation import run_federated
from simulation.phantoms.config import load_cohort_config
from simulation.phantoms.generator import generate
from simulation.simulate import split_hospitals
from tasks.config import validate
from tasks.evaluation import evaluate
from tasks.registry import task_class
from tasks.run_config import RUN_KEYS
from tasks.stops import handle_stops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-overhead"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    handle_stops()  # SIGTERM and SIGHUP too: every process it started is stopped
    out = args.out.resolve()
    console = Console()

    manifest = generate(load_cohort_config(None), out / "phantoms")
    hospitals = split_hospitals(manifest, {"method": "site"}, out / "hospitals")
    task_settings = {"name": "segmentation"}
    train = validate({"train": {"batch_size": 16, "lr": 0.002}}, {"train": RUN_KEYS["train"]},
                     "benchmark")["train"]
    experiment = {"data": {"manifest": str(out / "phantoms" / "manifest.csv")},
                  "task": task_settings, "train": train,
                  "federation": {"rounds": args.rounds, "local_steps": args.steps,
                                 "min_hospitals": len(hospitals)},
                  "output": {"dir": str(out / "federated")}}
    (out / "experiment.toml").write_text(tomli_w.dumps(experiment))
    run_federated(out / "experiment.toml", out / "hospitals", len(hospitals), out / "work")
    rounds = pd.read_csv(out / "federated" / "federated_metrics.csv")
    per_round = rounds.groupby("round")["round_seconds"].first()
    federated = float(per_round[per_round.index > 1].median())

    cls = task_class("segmentation")
    task = cls(validate({"task": {}}, {"task": cls.keys}, "benchmark")["task"])
    device = torch.device("cpu")
    compute = 0.0
    for _, hospital in hospitals:
        trainer = LocalTrainer(task, task.build_model(), train, device, run_epochs=1)
        batches = task.train_data(hospital.select(split="train"), train["batch_size"], 0)
        trainer.fit(batches, 1, max_steps=2)  # warm-up
        started = time.perf_counter()
        trainer.fit(batches, 1, max_steps=args.steps)
        evaluate(task, trainer.model, task.select(hospital.select(split="val")), device)
        compute += time.perf_counter() - started

    table = pd.DataFrame([{"federated round (s)": round(federated, 2),
                           "pure local compute (s)": round(compute, 2),
                           "ratio": round(federated / compute, 3),
                           "hospitals": len(hospitals), "local steps": args.steps}])
    table.to_csv(out / "overhead.csv", index=False)
    console.print(table.to_string(index=False))


if __name__ == "__main__":
    main()
