"""The hospital's commands: `spinefl hospital ...` (prepare, profile, ledger, audit, approve,
approvals, join, keys), and `spinefl predict` and `spinefl evaluate`, run by a hospital
beside its own data (and by researchers).

`hospital_app` is mounted by the root `spinefl` app (simulation.cli), which also registers
`predict` and `evaluate`. The table printers here are shared with the root app.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from tasks.errors import UserError
from tasks.services import DEFAULT_USER
from tasks.tables import frame_table

if TYPE_CHECKING:
    import pandas as pd

console = Console()
# Exit status of a batch command (predict, prepare) some of whose items failed.
PARTLY_FAILED = 1
hospital_app = typer.Typer(help="What a hospital runs beside its own data.",
                           no_args_is_help=True)


def predict(
    model: Path = typer.Option(..., help="Checkpoint written by train (model.pt)."),
    input: Path = typer.Option(..., help="NIfTI/MHA file, or a folder of them or of DICOM."),
    out: Path = typer.Option(..., help="Folder for the predictions (masks or JSON records)."),
    modality: str | None = typer.Option(None, help="CT, MR or XR; read from DICOM, else "
                                        "needed when the model takes several."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    force: bool = typer.Option(False, help="Overwrite existing predictions."),
    centroids: Path | None = typer.Option(None, help="Folder of <stem>_ctd.json vertebra "
                                          "centroids (e.g. a labelling model's predictions), "
                                          "for disc grading."),
    qc: bool = typer.Option(False, help="Also write <stem>_qc.png: the prediction over its "
                            "image (three planes, the label convention's colours)."),
    dicom: bool = typer.Option(False, help="For DICOM series, also write <stem>_seg.dcm (DICOM "
                               "SEG of a label map) or <stem>_sr.dcm (DICOM SR measurement "
                               "report of angles and grades), referencing the series."),
) -> None:
    """Run a trained model on new images; outputs keep each input's exact geometry and mirror
    the input tree. Exit status 1 when any input failed (the others are written)."""
    from client.prediction import predict as run_prediction

    if modality is not None and modality not in ("CT", "MR", "XR"):
        raise UserError(f"--modality must be CT, MR or XR, got '{modality}'")
    if centroids is not None and not centroids.is_dir():
        raise UserError(f"{centroids}: --centroids must be a folder of <stem>_ctd.json files")
    extra = {} if centroids is None else {"centroids": centroids}
    report = run_prediction(model, input, out, modality, device, force, extra, qc, dicom)
    _print_table("Predictions", report)
    failed = int((report.status == "failed").sum())
    if failed:
        console.print(f"[yellow]{failed} of {len(report)} input(s) failed; see "
                      f"{out / 'predictions.csv'}[/]")
        raise typer.Exit(PARTLY_FAILED)


def evaluate(
    model: Path = typer.Option(..., help="Checkpoint written by train or simulate (model.pt)."),
    manifest: Path = typer.Option(..., help="Manifest whose images to score (CSV or Parquet)."),
    split: str = typer.Option("test", help="train, val, test, or all (every row)."),
    out: Path = typer.Option(..., help="Folder for metrics.csv, per_image.csv and scores.png."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    force: bool = typer.Option(False, help="Replace an evaluation already in --out."),
) -> None:
    """Score a trained model on a manifest's split: the task's metrics, per image and over
    the images, with a plot."""
    import pandas as pd

    from client.scoring import score_model

    scored = score_model(model, manifest, split, out, device, force)
    evaluation = scored.evaluation
    metrics = pd.DataFrame([{"images": len(evaluation.per_image), **{
        k: round(v, 4) for k, v in evaluation.metrics.items()}}])
    _print_table(f"{split}: metrics", metrics)
    per_image = evaluation.per_image
    if scored.metric in per_image:
        by_site = per_image.groupby(["site", "modality"])[scored.metric].agg(
            ["count", "mean", "std", "min", "max"]).round(4).reset_index()
        _print_table(f"{scored.metric} per image, by site", by_site)
    console.print(f"Results: {out / 'metrics.csv'}, {out / 'per_image.csv'}, "
                  f"{out / 'scores.png'}")


@hospital_app.command("prepare")
def hospital_prepare(
    input: Path = typer.Option(..., help="PACS export or NIfTI/MHA folder (only ever read)."),
    out: Path = typer.Option(..., help="Folder for the de-identified dataset, its manifest, "
                             "report and pseudonym key."),
    name: str | None = typer.Option(None, help="Hospital name for the site/source columns "
                                    "(default: the output folder's name)."),
    key: Path | None = typer.Option(None, help="Pseudonym key to use (default: "
                                    "<out>/.spinefl/pseudonym.key, made on the first run)."),
    new_key: bool = typer.Option(False, help="Create the pseudonym key when there is none "
                                 "(otherwise a missing --key is an error)."),
    split: str = typer.Option("0.7,0.15,0.15", help="train,val,test fractions of patients."),
    dicom: bool = typer.Option(False, help="Also write DICOM de-identified after PS3.15 "
                               "Annex E and --profile under <out>/dicom."),
    profile: Path | None = typer.Option(None, help="De-identification profile for --dicom "
                                        "(default: basic profile with modified dates; "
                                        "`spinefl hospital profile` writes one to edit)."),
    allow_burned_in: bool = typer.Option(False, help="Keep images flagged with burned-in "
                                         "annotations (their pixels are not changed)."),
    modality: str | None = typer.Option(None, help="CT, MR or XR for NIfTI/MHA inputs whose "
                                        "names do not say."),
) -> None:
    """Turn a PACS export or a NIfTI/MHA folder into a de-identified, validated dataset."""
    import pandas as pd

    from client.confidentiality import Profile, load_profile
    from client.prepare import SOURCES_FILE, STATE_DIR, PrepareOptions, prepare
    from tasks.manifest import parse_fractions

    if modality is not None and modality not in ("CT", "MR", "XR"):
        raise UserError(f"--modality must be CT, MR or XR, got '{modality}'")
    chosen = load_profile(profile) if profile else Profile()
    if profile and not dicom:
        raise UserError("--profile applies to the DICOM that --dicom writes; add --dicom")
    options = PrepareOptions(input, out, name or out.resolve().name, key, new_key,
                             parse_fractions(split), dicom, allow_burned_in, modality, chosen)
    result = prepare(options, console)
    _print_report(pd.read_csv(result.report, keep_default_na=False))
    if dicom:
        console.print(f"DICOM de-identified with profile {chosen.summary()}")
    console.print(f"Report: {result.report} (input paths, for staff only: "
                  f"{out / STATE_DIR / SOURCES_FILE})")
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


@hospital_app.command("profile")
def hospital_profile(
    out: Path = typer.Option(..., help="The profile file to write (TOML; refused if it "
                             "exists)."),
    start: Path | None = typer.Option(None, "--from", help="A profile to start from "
                                      "(default: the basic profile with modified dates)."),
) -> None:
    """Write a de-identification profile for a data protection officer to read and edit."""
    from client.confidentiality import Profile, load_profile
    from tasks.files import write_text

    if out.exists():
        raise UserError(f"{out}: exists; choose another file (it is never overwritten)")
    profile = load_profile(start) if start else Profile()
    write_text(out, profile.text())
    console.print(f"Wrote {out}: {profile.summary()}. Edit it, then "
                  f"`spinefl hospital prepare --dicom --profile {out} ...`")


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
    verify: bool = typer.Option(False, help="Check the MAC chain under the node's audit "
                                "key; exit 2 naming the first broken line."),
) -> None:
    """The hospital's audit log: every request it served or refused, MAC-chained."""
    import pandas as pd

    from client.audit import AUDIT_FILE, AuditLog

    log = AuditLog(data)
    if not log.path.is_file() and not (verify and log.key_path.exists()):
        raise UserError(f"{data / AUDIT_FILE}: no audit log (this node served no request)")
    if verify:
        problem = log.verify()
        if problem:
            raise UserError(f"audit log broken: {problem}")
    records = log.records()
    columns = ["seq", "time", "type", "run", "round", "task", "samples", "epsilon", "refused",
               "bundle_sha256"]
    frame = pd.DataFrame(records).reindex(columns=columns).fillna("")
    frame["refused"] = frame["refused"].astype(str).str.slice(0, 40)
    frame["bundle_sha256"] = frame["bundle_sha256"].astype(str).str.slice(0, 12)
    _print_table(f"Audit log of {data}", frame)
    state = "intact" if verify else "not verified (--verify)"
    console.print(f"{len(records)} record(s), chain {state}; last MAC "
                  f"{records[-1].get('mac', '-') if records else '-'}")


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
                                     "training processes (127.0.0.1, open only to holders "
                                     "of the node's secret; one per node)."),
    device: str = typer.Option("auto", help="Where this node trains: auto (CUDA when "
                               "present, else MPS, else CPU), cpu, cuda, cuda:N or mps; "
                               "the coordinator "
                               "cannot change it."),
    max_evaluations: int = typer.Option(None, help="Evaluation requests this node answers "
                                        "over all runs (each releases validation metrics no "
                                        "accountant covers); -1: no limit. Default: 100 "
                                        "with --max-epsilon, else no limit."),
    worker: bool = typer.Option(True, help="Keep a warm worker (torch and the tasks "
                                "imported once, about 0.5 GB resident) that serves each "
                                "request in a fork; without it every request imports "
                                "them again (seconds per request)."),
) -> None:
    """Join the federation: run this hospital's SuperNode until stopped. It serves only runs
    whose app bundle was approved here (`spinefl hospital approve`), with the ClientApp
    installed here."""
    from client.approvals import Approvals
    from client.supernode import (
        FLOWER_HOME,
        Membership,
        superexec_command,
        supernode_command,
        supernode_env,
        worker_command,
    )
    from client.worker import unavailable
    from tasks.locks import folder_lock
    from tasks.processes import flower_env, run_in_foreground

    member = Membership(superlink, data, key, ca, name, max_epsilon, delta,
                        tuple(t.strip() for t in accept_tasks.split(",") if t.strip()),
                        runtime_port, device, max_evaluations)
    command = supernode_command(member)
    approved = len(Approvals(data).entries)
    console.print(f"Joining {superlink} as {name or data.resolve().name} (TLS, node key); "
                  f"{approved} approved app bundle(s); Ctrl-C leaves.")
    if not approved:
        console.print("[yellow]No app bundle is approved here: every run will be refused "
                      "until one is (spinefl hospital approve).[/]")
    with folder_lock(data):  # one node per data folder (its ledger and audit log)
        processes = {"the SuperNode": command, "the SuperExec": superexec_command(member)}
        if worker and (reason := unavailable(data)):
            console.print(f"[yellow]{escape(reason)}; serving each request in its own "
                          "process.[/]")
        elif worker:
            processes["the node's worker"] = worker_command(member)
        run_in_foreground(processes,
                          supernode_env(member, flower_env((data / FLOWER_HOME).resolve())),
                          data)


@hospital_app.command("service", context_settings={"allow_extra_args": True,
                                                   "ignore_unknown_options": True})
def hospital_service(
    context: typer.Context,
    user: str = typer.Option(DEFAULT_USER, help="The dedicated system user it runs as (owns "
                             "the data folder and the node key)."),
) -> None:
    """Write a systemd unit that runs `hospital join` as a service, with the join options
    given after `--` (checked as join checks them): <data>/spinefl-node.service."""
    from client.supernode import Membership, supernode_command
    from tasks.files import write_text
    from tasks.processes import BIN
    from tasks.services import systemd_unit

    join = typer.main.get_command(hospital_app).get_command(context, "join")
    options = join.make_context("spinefl hospital join", list(context.args)).params
    for name in ("data", "key", "ca"):  # click hands over text; join's typer makes Paths
        options[name] = None if options[name] is None else Path(options[name]).resolve()
    member = Membership(options["superlink"], options["data"], options["key"],
                        options["ca"], options["name"], options["max_epsilon"],
                        options["delta"], tuple(t.strip() for t in
                                                options["accept_tasks"].split(",")
                                                if t.strip()),
                        options["runtime_port"], options["device"],
                        options["max_evaluations"])
    supernode_command(member)  # the membership is complete, as join checks it
    command = [str(BIN / "spinefl"), "hospital", "join"]
    for parameter in join.params:
        value = options[parameter.name]
        if value == parameter.default or value is None:
            continue
        if isinstance(value, bool):
            command.append(parameter.opts[0] if value else parameter.secondary_opts[0])
        else:
            command += [parameter.opts[0], str(value)]
    data = options["data"]
    name = options["name"] or data.name
    unit = systemd_unit("spinefl-node", f"spinefl hospital node {name} ({data})", command,
                        user, [data])
    path = write_text(data / "spinefl-node.service", unit)
    console.print(f"{path}: install it as its first lines say (as root).")


@hospital_app.command("approve")
def hospital_approve(
    bundle: Path = typer.Argument(..., help="The app folder the coordinator runs (the same "
                                  "release), or the .fab bundle it sent."),
    data: Path = typer.Option(..., help="This hospital's data folder (its node's approvals)."),
    by: str = typer.Option("", help="Who approves (default: user@host)."),
) -> None:
    """Approve an app bundle: runs submitted with exactly this bundle (SHA-256) may use this
    hospital's node; every other run is refused and the refusal audited."""
    from client.approvals import Approvals

    if not bundle.exists():
        raise UserError(f"{bundle}: no such app folder or .fab file")
    approval = Approvals(data).approve(bundle, by or None)
    console.print(f"Approved {approval.name} {approval.version}: sha256 {approval.sha256} "
                  f"(by {approval.approved_by}, {approval.approved_at}).")


@hospital_app.command("approvals")
def hospital_approvals(
    data: Path = typer.Option(..., help="This hospital's data folder."),
) -> None:
    """The app bundles this hospital approved."""
    import pandas as pd

    from client.approvals import Approvals

    approvals = Approvals(data)
    if not approvals.entries:
        raise UserError(f"{approvals.path}: no app bundle approved (spinefl hospital approve)")
    frame = pd.DataFrame([vars(a) for a in approvals.entries])
    frame["sha256"] = frame.sha256.str.slice(0, 16) + "…"
    _print_table(f"Approved app bundles of {data}", frame[
        ["sha256", "name", "version", "approved_by", "approved_at"]])
    for approval in approvals.entries:
        console.print(f"{approval.sha256}  {approval.name} {approval.version}",
                      highlight=False, soft_wrap=True)


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
                  "registers it (spinefl coordinator admit); then join with "
                  f"`spinefl hospital join --key {private} --data <prepared folder> "
                  "--superlink <host:port> --ca <ca.crt>`.")


def _print_report(frame: pd.DataFrame) -> None:
    """The report summarised: how many items per status, kind and (shortened) reason."""
    frame = frame.copy()
    frame["reason"] = frame.reason.str.split(";").str[0].str.slice(0, 70)
    summary = frame.groupby(["status", "kind", "reason"], dropna=False).agg(
        items=("item", "count"), files=("files", "sum")).reset_index()
    _print_table("What was found", summary)


def _print_table(title: str, frame: pd.DataFrame) -> None:
    console.print(frame_table(title, frame))
