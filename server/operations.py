"""The coordinator's view of its SuperLink: runs, nodes, a run's log, stopping a run.

Each is Flower's own ``flwr`` command against the coordinator's connection (its Flower
home, ``<coordinator>/flwr``: nobody sets FLWR_HOME by hand), read as JSON where Flower
offers it; nodes are named from the admitted list.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd

from server.admission import ADMITTED, admitted_nodes
from server.superlink import CONNECTION, coordinator_env, load_coordinator
from tasks.errors import UserError
from tasks.processes import BIN

NOT_RUNNING = "is `spinefl coordinator start` running?"
RUN_COLUMNS = {"run-id": "run", "status": "status", "elapsed": "elapsed",
               "running-at": "started", "finished-at": "finished", "fab-hash": "bundle sha256"}


def flwr(folder: Path, *args: str, timeout: float = 60) -> str:
    """``flwr <args> spinefl`` for the coordinator in ``folder``; its output, or UserError with
    Flower's last line (a stopped SuperLink says it cannot connect)."""
    load_coordinator(folder)
    try:
        done = subprocess.run([str(BIN / "flwr"), *args], capture_output=True, text=True,
                              env=coordinator_env(folder), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"{folder}: `flwr {args[0]}` got no answer in {timeout:g} s; "
                        f"{NOT_RUNNING}") from None
    answer = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        last = answer.splitlines()[-1] if answer else f"status {done.returncode}"
        raise UserError(f"{folder}: flwr {args[0]} failed: {last} ({NOT_RUNNING})")
    return done.stdout


def _json(folder: Path, *args: str) -> dict:
    """Flower's JSON answer; UserError with its message when it says it failed (it exits 0
    then)."""
    text = flwr(folder, *args, CONNECTION, "--format", "json")
    try:
        answer = json.loads(text)
    except ValueError:
        raise UserError(f"{folder}: Flower's answer is not JSON: {text[:200]}") from None
    if not answer.get("success", False):
        message = str(answer.get("error-message", "")).strip().splitlines() or ["no reason"]
        raise UserError(f"{folder}: flwr {args[0]} failed: {message[-1].strip()} "
                        f"({NOT_RUNNING})")
    return answer


def runs(folder: Path) -> pd.DataFrame:
    """Every run the SuperLink knows: id, status, time running, when it started and finished,
    the bundle's hash."""
    listing = _json(folder, "ls").get("runs", [])
    frame = pd.DataFrame(listing, columns=list(RUN_COLUMNS)).rename(columns=RUN_COLUMNS)
    frame["bundle sha256"] = frame["bundle sha256"].str[:12]
    frame["elapsed"] = [_clock(value) for value in frame["elapsed"]]
    return frame


def _clock(seconds: object) -> str:
    """Flower's elapsed seconds as H:MM:SS."""
    try:
        whole = int(float(str(seconds)))
    except ValueError:
        return str(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def nodes(folder: Path) -> pd.DataFrame:
    """Every registered node: its id, the hospital's name from the admitted list, and
    whether it is online."""
    admitted = admitted_nodes(folder / ADMITTED)
    rows = [{"node": node["node-id"], "hospital": admitted.get(node["node-id"], {}).get(
                 "name", "(not admitted)"), "status": node["status"],
             "since": node.get("offline-at") if node["status"] != "online"
             else node.get("online-at")}
            for node in _json(folder, "supernode", "ls").get("nodes", [])]
    return pd.DataFrame(rows, columns=["node", "hospital", "status", "since"])


def run_traffic(folder: Path, run: int | None) -> pd.DataFrame:
    """Bytes on the wire per hospital (``server.traffic``) while ``run`` ran, or over the whole
    proxy log when None."""
    from server.traffic import traffic

    if run is None:
        return traffic(folder)
    _known(folder, run)
    listed = runs(folder).set_index("run").loc[str(run)]
    return traffic(folder, _time(listed["started"]), _time(listed["finished"]))


def _time(value: object) -> pd.Timestamp | None:
    """Flower's ISO time in UTC; None when it has none yet (not started, not finished)."""
    try:
        return pd.Timestamp(str(value)).tz_convert("UTC") if value else None
    except (ValueError, TypeError):
        return None


def run_log(folder: Path, run: int) -> str:
    """The run's log as the SuperLink keeps it."""
    _known(folder, run)
    return flwr(folder, "log", str(run), CONNECTION, "--show", timeout=120)


def stop_run(folder: Path, run: int) -> str:
    """Stop a run; Flower's answer."""
    _known(folder, run)
    return flwr(folder, "stop", str(run), CONNECTION).strip()


def _known(folder: Path, run: int) -> None:
    known = runs(folder)
    if str(run) not in set(known["run"]):
        raise UserError(f"{folder}: no run {run} on this SuperLink (runs: "
                        f"{', '.join(known['run']) or 'none'})")
