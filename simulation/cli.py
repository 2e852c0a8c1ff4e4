"""The `spinefl` command.

Stages, each writing what it makes to a folder a person can inspect:
phantoms (or a hospital's prepared data) -> train -> predict.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tasks.errors import UserError

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
manifest_app = typer.Typer(help="Check manifests (the data contract).", no_args_is_help=True)
config_app = typer.Typer(help="Config reference.", no_args_is_help=True)
hospital_app = typer.Typer(help="What a hospital runs beside its own data.",
                           no_args_is_help=True)
datasets_app = typer.Typer(help="Public spine datasets, as downloaded, into manifests.",
                           no_args_is_help=True)
coordinator_app = typer.Typer(help="What the coordinator runs: certificates, the "
                              "SuperLink, admitting hospitals, launching runs.",
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
    from tasks.training import load_run_config
    from tasks.training import train as run_training

    overrides: dict[str, dict[str, str]] = {}
    if manifest is not None:
        overrides["data"] = {"manifest": str(manifest)}
    if out is not None:
        overrides["output"] = {"dir": str(out)}
    result = run_training(load_run_config(config, overrides), force=force, console=console)
    best = {k: round(v, 4) for k, v in result.best.items() if k.startswith("val_dice")}
    console.print(f"Best validation (epoch {int(result.best.get('epoch', 0))}): {best}")
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
) -> None:
    """Federated training over virtual hospitals, with local-only and pooled baselines."""
    from simulation.report import comparison
    from simulation.simulate import load_simulation
    from simulation.simulate import simulate as run_simulation
    from tasks.registry import task_class

    experiment = load_simulation(config)
    if out is not None:
        experiment["output"]["dir"] = str(out)
    results = run_simulation(experiment, force=force, resume=resume, console=console)
    score = task_class(experiment["task"]["name"]).score
    table = comparison(results, score).round(3).reset_index()
    _print_table(f"Test {score} per hospital", table)
    console.print(f"Report: {Path(experiment['output']['dir']) / 'report' / 'summary.md'}")


@app.command()
def predict(
    model: Path = typer.Option(..., help="Checkpoint written by train (model.pt)."),
    input: Path = typer.Option(..., help="NIfTI/MHA file, or a folder of them or of DICOM."),
    out: Path = typer.Option(..., help="Folder for the predictions (masks or JSON records)."),
    modality: str | None = typer.Option(None, help="CT, MR or XR; read from DICOM, else "
                                        "needed when the model takes several."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    force: bool = typer.Option(False, help="Overwrite existing predictions."),
    centroids: Path | None = typer.Option(None, help="Folder of <stem>_ctd.json vertebra "
                                          "centroids (e.g. a labelling model's predictions), "
                                          "for disc grading."),
) -> None:
    """Run a trained model on new images; outputs keep each input's exact geometry."""
    from tasks.prediction import predict as run_prediction

    if modality is not None and modality not in ("CT", "MR", "XR"):
        raise UserError(f"--modality must be CT, MR or XR, got '{modality}'")
    if centroids is not None and not centroids.is_dir():
        raise UserError(f"{centroids}: --centroids must be a folder of <stem>_ctd.json files")
    report = run_prediction(model, input, out, modality, device, force, centroids)
    _print_table("Predictions", report)
    failed = int((report.status == "failed").sum())
    if failed:
        console.print(f"[yellow]{failed} input(s) failed; see {out / 'predictions.csv'}[/]")


@hospital_app.command("prepare")
def hospital_prepare(
    input: Path = typer.Option(..., help="PACS export or NIfTI/MHA folder (only ever read)."),
    out: Path = typer.Option(..., help="Folder for the de-identified dataset, its manifest, "
                             "report and pseudonym key."),
    name: str | None = typer.Option(None, help="Hospital name for the site/source columns "
                                    "(default: the output folder's name)."),
    key: Path | None = typer.Option(None, help="Pseudonym key to use (default: created once "
                                    "in <out>/.spinefl/pseudonym.key)."),
    split: str = typer.Option("0.7,0.15,0.15", help="train,val,test fractions of patients."),
    dicom: bool = typer.Option(False, help="Also write de-identified DICOM (PS3.15 basic "
                               "profile) under <out>/dicom."),
    allow_burned_in: bool = typer.Option(False, help="Keep images flagged with burned-in "
                                         "annotations."),
    modality: str | None = typer.Option(None, help="CT, MR or XR for NIfTI/MHA inputs whose "
                                        "names do not say."),
) -> None:
    """Turn a PACS export or a NIfTI/MHA folder into a de-identified, validated dataset."""
    import pandas as pd

    from client.prepare import PrepareOptions, prepare
    from tasks.manifest import parse_fractions

    if modality is not None and modality not in ("CT", "MR", "XR"):
        raise UserError(f"--modality must be CT, MR or XR, got '{modality}'")
    options = PrepareOptions(input, out, name or out.resolve().name, key,
                             parse_fractions(split), dicom, allow_burned_in, modality)
    result = prepare(options, console)
    _print_report(pd.read_csv(result.report, keep_default_na=False))
    console.print(f"Report: {result.report}")
    if result.manifest is None:
        raise UserError(f"{input}: no image could be prepared; see {result.report}")
    console.print(f"Manifest: {result.manifest}")
    _warn_missing_splits(result.manifest)


def _warn_missing_splits(path: Path) -> None:
    from tasks.manifest import SPLITS, Manifest

    missing = [s for s in SPLITS if s not in set(Manifest.load(path).table.split)]
    if missing:
        console.print(f"[yellow]No patient in split(s) {', '.join(missing)}: training needs "
                      "train and val patients; change --split (splits come from a hash of "
                      "each pseudonym, so small cohorts can miss one).[/]")


@hospital_app.command("ledger")
def hospital_ledger(
    data: Path = typer.Option(..., help="The hospital's data folder (holding its "
                              "privacy_ledger.json)."),
    delta: float | None = typer.Option(None, help="Report the total at this delta "
                                       "(default: the delta of the last round)."),
) -> None:
    """The hospital's privacy ledger: every DP round it took part in, and the total spent."""
    import pandas as pd

    from client.ledger import LEDGER_FILE, PrivacyLedger

    ledger = PrivacyLedger(data)
    if not ledger.entries:
        raise UserError(f"{data / LEDGER_FILE}: no privacy ledger (no DP round recorded here)")
    names = {"run": "run", "round": "round", "noise_multiplier": "sigma", "sample_rate": "q",
             "steps": "steps", "max_grad_norm": "C", "delta": "delta",
             "epsilon_run": "eps (run)", "epsilon_total": "eps (total)"}
    frame = pd.DataFrame(ledger.entries)[list(names)].rename(columns=names).round(4)
    _print_table(f"Privacy ledger of {data}", frame)
    last = ledger.entries[-1]
    at = delta if delta is not None else last["delta"]
    total = ledger.spent(at, last["accountant"])
    console.print(f"Total: epsilon {total:.3f} at delta {at:g} per patient, over "
                  f"{len(ledger.entries)} round(s) of {frame.run.nunique()} run(s) "
                  f"({last['accountant'].upper()} accountant; sigma: noise multiplier, q: "
                  "sample rate per patient, C: clipping norm).")


@hospital_app.command("audit")
def hospital_audit(
    data: Path = typer.Option(..., help="The hospital's data folder (holding its "
                              "audit_log.jsonl)."),
    verify: bool = typer.Option(False, help="Check the hash chain; exit 2 naming the first "
                                "broken line."),
) -> None:
    """The hospital's audit log: every request it served or refused, hash-chained."""
    import pandas as pd

    from client.audit import AUDIT_FILE, AuditLog

    log = AuditLog(data)
    if not log.path.is_file():
        raise UserError(f"{data / AUDIT_FILE}: no audit log (this node served no request)")
    if verify:
        problem = log.verify()
        if problem:
            raise UserError(f"audit log broken: {problem}")
    records = log.records()
    columns = ["seq", "time", "type", "run", "round", "task", "samples", "epsilon", "refused"]
    frame = pd.DataFrame(records).reindex(columns=columns).fillna("")
    frame["refused"] = frame["refused"].astype(str).str.slice(0, 40)
    _print_table(f"Audit log of {data}", frame)
    state = "intact" if verify else "not verified (--verify)"
    console.print(f"{len(records)} record(s), chain {state}; last hash "
                  f"{records[-1]['hash'] if records else '-'}")


@coordinator_app.command("init")
def coordinator_init(
    out: Path = typer.Option(..., help="The coordinator folder to create (certificates, "
                             "settings, the SuperLink's state)."),
    host: str = typer.Option(..., help="Host names and IP addresses hospitals connect to, "
                             "comma-separated (e.g. fl.example.org,10.0.0.5)."),
    port: int = typer.Option(9093, help="The SuperLink's HTTPS port."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS: for a test on one "
                                  "machine only, never across a network."),
) -> None:
    """Create a coordinator folder: a certificate authority, the SuperLink's TLS certificate
    for these hosts, and the settings `coordinator start/admit/run` read."""
    from server.superlink import init_coordinator

    hosts = [h.strip() for h in host.split(",") if h.strip()]
    init_coordinator(out, hosts, port, insecure)
    trust = ("[red]no TLS (--insecure): local testing only[/]" if insecure else
             f"certificate authority {out / 'ca.crt'} (its key {out / 'ca.key'} stays "
             f"here), SuperLink certificate {out / 'server.pem'}")
    console.print(f"Coordinator folder {out}: {trust}.\nNext:\n"
                  f"  1. give {out / 'ca.crt'} and the address {hosts[0]}:{port} to every "
                  "hospital;\n"
                  f"  2. spinefl coordinator start --dir {out}\n"
                  f"  3. for each hospital's node.pub: spinefl coordinator admit <node.pub> "
                  f"--name <hospital> --dir {out}\n"
                  f"  4. spinefl coordinator run configs/deployment.toml --dir {out}")


@coordinator_app.command("start")
def coordinator_start(
    folder: Path = typer.Option(..., "--dir", help="The coordinator folder."),
) -> None:
    """Run the SuperLink (TLS, node authentication, no runtime installs) until stopped."""
    from server.superlink import coordinator_env, load_coordinator, superlink_command
    from tasks.processes import run_in_foreground

    command = superlink_command(folder)
    settings = load_coordinator(folder)
    console.print(f"SuperLink on {settings['bind']}:{settings['port']} "
                  f"({'no TLS' if settings['insecure'] else 'TLS'}, node authentication); "
                  "Ctrl-C stops it.")
    run_in_foreground(command, coordinator_env(folder), folder, "the SuperLink")


@coordinator_app.command("admit")
def coordinator_admit(
    public_key: Path = typer.Argument(..., help="The hospital's node.pub."),
    name: str = typer.Option(..., help="The hospital's name (shown in `flwr supernode ls`)."),
    folder: Path = typer.Option(..., "--dir", help="The coordinator folder."),
) -> None:
    """Register a hospital's node public key with the running SuperLink."""
    from server.superlink import admit

    console.print(admit(folder, public_key, name))


@coordinator_app.command("run")
def coordinator_run(
    experiment: Path = typer.Argument(..., help="Experiment config: a path inside the app "
                                      "(e.g. configs/deployment.toml) or an absolute one."),
    folder: Path = typer.Option(..., "--dir", help="The coordinator folder."),
    resume: bool = typer.Option(False, help="Continue after the last finished round of the "
                                "experiment's output folder (after a coordinator crash)."),
) -> None:
    """Launch a federated run on the SuperLink (`flwr run`) and stream its log."""
    from server.superlink import CONNECTION, coordinator_env, load_coordinator, submit_run

    load_coordinator(folder)
    log = folder / "runs" / f"{experiment.stem}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    submit_run(CONNECTION, {"experiment": str(experiment), "resume": resume},
               coordinator_env(folder), log, console.print)


@hospital_app.command("join")
def hospital_join(
    superlink: str = typer.Option(..., help="The coordinator's SuperLink, host:port."),
    data: Path = typer.Option(..., help="This hospital's prepared folder (manifest.csv)."),
    key: Path = typer.Option(..., help="This node's private key (node.key)."),
    ca: Path = typer.Option(None, help="The coordinator's ca.crt (TLS trust)."),
    name: str = typer.Option("", help="The hospital's name (default: the data folder's)."),
    max_epsilon: float = typer.Option(None, help="This hospital's privacy budget: rounds "
                                      "that would pass it, and any training without DP, "
                                      "are refused."),
    delta: float = typer.Option(1e-5, help="Delta of the budget's (epsilon, delta)."),
    accept_tasks: str = typer.Option("", help="Tasks this node serves, comma-separated "
                                     "(default: all)."),
    runtime_port: int = typer.Option(9094, help="Local port between the node and its "
                                     "training processes (127.0.0.1; one per node)."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS: for a test on one "
                                  "machine only, never across a network."),
) -> None:
    """Join the federation: run this hospital's SuperNode until stopped."""
    from client.supernode import FLOWER_HOME, Membership, supernode_command
    from tasks.processes import flower_env, run_in_foreground

    member = Membership(superlink, data, key, ca, name, max_epsilon, delta,
                        tuple(t.strip() for t in accept_tasks.split(",") if t.strip()),
                        runtime_port, insecure)
    command = supernode_command(member)
    console.print(f"Joining {superlink} as {name or data.resolve().name} "
                  f"({'no TLS' if insecure else 'TLS'}); Ctrl-C leaves.")
    run_in_foreground(command, flower_env((data / FLOWER_HOME).resolve()), data,
                      "the SuperNode")


@hospital_app.command("keys")
def hospital_keys(
    out: Path = typer.Option(..., help="Folder for the node's key pair (node.key, node.pub)."),
    name: str = typer.Option("", help="A comment in the public key, e.g. the hospital."),
) -> None:
    """Create this node's key pair for SuperNode authentication (Flower's format)."""
    from client.node_keys import create_node_keys

    private, public = create_node_keys(out, name)
    console.print(f"Private key: {private} (owner-only; it never leaves this machine)\n"
                  f"Public key: {public}\nNext: send {public} to the coordinator, who "
                  "registers it; start the node with --auth-supernode-private-key "
                  f"{private}.")


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


def _print_report(frame) -> None:
    """The report summarised: how many items per status, kind and (shortened) reason."""
    frame = frame.copy()
    frame["reason"] = frame.reason.str.split(";").str[0].str.slice(0, 70)
    summary = frame.groupby(["status", "kind", "reason"], dropna=False).agg(
        items=("item", "count"), files=("files", "sum")).reset_index()
    _print_table("What was found", summary)


@manifest_app.command("check")
def manifest_check(path: Path = typer.Argument(..., help="Manifest (CSV or Parquet).")) -> None:
    """Validate a manifest and summarise it."""
    from tasks.manifest import Manifest

    table = Manifest.load(path).table
    summary = table.groupby(["site", "split", "modality"]).agg(
        patients=("patient_id", "nunique"), images=("image", "count")).reset_index()
    _print_table(f"{path}: valid", summary)


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


def _print_table(title: str, frame) -> None:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit status 2 (Ctrl-C exits
    with 130, through typer, after the commands' own clean-up has run)."""
    try:
        app()
    except UserError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
