"""Benchmark: what a deployed round costs on top of the compute it runs, and its bytes.

A real deployment on 127.0.0.1, started with spinefl's commands as a coordinator and
hospitals would: the TLS SuperLink with node authentication behind the nginx proxy,
and three hospitals' SuperNodes (the default phantom cohort split by site), each
running every Flower message in a new process. For each ``--steps`` count of local
steps (30 and 300 by default) it runs ``--rounds`` rounds of the default segmentation
task with the nodes' warm workers, and for the first count also with a process per
request. Side by side:

- the median round time (rounds after the first, which prepares each hospital's data
  and caches it on disk, and before the last, which adds the evaluation after the last
  round; a round in between is one message to each hospital: validate the global model,
  then train) against the same local compute without Flower: one process per
  hospital, started together as the nodes run (three hospitals share this machine's
  cores either way), each running the same local steps and the validation on data
  it prepared beforehand; the time until the last ends, the median of ``--repeats``
  runs just before and ``--repeats`` just after that step count's deployments (the
  ratio; the difference is the round's fixed cost, what it costs whatever the compute;
  the medians before and after are shown, as this shared machine's speed drifts);
- what preparing a hospital's training data costs cold and from the on-disk cache;
- the bytes each hospital received and sent per round through the proxy (its access
  log, HTTP inside TLS) against the model's fp32 size (the first deployment).

    .venv/bin/python benchmarks/deployment_overhead.py --out runs/bench-deployment

The last line is the ratio with warm workers at each step count.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import tomli_w
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from server.operations import run_traffic, runs  # noqa: E402
from simulation.phantoms.config import load_cohort_config  # noqa: E402
from simulation.phantoms.generator import generate  # noqa: E402
from simulation.simulate import split_hospitals  # noqa: E402
from tasks.blocks.cache import PreparedCache  # noqa: E402
from tasks.checkpoint import load_checkpoint  # noqa: E402
from tasks.config import validate  # noqa: E402
from tasks.manifest import Manifest  # noqa: E402
from tasks.registry import task_class  # noqa: E402
from tasks.run_config import RUN_KEYS  # noqa: E402
from tasks.stops import handle_stops  # noqa: E402
from tests.helpers.deployment import Federation  # noqa: E402

# Local epochs a round, enough that ``--steps`` decides (a hospital's epoch here is a few
# dozen steps).
EPOCHS = 1000


def deployed(out: Path, hospitals: dict[str, Path], train: dict, rounds: int, steps: int,
             console: Console, *join: str) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Run the federation in ``out`` (nodes joined with ``join``'s options); its per-round
    metrics, per-hospital traffic and the model's fp32 bytes."""
    out.mkdir()
    federation = Federation(out, hospitals)
    try:
        with console.status("Starting the coordinator and three hospitals' nodes"):
            federation.start_coordinator()
            for name in hospitals:
                federation.admit(name)
                federation.approve(name)
                federation.join(name, *join)
            for name in hospitals:
                federation.wait_connected(name)
        experiment = {"task": {"name": "segmentation"}, "train": train,
                      "federation": {"rounds": rounds, "local_steps": steps,
                                     "local_epochs": EPOCHS,
                                     "min_hospitals": len(hospitals), "round_timeout": 3600.0},
                      "output": {"dir": "runs/bench"}}
        config = out / "experiment.toml"
        config.write_text(tomli_w.dumps(experiment))
        with console.status(f"{rounds} deployed rounds"):
            done = federation.run(config, timeout=7200)
        if done.returncode != 0:
            raise SystemExit(f"the deployed run failed:\n{done.stdout[-3000:]}{done.stderr}")
        coordinator = federation.coordinator
        run = int(runs(coordinator).run.iloc[-1])
        traffic = run_traffic(coordinator, run)
    finally:
        federation.stop()
    output = federation.output("runs/bench")
    _, model, _ = load_checkpoint(output / "model.pt")
    model_bytes = sum(t.numel() * 4 for t in model.state_dict().values()
                      if t.is_floating_point())
    return pd.read_csv(output / "federated_metrics.csv"), traffic, model_bytes


def preparation(hospitals: dict[str, Path], folder: Path) -> tuple[float, float]:
    """Seconds to prepare every hospital's training rows cold, then from the cache."""
    task = default_segmentation()
    times = []
    for _ in range(2):
        started = time.perf_counter()
        for name, data in hospitals.items():
            rows = Manifest.load(data / "manifest.csv").select(split="train")
            task.train_data(rows, 16, 0, cache=PreparedCache(folder / name))
        times.append(time.perf_counter() - started)
    shutil.rmtree(folder)
    return times[0], times[1]


def default_segmentation():
    cls = task_class("segmentation")
    return cls(validate({"task": {}}, {"task": cls.keys}, "benchmark")["task"])


def bare_compute(hospitals: dict[str, Path], train: dict, steps: int) -> float:
    """Seconds until the last of one process per hospital, started together, has run
    ``steps`` local steps and a validation (data prepared before the clock starts)."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(len(hospitals))
    results = context.Queue()
    workers = [context.Process(target=_hospital_compute,
                               args=(data, train, steps, ready, results))
               for data in hospitals.values()]
    for worker in workers:
        worker.start()
    ends = [results.get(timeout=3600) for _ in workers]
    for worker in workers:
        worker.join()
    return max(end for _, end in ends) - min(start for start, _ in ends)


def _hospital_compute(data: Path, train: dict, steps: int, ready, results) -> None:
    """One hospital's local steps and validation, timed from when all are ready."""
    import torch

    from client.trainer import LocalTrainer
    from tasks.evaluation import evaluate

    task = default_segmentation()
    manifest = Manifest.load(data / "manifest.csv")
    device = torch.device("cpu")
    trainer = LocalTrainer(task, task.build_model(), train, device, run_epochs=1)
    batches = task.train_data(manifest.select(split="train"), train["batch_size"], 0)
    trainer.fit(batches, 1, max_steps=2)  # warm-up
    ready.wait()
    started = time.time()
    trainer.fit(batches, EPOCHS, max_steps=steps)
    evaluate(task, trainer.model, task.select(manifest.select(split="val")), device)
    results.put((started, time.time()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-deployment"))
    parser.add_argument("--rounds", type=int, default=6,
                        help="rounds a deployment (the median is over all but the first "
                        "and the last)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of the bare compute just before and again just after "
                        "each step count's deployments (the median of all of them)")
    parser.add_argument("--steps", type=int, nargs="+", default=[30, 300],
                        help="local steps a round, one deployment each (a process per "
                        "request too for the first)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of each hospital's process (OMP_NUM_THREADS): "
                        "three hospitals share this machine's cores, each would take them all")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds: at least 3 (the first and the last are not counted)")
    handle_stops()  # SIGTERM and SIGHUP too: every process it started is stopped
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the nodes' and the bare processes'

    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    console = Console()

    with console.status("Generating the default phantom cohort"):
        manifest = generate(load_cohort_config(None), out / "phantoms")
    split = split_hospitals(manifest, {"method": "site"}, out / "hospitals")
    hospitals = {name: out / "hospitals" / name for name, _ in split}
    train = validate({"train": {"batch_size": 16, "lr": 0.002}}, {"train": RUN_KEYS["train"]},
                     "benchmark")["train"]
    rows, traffic, model_bytes = [], None, 0
    for steps in args.steps:
        # The bare compute just before and just after this step count's deployments: this
        # shared machine's speed drifts by more than the margin measured over half an hour.
        with console.status(f"The same compute without Flower, {steps} steps (before)"):
            before = [bare_compute(hospitals, train, steps) for _ in range(args.repeats)]
        joins = [("warm worker", ())]
        if steps == args.steps[0]:
            joins.append(("a process per request", ("--no-worker",)))
        deployments = []
        for label, join in joins:
            folder = out / f"{label.replace(' ', '-')}-{steps}"
            metrics, used, model_bytes = deployed(folder, hospitals, train, args.rounds, steps,
                                                  console, *join)
            traffic = used if traffic is None else traffic
            later = metrics[metrics["round"].between(2, args.rounds - 1)]
            per_round = later.groupby("round")
            deployments.append({"nodes": label, "local steps": steps,
                                "deployed round (s)": per_round.round_seconds.first().median(),
                                "inside the nodes (s)": (later.train_seconds + later.val_seconds)
                                .groupby(later["round"]).max().median()})
        with console.status(f"The same compute without Flower, {steps} steps (after)"):
            after = [bare_compute(hospitals, train, steps) for _ in range(args.repeats)]
        bare = statistics.median(before + after)
        for row in deployments:
            row.update({"bare compute (s)": bare,
                        "bare before / after": f"{statistics.median(before):.1f} / "
                                               f"{statistics.median(after):.1f}",
                        "fixed cost (s)": row["deployed round (s)"] - bare,
                        "ratio": row["deployed round (s)"] / bare})
        rows += deployments
    with console.status("Preparing the hospitals' data, cold and cached"):
        cold, cached = preparation(hospitals, out / "prepared")

    traffic = traffic[traffic.hospital.isin(hospitals)].copy()
    for side in ("received", "sent"):
        traffic[f"{side} per round / model"] = (
            traffic[f"{side}_bytes"] / args.rounds / model_bytes).round(3)
        traffic[f"objects {side} per round / model"] = (
            traffic[f"objects_{side}_bytes"] / args.rounds / model_bytes).round(3)
    traffic.to_csv(out / "traffic.csv", index=False)
    console.print(f"Model: {model_bytes / 1e6:.2f} MB in fp32; {args.rounds} rounds")
    console.print(traffic[["hospital", "received per round / model", "sent per round / model",
                           "objects received per round / model",
                           "objects sent per round / model"]].to_string(index=False))
    table = pd.DataFrame(rows).round(3)
    table.to_csv(out / "overhead.csv", index=False)
    console.print(table.to_string(index=False))
    console.print(f"{len(hospitals)} hospitals, {args.steps} local steps a round, "
                  f"{args.threads} torch thread(s) each; preparing their training data: "
                  f"{cold:.2f} s, {cached:.2f} s from the on-disk cache")
    warm = [row for row in rows if row["nodes"] == "warm worker"]
    console.print("ratio " + ", ".join(f"{row['ratio']:.3f} ({row['local steps']} steps)"
                                       for row in warm))


if __name__ == "__main__":
    main()
