"""The `spinefl` command: the root app and its entry point, `main()`.

Stages, each writing what it makes to a folder a person can inspect:
phantoms (or a hospital's prepared data) -> train -> predict.

This module holds the commands that run on one machine (phantoms, train, simulate) and the
manifest, config and datasets groups; it mounts the hospital's commands (client.cli: the
`hospital` group and `predict`) and the coordinator's (server.cli: the `coordinator` group).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from client.cli import _print_report, _print_table, evaluate, hospital_app, predict
from server.cli import coordinator_app
from tasks.errors import UserError
from tasks.files import USER_ERRNOS, os_problem
from tasks.processes import QUIET
from tasks.stops import handle_stops, stop_signal

console = Console()
app = typer.Typer(
    help="spinefl: federated learning for spine imaging across hospitals.\n\n"
    "Start here: `spinefl phantoms --out data/phantoms` makes a labelled synthetic cohort, "
    "`spinefl train --config configs/segmentation.toml` trains on it, "
    "`spinefl predict --model runs/segmentation/model.pt --input <image> --out <dir>` "
    "segments new images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
manifest_app = typer.Typer(help="Check manifests (the data contract) and export them for nnU-Net "
                            "or MONAI.", no_args_is_help=True)
config_app = typer.Typer(help="Config reference.", no_args_is_help=True)
datasets_app = typer.Typer(help="Public spine datasets, as downloaded, into manifests.",
                           no_args_is_help=True)
app.add_typer(manifest_app, name="manifest")
app.add_typer(config_app, name="config")
app.add_typer(hospital_app, name="hospital")
app.add_typer(datasets_app, name="datasets")
app.add_typer(coordinator_app, name="coordinator")


@app.command()
def phantoms(
    out: Path = typer.Option(..., help="Folder to write the cohort to."),
    config: Path | None = typer.Option(None, help="Cohort config (TOML); the embedded default "
                                       "cohort when left out."),
    patients: int | None = typer.Option(None, min=1, help="Override cohort.patients."),
    seed: int | None = typer.Option(None, help="Override cohort.seed."),
    force: bool = typer.Option(False, help="Overwrite a folder holding a different cohort."),
) -> None:
    """Generate labelled synthetic spine phantoms (CT, MR, X-ray) and their manifest."""
    from simulation.phantoms.config import cohort_config
    from simulation.phantoms.generator import generate
    from tasks.config import load_toml

    raw = load_toml(config) if config else {}
    cohort = dict(raw.get("cohort", {}))
    if patients is not None:
        cohort["patients"] = patients
    if seed is not None:
        cohort["seed"] = seed
    cohort_cfg = cohort_config({**raw, "cohort": cohort}, str(config or "default cohort"))
    manifest = generate(cohort_cfg, out, force=force)
    summary = manifest.table.groupby(["site", "modality"]).agg(
        patients=("patient_id", "nunique"), images=("image", "count")).reset_index()
    _print_table("Phantom cohort", summary)
    console.print(f"Manifest: {out / 'manifest.csv'}")


@app.command()
def train(
    config: Path = typer.Option(..., help="Run config (TOML), e.g. configs/segmentation.toml."),
    manifest: Path | None = typer.Option(None, help="Override data.manifest."),
    out: Path | None = typer.Option(None, help="Override output.dir."),
    force: bool = typer.Option(False, help="Overwrite an output folder holding another run."),
) -> None:
    """Pooled (centralised) training on a manifest: checkpoints and per-epoch metrics."""
    from client.training import train as run_training
    from tasks.run_config import load_run_config

    overrides: dict[str, dict[str, str]] = {}
    if manifest is not None:
        overrides["data"] = {"manifest": str(manifest)}
    if out is not None:
        overrides["output"] = {"dir": str(out)}
    result = run_training(load_run_config(config, overrides), force=force, console=console)
    if result.best:
        best = {k: round(v, 4) for k, v in result.best.items() if k.startswith("val_")}
        console.print(f"Best validation (epoch {int(result.best['epoch'])}): {best}")
    console.print(f"Model: {result.folder / 'model.pt'}  Metrics: {result.folder / 'metrics.csv'}")


@app.command()
def simulate(
    config: Path | None = typer.Option(None, help="Experiment (TOML); configs/federated.toml, "
                                       "the default phantom benchmark, when left out."),
    out: Path | None = typer.Option(None, help="Override output.dir."),
    force: bool = typer.Option(False, help="Start afresh in an output folder holding another "
                               "run."),
    resume: bool = typer.Option(False, help="Continue this output folder's federated run after "
                                "its last finished round, then redo baselines and report."),
    ray_address: str | None = typer.Option(None, help="Override ray.address: a running Ray "
                                           "cluster's HOST:PORT, or auto for the one `ray "
                                           "start` started on this machine."),
) -> None:
    """Federated training over virtual hospitals, with local-only and pooled baselines."""
    from simulation.config import load_simulation
    from simulation.report import comparison
    from simulation.simulate import simulate as run_simulation
    from tasks.registry import task_class

    experiment = load_simulation(config)
    if out is not None:
        experiment["output"]["dir"] = str(out)
    if ray_address is not None:
        experiment["ray"]["address"] = ray_address
    results = run_simulation(experiment, force=force, resume=resume, console=console)
    score = task_class(experiment["task"]["name"]).score
    table = comparison(results, score).round(3).reset_index()
    _print_table(f"Test {score} per hospital", table)
    console.print(f"Report: {Path(experiment['output']['dir']) / 'report' / 'summary.md'}")


app.command()(predict)
app.command()(evaluate)


@app.command()
def export(
    model: Path = typer.Option(..., help="Checkpoint written by train or simulate (model.pt)."),
    out: Path = typer.Option(..., help="Folder for the MONAI bundle (configs/, models/, docs/)."),
    force: bool = typer.Option(False, help="Replace a bundle already in --out."),
) -> None:
    """Write a segmentation model as a MONAI bundle that MONAI's bundle tools run without
    spinefl (`python -m monai.bundle run`; see its docs/README.md)."""
    from tasks.bundle import export_bundle

    folder = export_bundle(model, out, force)
    console.print(f"MONAI bundle: {folder}  (run it as {folder / 'docs' / 'README.md'} says)")


@datasets_app.command("list")
def datasets_list() -> None:
    """The public datasets spinefl can prepare."""
    import pandas as pd

    from simulation.datasets import DATASETS

    _print_table("Datasets", pd.DataFrame(
        [{"name": n, "what": m.DESCRIPTION} for n, m in DATASETS.items()]))


@datasets_app.command("prepare")
def datasets_prepare(
    name: str = typer.Argument(..., help="Dataset: verse, spider, rsna2024 or aasce2019."),
    root: Path = typer.Option(..., help="The dataset folder as downloaded (only ever read)."),
    out: Path = typer.Option(..., help="Folder for the manifest, converted masks and report."),
) -> None:
    """Turn a downloaded public dataset into a manifest in the spinefl label convention."""
    import pandas as pd

    from client.prepare import check_folders
    from simulation.datasets import adapter
    from tasks.manifest import Manifest

    module = adapter(name)
    check_folders(root, out)
    manifest = module.prepare(root, out)
    _print_report(pd.read_csv(out / "report.csv", keep_default_na=False))
    table = Manifest.load(manifest).table
    summary = table.groupby(["site", "split", "modality"]).agg(
        patients=("patient_id", "nunique"), images=("image", "count")).reset_index()
    _print_table(f"{name}: manifest", summary)
    console.print(f"Manifest: {manifest}  Report: {out / 'report.csv'}")


@manifest_app.command("check")
def manifest_check(path: Path = typer.Argument(..., help="Manifest (CSV or Parquet).")) -> None:
    """Validate a manifest (its files' headers too) and summarise it."""
    from tasks.manifest import Manifest

    manifest = Manifest.load(path)
    manifest.check_geometry(path)
    table = manifest.table
    summary = table.groupby(["site", "split", "modality"]).agg(
        patients=("patient_id", "nunique"), images=("image", "count")).reset_index()
    _print_table(f"{path}: valid", summary)


@manifest_app.command("export")
def manifest_export(
    path: Path = typer.Argument(..., help="Manifest (CSV or Parquet)."),
    format: str = typer.Option(..., "--format", help="nnunet (a raw dataset folder) or monai "
                               "(a Decathlon-style datalist.json)."),
    out: Path = typer.Option(..., help="Folder to write the export into."),
    labels: str = typer.Option("structures", help="structures (vertebra, disc, canal) or "
                               "vertebrae (each VerSe vertebra value)."),
    modality: str | None = typer.Option(None, help="CT, MR or XR: the rows to export (needed "
                                        "when the manifest holds several)."),
    dataset_id: int = typer.Option(501, help="nnU-Net dataset number (Dataset<id>_<name>)."),
    name: str = typer.Option("Spine", help="nnU-Net dataset name."),
    force: bool = typer.Option(False, help="Replace an earlier export in --out."),
) -> None:
    """Write a manifest as nnU-Net or MONAI read it: the same patients, splits and classes,
    for baselines on the very same data."""
    import pandas as pd

    from simulation.baselines import export

    folder = export(path, out, format, labels, modality, dataset_id, name, force)
    cases = pd.read_csv(folder / "cases.csv", keep_default_na=False)
    summary = cases.groupby("split").agg(cases=("case", "count"),
                                         labelled=("label", lambda v: int((v != "").sum())))
    _print_table(f"{format} export", summary.reset_index())
    console.print(f"Written: {folder}")


@manifest_app.command("docs")
def manifest_docs() -> None:
    """Print the manifest schema table (kept in docs/manifest.md)."""
    from tasks.manifest import manifest_markdown

    sys.stdout.write(manifest_markdown())


@config_app.command("docs")
def config_docs() -> None:
    """Print the reference of every config key (the source of docs/configuration.md)."""
    from simulation.config_docs import configuration_markdown

    sys.stdout.write(configuration_markdown())


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit status 2; Ctrl-C,
    SIGTERM and SIGHUP stop the command after its clean-up has run (tasks.stops), with
    status 128 + the signal. Nothing reports home (tasks.processes.QUIET), here or in any
    process started from here."""
    os.environ.update(QUIET)
    handle_stops()
    errors = Console(stderr=True)
    try:
        app()
    except UserError as e:
        errors.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:
        if e.errno not in USER_ERRNOS:
            raise
        errors.print(f"[bold red]error:[/] {escape(str(os_problem(e.filename or '?', e)))}",
                     highlight=False, soft_wrap=True)
        sys.exit(2)
    except SystemExit:
        if (signum := stop_signal()) is None:
            raise
        errors.print(f"stopped ({signal.Signals(signum).name}): every process this command "
                     "started has ended; finished work is kept", highlight=False)
        sys.exit(128 + signum)
