"""The coordinator's commands: `spinefl coordinator ...` (init, start, admit, run), run by
whoever operates the federation's SuperLink.

`coordinator_app` is mounted by the root `spinefl` app (simulation.cli).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()
coordinator_app = typer.Typer(help="What the coordinator runs: certificates, the "
                              "SuperLink, admitting hospitals, launching runs.",
                              no_args_is_help=True)


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
    from tasks.locks import folder_lock
    from tasks.processes import run_in_foreground

    command = superlink_command(folder)
    settings = load_coordinator(folder)
    console.print(f"SuperLink on {settings['bind']}:{settings['port']} "
                  f"({'no TLS' if settings['insecure'] else 'TLS'}, node authentication); "
                  "Ctrl-C stops it.")
    with folder_lock(folder):
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
