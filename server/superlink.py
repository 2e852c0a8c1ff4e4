"""The coordinator's SuperLink: its folder, how it is started, nodes admitted, runs submitted.

``spinefl coordinator init`` makes a coordinator folder:

- ``ca.crt``, ``server.pem`` / ``server.key``: TLS (``server.certificates``); the CA's
  key is written outside the folder (``--ca-key``), and ``coordinator start`` refuses to
  run with a ``ca.key`` inside it;
- ``coordinator.toml``: the host names hospitals use, the public port and address, the
  SuperLink's loopback port, an optional allow-list of hospital addresses;
- ``flwr/config.toml``: the Flower home of the coordinator's own ``flwr`` commands, with one
  connection, ``spinefl``, to the SuperLink on 127.0.0.1 over TLS (trusting ``ca.crt``);
- ``admitted.json``: the hospitals admitted (name, node id, key fingerprint, when);
- ``superlink.db`` (made by the SuperLink): registered nodes and runs, kept across restarts;
- ``proxy/``: the reverse proxy's generated config and logs (``server.proxy``).

The SuperLink listens on 127.0.0.1 only, with TLS, SuperNode authentication (only
registered public keys connect) and runtime dependency installation disabled; hospitals
reach its Fleet API through the proxy, and its Control API (``flwr run``, ``ls``,
``stop``, ``supernode register``) answers only on the coordinator's machine. Its working
folder is the coordinator folder, so a run's relative output folder lands inside it.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from server.admission import ADMITTED, admitted_nodes
from server.certificates import create_authority
from tasks.config import Key, load_toml, validate
from tasks.errors import UserError
from tasks.files import write_text
from tasks.processes import BIN, flower_env, spawn, stop_tree

CONNECTION = "spinefl"
SETTINGS = "coordinator.toml"
DATABASE = "superlink.db"
APP_DIR = Path(__file__).resolve().parents[1]
# The ServerApp's exception at the end of its traceback, as the streamed log shows it.
ERROR_LINE = re.compile(r"^[\w.]+(Error|Exception|Hospitals): ")

CA_KEY = "ca.key"

COORDINATOR_KEYS = {"superlink": (
    Key("hosts", "list[str]", [], "Host names and IP addresses hospitals connect to (the "
        "certificate's subject alternative names)."),
    Key("port", "int", 9093, "The proxy's HTTPS port: the only one hospitals reach (Fleet "
        "API and health check).", minimum=1, maximum=65535),
    Key("bind", "str", "0.0.0.0", "Address the proxy listens on."),
    Key("superlink_port", "int", 9092, "The SuperLink's own port, on 127.0.0.1 only (Fleet, "
        "Control and ServerApp traffic).", minimum=1, maximum=65535),
    Key("allow", "list[str]", [], "Addresses or networks (CIDR) the proxy accepts hospitals "
        "from; empty: any (node keys still decide who joins)."),
)}


def init_coordinator(out: Path, hosts: list[str], port: int, superlink_port: int,
                     ca_key: Path | None = None) -> dict:
    """Write a coordinator folder: TLS material (the CA key at ``ca_key``, by default
    ``<out>-ca/ca.key``), settings, and the Flower home of its ``flwr`` commands. Returns
    the settings."""
    if not hosts:
        raise UserError("--host: give at least one host name or IP address hospitals will use")
    if (out / SETTINGS).exists():
        raise UserError(f"{out}: already a coordinator folder ({SETTINGS} exists)")
    if superlink_port == port:
        raise UserError(f"--superlink-port {superlink_port}: must differ from --port (the "
                        "proxy's)")
    create_authority(out, hosts, ca_key or default_ca_key(out))
    settings = {"hosts": hosts, "port": port, "bind": "0.0.0.0",
                "superlink_port": superlink_port, "allow": []}
    (out / SETTINGS).write_text(tomli_w.dumps({"superlink": settings}))
    home = out / "flwr"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {
        "default": CONNECTION,
        CONNECTION: {"address": f"127.0.0.1:{settings['superlink_port']}",
                     "root-certificates": str((out / "ca.crt").resolve())}}}))
    return settings


def default_ca_key(out: Path) -> Path:
    """Where the CA key goes when not told: an owner-only folder beside the coordinator's."""
    out = out.resolve()
    return out.parent / f"{out.name}-ca" / CA_KEY


def load_coordinator(folder: Path) -> dict[str, Any]:
    """The validated settings of a coordinator folder."""
    path = folder / SETTINGS
    if not path.is_file():
        raise UserError(f"{folder}: not a coordinator folder (no {SETTINGS}); "
                        "run `spinefl coordinator init` first")
    return validate(load_toml(path), COORDINATOR_KEYS, str(path))["superlink"]


def superlink_command(folder: Path) -> list[str]:
    """The ``flower-superlink`` command line for a coordinator folder: 127.0.0.1 only."""
    settings = load_coordinator(folder)
    folder = folder.resolve()
    if (folder / CA_KEY).exists():
        raise UserError(f"{folder / CA_KEY}: the CA key must not be in the folder the "
                        "SuperLink and its ServerApps work in; move it offline (it is needed "
                        "only to issue a new server certificate)")
    for name in ("ca.crt", "server.pem", "server.key"):
        if not (folder / name).is_file():
            raise UserError(f"{folder / name}: missing (made by `spinefl coordinator init`)")
    return [str(BIN / "flower-superlink"), "--host", "127.0.0.1",
            "--port", str(settings["superlink_port"]), "--database", str(folder / DATABASE),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--ssl-ca-certfile", str(folder / "ca.crt"),
            "--ssl-certfile", str(folder / "server.pem"),
            "--ssl-keyfile", str(folder / "server.key")]


def coordinator_env(folder: Path) -> dict[str, str]:
    """The environment of the coordinator's Flower processes and ``flwr`` commands."""
    return flower_env((folder / "flwr").resolve())


def admit(folder: Path, public_key: Path, name: str) -> str:
    """Register a hospital's node public key with the running SuperLink and add it to the
    coordinator's admitted list; Flower's answer."""
    load_coordinator(folder)
    if not public_key.is_file():
        raise UserError(f"{public_key}: no such public key file")
    try:
        request_key = request_key_sha256(public_key.read_bytes())
    except (ValueError, UnsupportedAlgorithm) as e:
        raise UserError(f"{public_key}: not a public key ({e})") from None
    done = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(public_key),
                           CONNECTION, "--name", name, "--format", "json"],
                          capture_output=True, text=True, env=coordinator_env(folder),
                          timeout=120)
    answer = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        last = answer.splitlines()[-1] if answer else f"status {done.returncode}"
        raise UserError(f"{public_key}: not registered: {last}")
    try:
        node_id = int(json.loads(done.stdout)["node-id"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{public_key}: Flower's answer names no node id: {answer}") from None
    admitted = admitted_nodes(folder / ADMITTED)
    admitted[str(node_id)] = {
        "name": name, "key_sha256": hashlib.sha256(public_key.read_bytes()).hexdigest(),
        "request_key_sha256": request_key,
        "admitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text(folder / ADMITTED, json.dumps(admitted, indent=1) + "\n")
    return f"{name}: node {node_id} registered and admitted"


def request_key_sha256(public_key: bytes) -> str:
    """SHA-256 of a node's public key (OpenSSH or PEM) as its signed requests name it: PEM
    SubjectPublicKeyInfo, what Flower's ``flwr-public-key`` header carries (base64)."""
    try:
        key = serialization.load_ssh_public_key(public_key)
    except (ValueError, UnsupportedAlgorithm):
        key = serialization.load_pem_public_key(public_key)
    return hashlib.sha256(key.public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
                          ).hexdigest()


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
