"""Benchmark: the memory a simulation takes against its number of virtual hospitals.

Runs the smoke segmentation federation (2 rounds of a few local steps) over 10, 25,
50 and 100 virtual hospitals on this machine's private Ray instance, each virtual
hospital one of the smoke cohort's three sites copied into its own folder (its own
manifest and on-disk prepared-data cache). While each run goes, the memory of every
process it started (SuperLink, simulation runtime, Ray and its workers) is sampled:
the sum of resident sets (RSS, counting pages shared between forked workers once per
process) twice a second, and the proportional set size (PSS, shared pages split
between their sharers: what the run really holds) every 2 s. The table gives each
run's peaks; the last line the growth per added hospital between the smallest and
the largest run (target: flat once the workers are warm). Writes memory.csv and
memory.png in --out.

    .venv/bin/python benchmarks/simulation_memory.py --out runs/bench-memory
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import psutil
import tomli_w
from rich.console import Console
from rich.progress import Progress

from simulation.config import load_simulation
from simulation.federation import Cluster, run_federated
from simulation.phantoms.config import cohort_config
from simulation.phantoms.generator import generate
from simulation.simulate import split_hospitals
from tasks.config import load_toml
from tasks.stops import handle_stops

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


class Sampler:
    """Peak memory of every process below this one, sampled in a thread while in use."""

    def __init__(self) -> None:
        self.peak_rss = self.peak_pss = 0.0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me, tick = psutil.Process(), 0
        while not self._stop.wait(0.5):
            tree = me.children(recursive=True)
            rss = pss = 0
            for process in tree:
                try:
                    rss += process.memory_info().rss
                    if tick % 4 == 0:
                        pss += process.memory_full_info().pss
                except psutil.Error:
                    continue
            self.peak_rss = max(self.peak_rss, rss / MB)
            if tick % 4 == 0:
                self.peak_pss = max(self.peak_pss, pss / MB)
            self.processes = max(self.processes, len(tree))
            tick += 1


def virtual_hospitals(sites: list[tuple[str, object]], count: int, folder: Path) -> None:
    """``count`` hospital folders, hospital k holding site k % 3's patients, listed in
    ``hospitals.json`` as ``split_hospitals`` writes it."""
    listing = []
    for k in range(count):
        _, manifest = sites[k % len(sites)]
        name = f"hospital-{k:03d}"
        path = folder / name / "manifest.csv"
        manifest.with_absolute_paths(path.parent).save(path)
        listing.append({"name": name, "manifest": f"{name}/manifest.csv"})
    (folder / "hospitals.json").write_text(json.dumps(listing, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-memory"))
    parser.add_argument("--hospitals", type=int, nargs="+", default=[10, 25, 50, 100])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus-per-hospital", type=int, default=1)
    args = parser.parse_args()
    handle_stops()  # SIGTERM and SIGHUP too: every process it started is stopped
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    smoke = load_simulation(ROOT / "configs" / "federated_smoke.toml")
    cohort = cohort_config(load_toml(ROOT / "configs" / "phantoms_smoke.toml"), "smoke")
    manifest = generate(cohort, out / "phantoms")
    sites = split_hospitals(manifest, {"method": "site"}, out / "sites")
    cluster = Cluster(cpus_per_hospital=args.cpus_per_hospital)
    rows = []
    with Progress(console=console) as progress:
        bar = progress.add_task("Virtual hospitals", total=sum(args.hospitals))
        for count in args.hospitals:
            run = out / f"n{count:03d}"
            virtual_hospitals(sites, count, run / "hospitals")
            experiment = {"data": {"manifest": str(out / "phantoms" / "manifest.csv")},
                          "task": smoke["task"], "train": smoke["train"],
                          "federation": {**smoke["federation"], "rounds": args.rounds,
                                         "local_steps": 2, "min_hospitals": count},
                          "output": {"dir": str(run / "federated")}}
            (run / "experiment.toml").write_text(tomli_w.dumps(experiment))
            started = time.perf_counter()
            with Sampler() as sampler:
                run_federated(run / "experiment.toml", run / "hospitals", count, run / "work",
                              cluster=cluster)
            rounds = pd.read_csv(run / "federated" / "federated_metrics.csv")
            rows.append({"hospitals": count, "peak PSS (MB)": round(sampler.peak_pss),
                         "peak RSS sum (MB)": round(sampler.peak_rss),
                         "processes": sampler.processes,
                         "replies": int(rounds["train_loss"].notna().sum()),
                         "seconds": round(time.perf_counter() - started, 1)})
            progress.advance(bar, count)
            console.print(rows[-1])
    table = pd.DataFrame(rows)
    table.to_csv(out / "memory.csv", index=False)
    console.print(table.to_string(index=False))

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(table["hospitals"], table["peak PSS (MB)"], "o-", label="peak PSS")
    axis.plot(table["hospitals"], table["peak RSS sum (MB)"], "s--", label="peak RSS sum")
    axis.set_xlabel("virtual hospitals")
    axis.set_ylabel("MB")
    axis.set_ylim(bottom=0)
    axis.set_title(f"Simulation memory ({args.cpus_per_hospital} CPU per hospital)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "memory.png", dpi=120)

    first, last = table.iloc[0], table.iloc[-1]
    slope = (last["peak PSS (MB)"] - first["peak PSS (MB)"]) / (last.hospitals - first.hospitals)
    console.print(f"PSS per added hospital: {slope:.2f} MB "
                  f"({first['peak PSS (MB)']} MB at {first.hospitals}, "
                  f"{last['peak PSS (MB)']} MB at {last.hospitals})")


if __name__ == "__main__":
    main()
