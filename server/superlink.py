"""The coordinator's SuperLink: its folder, how it is started, nodes admitted, runs submitted.

``spinefl coordinator init`` makes a coordinator folder:

- ``ca.crt`` / ``ca.key``, ``server.pem`` / ``server.key``: TLS (``server.certificates``);
- ``coordinator.toml``: the host names hospitals use, the port, the address to listen on;
- ``flwr/config.toml``: the Flower home of the coordinator's own ``flwr`` commands, with one
  connection, ``spinefl``, to this SuperLink over TLS (trusting ``ca.crt``);
- ``superlink.db`` (made by the SuperLink): registered nodes and runs, kept across restarts.

One HTTPS port serves the Fleet API (SuperNodes), the Control API (``flwr run``,
``flwr supernode register``) and the ServerApp's runtime traffic (flwr 1.41). The SuperLink
runs with TLS, SuperNode authentication (only registered public keys connect) and runtime
dependency installation disabled; its working folder is the coordinator folder, so a run's
relative output folder lands inside it.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

from server.certificates import create_authority
from tasks.config import Key, load_toml, validate
from tasks.errors import UserError
from tasks.processes import BIN, flower_env, spawn, stop_tree

CONNECTION = "spinefl"
SETTINGS = "coordinator.toml"
DATABASE = "superlink.db"
APP_DIR = Path(__file__).resolve().parents[1]
# The ServerApp's exception at the end of its traceback, as the streamed log shows it.
ERROR_LINE = re.compile(r"^[\w.]+(Error|Exception|Hospitals): ")

COORDINATOR_KEYS = {"superlink": (
    Key("hosts", "list[str]", [], "Host names and IP addresses hospitals connect to (the "
        "certificate's subject alternative names)."),
    Key("port", "int", 9093, "The SuperLink's one HTTPS port (Fleet, Control and ServerApp "
        "traffic).", minimum=1),
    Key("bind", "str", "0.0.0.0", "Address the SuperLink listens on."),
    Key("insecure", "bool", False, "No TLS (local testing only; set by `coordinator init "
        "--insecure`)."),
)}


def init_coordinator(out: Path, hosts: list[str], port: int, insecure: bool = False) -> dict:
    """Write a coordinator folder: TLS material (unless ``insecure``), settings, and the
    Flower home of its ``flwr`` commands. Returns the settings."""
    if not hosts:
        raise UserError("--host: give at least one host name or IP address hospitals will use")
    if (out / SETTINGS).exists():
        raise UserError(f"{out}: already a coordinator folder ({SETTINGS} exists)")
    if not insecure:
        create_authority(out, hosts)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"hosts": hosts, "port": port, "bind": "0.0.0.0", "insecure": insecure}
    (out / SETTINGS).write_text(tomli_w.dumps({"superlink": settings}))
    connection: dict[str, Any] = {"address": f"{hosts[0]}:{port}"}
    if insecure:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str((out / "ca.crt").resolve())
    home = out / "flwr"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(tomli_w.dumps(
        {"superlink": {"default": CONNECTION, CONNECTION: connection}}))
    return settings


def load_coordinator(folder: Path) -> dict[str, Any]:
    """The validated settings of a coordinator folder."""
    path = folder / SETTINGS
    if not path.is_file():
        raise UserError(f"{folder}: not a coordinator folder (no {SETTINGS}); "
                        "run `spinefl coordinator init` first")
    return validate(load_toml(path), COORDINATOR_KEYS, str(path))["superlink"]


def superlink_command(folder: Path) -> list[str]:
    """The ``flower-superlink`` command line for a coordinator folder."""
    settings = load_coordinator(folder)
    folder = folder.resolve()
    command = [str(BIN / "flower-superlink"), "--host", settings["bind"],
               "--port", str(settings["port"]), "--database", str(folder / DATABASE),
               "--enable-supernode-auth", "--disable-runtime-dependency-installation"]
    if settings["insecure"]:
        return [*command, "--insecure"]
    for name in ("ca.crt", "server.pem", "server.key"):
        if not (folder / name).is_file():
            raise UserError(f"{folder / name}: missing (made by `spinefl coordinator init`)")
    return [*command, "--ssl-ca-certfile", str(folder / "ca.crt"),
            "--ssl-certfile", str(folder / "server.pem"),
            "--ssl-keyfile", str(folder / "server.key")]


def coordinator_env(folder: Path) -> dict[str, str]:
    """The environment of the coordinator's Flower processes and ``flwr`` commands."""
    return flower_env((folder / "flwr").resolve())


def admit(folder: Path, public_key: Path, name: str) -> str:
    """Register a hospital's node public key with the running SuperLink; Flower's answer."""
    load_coordinator(folder)
    if not public_key.is_file():
        raise UserError(f"{public_key}: no such public key file")
    done = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(public_key),
                           CONNECTION, "--name", name], capture_output=True, text=True,
                          env=coordinator_env(folder), timeout=120)
    answer = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        last = answer.splitlines()[-1] if answer else f"status {done.returncode}"
        raise UserError(f"{public_key}: not registered: {last}")
    return answer


def submit_run(connection: str, run_config: dict[str, Any], env: dict[str, str], log: Path,
               on_line: Callable[[str], None] = lambda line: None,
               extra: list[str] | None = None) -> None:
    """``flwr run`` this app against ``connection`` with ``run_config``, streaming the run's
    log into ``log`` and ``on_line`` until it ends; UserError when the run fails."""
    values = " ".join(f"{key}={_toml_value(value)}" for key, value in run_config.items())
    command = [str(BIN / "flwr"), "run", str(APP_DIR), connection, "--run-config", values,
               *(extra or []), "--stream"]
    error, failed = "", False
    with log.open("w") as handle:
        run = spawn(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                    env=env)
        try:
            for line in run.stdout:
                handle.write(line)
                handle.flush()
                on_line(line.rstrip("\n"))
                if ERROR_LINE.match(line):
                    error = line.strip()
                failed = failed or "Exit Code:" in line
            status = run.wait()
        finally:
            if run.poll() is None:
                stop_tree(run)
    if status != 0 or failed:
        reason = f": {error}" if error else f" (status {status})"
        raise UserError(f"the federated run failed{reason}; see {log}")


def _toml_value(value: Any) -> str:
    """A run-config value as ``flwr run --run-config`` parses it (TOML, no spaces inside
    quotes are split, so strings are JSON-quoted and must not hold a double quote)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and '"' in value:
        raise UserError(f"run config value {value!r}: double quotes are not allowed")
    return json.dumps(value)
