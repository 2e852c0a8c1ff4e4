"""The coordinator's commands: `spinefl coordinator ...` (init, start, admit, run, status,
log, stop), run by whoever operates the federation's SuperLink.

`coordinator_app` is mounted by the root `spinefl` app (simulation.cli).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from tasks.services import DEFAULT_USER

console = Console()
coordinator_app = typer.Typer(help="What the coordinator runs: certificates, the "
                              "SuperLink, admitting hospitals, launching, watching and "
                              "stopping runs.",
                              no_args_is_help=True)


@coordinator_app.command("init")
def coordinator_init(
    out: Path = typer.Option(..., help="The coordinator folder to create (certificates, "
                             "settings, the SuperLink's state)."),
    host: str = typer.Option(..., help="Host names and IP addresses hospitals connect to, "
                             "comma-separated (e.g. fl.example.org,10.0.0.5)."),
    port: int = typer.Option(9093, help="The proxy's HTTPS port, the one hospitals reach."),
    superlink_port: int = typer.Option(9092, help="The SuperLink's port on 127.0.0.1."),
    ca_key: Path = typer.Option(None, help="Where to write the CA's private key, outside the "
                                "coordinator folder (default: <out>-ca/ca.key)."),
) -> None:
    """Create a coordinator folder: a certificate authority (its key kept outside), the
    coordinator's TLS certificate for these hosts, and the settings `coordinator
    start/admit/run` read."""
    from server.superlink import default_ca_key, init_coordinator

    hosts = [h.strip() for h in host.split(",") if h.strip()]
    key = ca_key or default_ca_key(out)
    init_coordinator(out, hosts, port, superlink_port, key)
    console.print(f"Coordinator folder {out}: certificate authority {out / 'ca.crt'}, "
                  f"certificate {out / 'server.pem'}; the CA key is {key} (owner-only: move "
                  "it offline, it is needed only to issue a new certificate).\nNext:\n"
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
    """Run the SuperLink (127.0.0.1, TLS, node authentication, no runtime installs) and the
    proxy hospitals reach (nginx: Fleet API only) until stopped."""
    from server.proxy import proxy_command
    from server.superlink import coordinator_env, load_coordinator, superlink_command
    from tasks.locks import folder_lock
    from tasks.processes import run_in_foreground

    superlink = superlink_command(folder)
    settings = load_coordinator(folder)
    console.print(f"Proxy on {settings['bind']}:{settings['port']} (TLS, Fleet API only"
                  f"{', from ' + ', '.join(settings['allow']) if settings['allow'] else ''}); "
                  f"SuperLink on 127.0.0.1:{settings['superlink_port']} (node "
                  "authentication); Ctrl-C stops both.")
    with folder_lock(folder):
        run_in_foreground({"the SuperLink": superlink,
                           "the proxy (nginx)": proxy_command(folder, settings)},
                          coordinator_env(folder), folder)


@coordinator_app.command("service")
def coordinator_service(
    folder: Path = typer.Option(..., "--dir", help="The coordinator folder."),
    user: str = typer.Option(DEFAULT_USER, help="The dedicated system user it runs as (owns "
                             "the folder)."),
) -> None:
    """Write a systemd unit that runs `coordinator start` (the SuperLink and its proxy) as a
    service: <dir>/spinefl-coordinator.service, with how to install it."""
    from server.superlink import load_coordinator, superlink_command
    from tasks.files import write_text
    from tasks.processes import BIN
    from tasks.services import systemd_unit

    superlink_command(folder)  # the folder is complete: certificates, no CA key in it
    settings = load_coordinator(folder)
    folder = folder.resolve()
    unit = systemd_unit("spinefl-coordinator",
                        f"spinefl coordinator: Flower SuperLink and its proxy ({folder})",
                        [str(BIN / "spinefl"), "coordinator", "start", "--dir", str(folder)],
                        user, [folder], low_port=settings["port"] < 1024)
    path = write_text(folder / "spinefl-coordinator.service", unit)
    console.print(f"{path}: install it as its first lines say (as root).")


@coordinator_app.command("admit")
def coordinator_admit(
    public_key: Path = typer.Argument(..., help="The hospital's node.pub."),
    name: str = typer.Option(..., help="The hospital's name (shown in `flwr supernode ls`)."),
    folder: Path = typer.Option(..., "--dir", help="The coordinator folder."),
) -> None:
    """Register a hospital's node public key with the running SuperLink; only admitted
    hospitals take part in runs."""
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
    from server.admission import ADMITTED
    from server.superlink import CONNECTION, coordinator_env, load_coordinator, submit_run

    load_coordinator(folder)
    log = folder / "runs" / f"{experiment.stem}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    submit_run(CONNECTION, {"experiment": str(experiment), "resume": resume,
                            "admitted": str((folder / ADMITTED).resolve())},
               coordinator_env(folder), log, console.print)


@coordinator_app.command("status")
def coordinator_status(
    folder: Path = typer.Option(..., "--dir", help="The coordinator folder."),
) -> None:
    """The SuperLink's runs (status, time, bundle) and its hospitals' nodes (online or not)."""
    from server.operations import nodes, runs
    from tasks.tables import frame_table

    console.print(frame_table("Runs", runs(folder).drop(columns=["started", "finished"])))
    console.print(frame_table("Hospitals' nodes", nodes(folder)))


@coordinator_app.command("log")
def coordinator_log(
    run: int = typer.Argument(..., help="The run's id (`spinefl coordinator status`)."),
    folder: Path = typer.Option(..., "--dir", help="The coordinator folder."),
) -> None:
    """Print a run's log as the SuperLink keeps it."""
    from server.operations import run_log

    typer.echo(run_log(folder, run), nl=False)


@coordinator_app.command("traffic")
def coordinator_traffic(
    run: int | None = typer.Argument(None, help="A run's id (`spinefl coordinator status`); "
                                     "all the proxy has logged when absent."),
    folder: Path = typer.Option(..., "--dir", help="The coordinator folder."),
) -> None:
    """Bytes each hospital received and sent through the proxy (HTTP inside TLS), by what
    they carried: message content (the model), app bundles, control."""
    from server.operations import run_traffic
    from tasks.tables import frame_table

    table = run_traffic(folder, run)
    shown = table.copy()
    for column in [c for c in table.columns if c.endswith("_bytes")]:
        shown[column.replace("_bytes", " (MB)")] = (table[column] / 1e6).round(3)
        del shown[column]
    console.print(frame_table(f"Traffic{f' of run {run}' if run is not None else ''}", shown))


@coordinator_app.command("stop")
def coordinator_stop(
    run: int = typer.Argument(..., help="The run's id (`spinefl coordinator status`)."),
    folder: Path = typer.Option(..., "--dir", help="The coordinator folder."),
) -> None:
    """Stop a run: its ServerApp ends and the hospitals' tasks with it; the SuperLink and
    the hospitals' nodes stay up for the next run."""
    from server.operations import stop_run

    console.print(stop_run(folder, run))
