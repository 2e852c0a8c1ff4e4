"""`spinefl simulate`: a whole federation on one machine, with its baselines.

Stages, each written under the output folder:

1. data: phantoms generated (or reused) from ``[phantoms]``, or ``data.manifest``;
2. ``hospitals/``: the manifest partitioned by patient into virtual hospitals
   (``hospitals.json``, one manifest each, ``summary.csv``);
3. ``federated/``: the Flower run (local SuperLink, Ray simulation engine):
   per-hospital metrics per round, round checkpoints, the final ``model.pt``;
4. ``pooled/`` and ``local/<hospital>/``: the baselines on the very same splits;
   each hospital's personal model, where the run personalises, is where the hospital
   keeps it (``hospitals/<hospital>/.spinefl/personal/<run>/model.pt``);
5. ``report/``: every model on every hospital's test patients (``cross_site.csv``; each
   hospital's own models in ``results.csv``), plots, and ``summary.md``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import tomli_w
import torch
from rich.console import Console

from client.personal import PERSONAL_FOLDER, personal_model_path
from client.training import claim_run_folder, train
from server.app import ROUND_CHECKPOINT
from simulation import partition
from simulation.federation import Cluster, run_federated
from simulation.phantoms.config import CohortConfig, cohort_config
from simulation.phantoms.generator import generate
from simulation.report import write_report
from tasks.checkpoint import load_checkpoint
from tasks.config import load_toml
from tasks.device import select_device
from tasks.errors import UserError
from tasks.evaluation import evaluate
from tasks.files import write_table, write_text
from tasks.locks import folder_lock
from tasks.manifest import Manifest
from tasks.protocol import FEDERATION_ID
from tasks.tables import frame_table

# Lines of the federated run's log worth showing: hospitals, rounds, per-hospital results,
# failures, resumption and the end (not Flower's configuration tree, whose lines hold " | ").
PROGRESS_LINE = re.compile(r"\[ROUND|round \d+[ :]|failed|Final global model|The run stops|"
                           r"Resuming after|Hospitals: ")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def split_hospitals(manifest: Manifest, settings: dict[str, Any], folder: Path,
                    budget: dict[str, Any] | None = None) -> list[tuple[str, Manifest]]:
    """Partition ``manifest`` and write each hospital's manifest (paths made absolute) and,
    in ``hospitals.json``, its name, manifest, privacy budget (``[hospitals]``) and device."""
    method = settings["method"]
    if method == "site":
        parts = partition.by_site(manifest)
        names = [sorted(p.table.site.unique())[0] for p in parts]
    else:
        if method == "iid":
            parts = partition.iid(manifest, settings["hospitals"], settings["seed"])
        elif method == "dirichlet":
            parts = partition.dirichlet(manifest, settings["hospitals"], settings["column"],
                                        settings["alpha"], settings["seed"])
        elif method == "quantity":
            parts = partition.quantity(manifest, settings["hospitals"], settings["ratio"],
                                       settings["seed"])
        else:
            mixes = [mix.split("+") for mix in settings["mixes"]]
            parts = partition.modality_mix(manifest, mixes, settings["seed"])
        names = [f"hospital-{i}" for i in range(len(parts))]
    folder.mkdir(parents=True, exist_ok=True)
    listing, hospitals = [], []
    for name, part in zip(names, parts, strict=True):
        path = folder / _safe(name) / "manifest.csv"
        hospital = part.with_absolute_paths(path.parent)
        hospital.save(path)
        entry = {"name": name, "manifest": f"{_safe(name)}/manifest.csv"}
        if budget:
            entry["delta"] = budget["delta"]
            entry["device"] = budget.get("device", "auto")
            if budget["max_epsilon"] > 0:
                entry["max_epsilon"] = budget["max_epsilon"]
        listing.append(entry)
        hospitals.append((name, hospital))
    write_text(folder / "hospitals.json", json.dumps(listing, indent=2))
    write_table(partition.summary([h for _, h in hospitals], names), folder / "summary.csv")
    return hospitals


def _run_config(config: dict[str, dict[str, Any]], manifest: Path, out: Path,
                epochs: int | None = None) -> dict[str, dict[str, Any]]:
    train_settings = dict(config["train"])
    if epochs is not None:
        train_settings["epochs"] = epochs
    return {"data": {"manifest": str(manifest)}, "task": config["task"],
            "train": train_settings, "privacy": config["privacy"], "output": {"dir": str(out)}}


def personal_models(federated: Path, folder: Path, hospitals: list[tuple[str, Manifest]]
                    ) -> dict[str, Path]:
    """Each virtual hospital's own model of the federated run whose final model is
    ``federated`` (``folder``: the hospitals' data folders), where it kept one."""
    _, _, payload = load_checkpoint(federated)
    identity = payload.get(FEDERATION_ID)
    if not isinstance(identity, str):
        return {}
    paths = {name: personal_model_path(folder / _safe(name), identity) for name, _ in hospitals}
    return {name: path for name, path in paths.items() if path.is_file()}


def evaluate_on_hospitals(model_path: Path, hospitals: list[tuple[str, Manifest]],
                          device: torch.device) -> list[dict[str, Any]]:
    """The model's metrics on each hospital's test patients."""
    task, model, _ = load_checkpoint(model_path)
    model.to(device)
    rows = []
    for name, manifest in hospitals:
        test = task.select(manifest.select(split="test"))
        if len(test) == 0:
            continue
        rows.append({"hospital": name, "test_images": len(test),
                     **evaluate(task, model, test, device).metrics})
    return rows


def simulate(config: dict[str, dict[str, Any]], force: bool = False, resume: bool = False,
             console: Console | None = None) -> pd.DataFrame:
    """Run the whole experiment; return the results table (model x hospital).

    ``resume`` continues the federated run of this output folder after its last
    finished round; ``force`` starts afresh in a folder holding another run.
    """
    console = console or Console()
    out = Path(config["output"]["dir"]).resolve()
    if resume and not (out / "federated" / ROUND_CHECKPOINT).is_file():
        raise UserError(f"{out}: no federated round checkpoint to resume from")
    cohort, manifest = None, None
    if config["phantoms"]["enabled"]:
        cohort_path = config["phantoms"]["config"]
        raw = load_toml(Path(cohort_path)) if cohort_path else {}
        cohort = cohort_config(raw, cohort_path or "default cohort")
    else:
        manifest = Manifest.load(Path(config["data"]["manifest"]))
    check_hospital_count(config, cohort, manifest)
    with folder_lock(out):
        if not resume:
            claim_run_folder(out, force)
            shutil.rmtree(out / "federated", ignore_errors=True)
            for kept in (out / "hospitals").glob(f"*/{PERSONAL_FOLDER}"):
                shutil.rmtree(kept)  # earlier runs' personal models
        if cohort is not None:
            manifest = generate(cohort, Path(config["phantoms"]["dir"]))
        return _simulate(config, manifest, out, resume, console)


def check_hospital_count(config: dict[str, dict[str, Any]], cohort: CohortConfig | None,
                         manifest: Manifest | None) -> None:
    """Refuse, before any data is made, a federation whose rounds would wait for more
    hospitals than the partition makes."""
    partition, federation = config["partition"], config["federation"]
    if partition["method"] == "modality":
        count = len(partition["mixes"])
    elif partition["method"] != "site":
        count = partition["hospitals"]
    elif cohort is not None:
        count = len(cohort.scanners)
    else:
        count = manifest.table.site.nunique()
    if federation["min_hospitals"] > count:
        raise UserError(f"federation.min_hospitals = {federation['min_hospitals']}, but the "
                        f"partition ({partition['method']}) makes {count} hospital(s): every "
                        f"round would wait for hospitals that never come; set it to {count} "
                        "or fewer")


def _simulate(config: dict[str, dict[str, Any]], manifest: Manifest, out: Path, resume: bool,
              console: Console) -> pd.DataFrame:
    hospitals = split_hospitals(manifest, config["partition"], out / "hospitals",
                                {**config["hospitals"], "device": config["train"]["device"]})
    summary = pd.read_csv(out / "hospitals" / "summary.csv")
    console.print(frame_table("Virtual hospitals", summary))

    pooled_manifest = Manifest(pd.concat([m.table for _, m in hospitals], ignore_index=True),
                               out / "hospitals")
    pooled_manifest.save(out / "hospitals" / "pooled.csv")
    federated = out / "federated"
    experiment = {**_run_config(config, out / "hospitals" / "pooled.csv", federated),
                  "federation": config["federation"]}
    write_text(out / "experiment.toml", tomli_w.dumps(experiment))
    console.print(f"[bold]Federated training[/] ({config['federation']['strategy']}, "
                  f"{len(hospitals)} hospitals, {config['federation']['rounds']} rounds)")

    def show(line: str) -> None:
        if PROGRESS_LINE.search(line):
            console.print(f"  {line.split(':', 1)[-1].strip()}")

    run_federated(out / "experiment.toml", out / "hospitals", len(hospitals), federated, show,
                  resume=resume, cluster=Cluster.of(config["ray"]))
    if not (federated / "model.pt").is_file():
        raise UserError(f"the federated run ended without a model; see {federated / 'run.log'}")

    # (model kind, the hospital whose model it is or "all", its checkpoint)
    models = [("federated", "all", federated / "model.pt")]
    models += [("personal", name, path) for name, path in
               personal_models(federated / "model.pt", out / "hospitals", hospitals).items()]
    if config["baselines"]["pooled"]:
        console.print("[bold]Pooled baseline[/]")
        train(_run_config(config, out / "hospitals" / "pooled.csv", out / "pooled"),
              force=True, console=console)
        models.append(("pooled", "all", out / "pooled" / "model.pt"))
    if config["baselines"]["local"]:
        for name, _ in hospitals:
            console.print(f"[bold]Local-only baseline[/]: {name}")
            folder = out / "local" / _safe(name)
            own = out / "hospitals" / _safe(name) / "manifest.csv"
            train(_run_config(config, own, folder), force=True, console=console)
            models.append(("local", name, folder / "model.pt"))
    device = select_device(config["train"]["device"])
    cross = pd.DataFrame([{"model": kind, "owner": owner, **row} for kind, owner, path in models
                          for row in evaluate_on_hospitals(path, hospitals, device)])
    own = (cross.owner == "all") | (cross.owner == cross.hospital)
    results = cross[own].drop(columns="owner").reset_index(drop=True)
    write_report(results, federated / "federated_metrics.csv", summary, config, out / "report",
                 cross, training_steps(out, [name for name, _ in hospitals], config["baselines"]))
    return results


def training_steps(out: Path, hospitals: list[str], baselines: dict[str, bool]
                   ) -> dict[str, int]:
    """Optimiser steps each kind of training of the run in ``out`` took, summed over its
    hospitals and rounds or epochs (what the report states of their compute): the global
    model's, the personal models' (Ditto's every round, the final fine-tuning's; not
    reported under DP), and the baselines this run trained."""
    rounds = pd.read_csv(out / "federated" / "federated_metrics.csv")
    steps = {"federated (global model)": int(rounds.get("train_steps", pd.Series()).sum())}
    personal = [c for c in ("train_personal-steps", "val_personal-steps") if c in rounds]
    if personal:
        steps["federated (personal models)"] = int(rounds[personal].sum().sum())
    folders = {"pooled": [out / "pooled"] if baselines["pooled"] else [],
               "local-only": [out / "local" / _safe(name) for name in hospitals]
               if baselines["local"] else []}
    for kind, trained in folders.items():
        if trained:
            steps[kind] = int(sum(pd.read_csv(folder / "metrics.csv")["train_steps"].sum()
                                  for folder in trained))
    return steps
