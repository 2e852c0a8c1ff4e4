"""A real deployment on 127.0.0.1: a TLS SuperLink with node authentication behind a real
nginx proxy, and three hospitals' SuperNodes serving runs through their launcher, all started
with spinefl's commands; runs launched with `flwr run` (through `spinefl coordinator run`).
Attacks are real (a tampered bundle, a node nobody admitted, the Control API from outside);
faults are real: processes are killed."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import subprocess
import zipfile
from pathlib import Path

import httpx
import pandas as pd
import pytest
import tomli_w
import torch

from client.audit import AuditLog
from server.admission import ADMITTED
from server.app import starting_point
from server.config import load_experiment
from server.operations import nodes, run_traffic, runs
from server.superlink import coordinator_env
from simulation.config import load_simulation
from simulation.phantoms.config import cohort_config
from simulation.phantoms.generator import generate
from simulation.simulate import split_hospitals
from tasks.checkpoint import load_checkpoint
from tasks.config import load_toml
from tasks.manifest import Manifest
from tasks.processes import BIN, descendants, flower_env, stop_tree
from tasks.registry import task_class
from tests.helpers.cli import SPINEFL, assert_one_line_error, spinefl
from tests.helpers.deployment import ROOT, Federation, experiment, wait_for
from tests.helpers.flower_processes import flower_processes

pytestmark = pytest.mark.slow
HOSPITALS = ("ct-a", "ct-c", "mr-b")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Three hospitals' prepared folders, a coordinator, all three admitted and joined."""
    folder = tmp_path_factory.mktemp("deployment")
    cohort = cohort_config(load_toml(ROOT / "configs" / "phantoms_smoke.toml"), "smoke")
    manifest = generate(cohort, folder / "phantoms")
    partition = load_simulation(ROOT / "configs" / "federated_smoke.toml")["partition"]
    split_hospitals(manifest, partition, folder / "hospitals")
    hospitals = {name: folder / "hospitals" / name for name in HOSPITALS}
    running = Federation(folder, hospitals)
    try:
        running.start_coordinator()
        for name in HOSPITALS:
            running.admit(name)
            running.approve(name)
            running.join(name)
        for name in HOSPITALS:
            running.wait_connected(name)
        yield running
    finally:
        running.stop()
        assert flower_processes(folder) == set(), "a Flower or spinefl process was left behind"


def served(federation: Federation, name: str) -> int:
    """Requests the hospital's warm worker has answered (its lines in the node's log)."""
    return (federation.folder / f"node-{name}.log").read_text().count(" answered in ")


def metrics(federation: Federation, name: str) -> pd.DataFrame:
    return pd.read_csv(federation.output(f"runs/{name}") / "federated_metrics.csv")


def audit(federation: Federation, name: str) -> str:
    done = spinefl("hospital", "audit", "--data", str(federation.hospitals[name]), "--verify")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def copy_of_data(federation: Federation, name: str, new: str) -> Path:
    """A data folder of its own for another node (one node per data folder: its lock) holding
    ``name``'s manifest (whose paths are absolute)."""
    import shutil

    folder = federation.folder / "hospitals" / new
    folder.mkdir()
    shutil.copy(federation.hospitals[name] / "manifest.csv", folder)
    return folder


def test_unregistered_nodes_and_other_cas_are_refused(federation):
    federation.keys("rogue")
    federation.hospitals["rogue"] = copy_of_data(federation, "ct-a", "rogue")
    rogue = federation.join("rogue")
    assert rogue.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in (federation.folder / "node-rogue.log").read_text()

    other = federation.folder / "other-ca"
    assert spinefl("coordinator", "init", "--out", str(other), "--host", "localhost"
                   ).returncode == 0
    federation.hospitals["impostor"] = copy_of_data(federation, "ct-a", "impostor")
    federation.keys("impostor")
    federation.admit("impostor")  # registered, but trusting another CA
    impostor = federation.join("impostor", ca=other / "ca.crt")
    assert impostor.wait(timeout=120) != 0
    assert "CERTIFICATE_VERIFY_FAILED" in (federation.folder / "node-impostor.log").read_text()


def test_from_outside_only_the_fleet_api_answers(federation, tmp_path):
    """Through the proxy (what hospitals and anyone else reach) the Control API, the
    ServerApp runtime API and the API docs answer nothing, and `flwr ls`, `stop` and `run`
    fail; on the coordinator's machine (loopback) `flwr ls` works. The CA key is nowhere
    in the folder the SuperLink and its ServerApps work in."""
    base = f"https://localhost:{federation.port}"
    with httpx.Client(verify=str(federation.coordinator / "ca.crt"), timeout=30) as client:
        assert client.get(f"{base}/health").status_code == 200
        for path in ("/v1/control/list-runs", "/v1/control/start-run",
                     "/v1/control/register-node", "/v1/runtime/pull-task-input"):
            assert client.post(f"{base}{path}", content=b"").status_code == 404, path
        for path in ("/docs", "/openapi.json", "/"):
            assert client.get(f"{base}{path}").status_code == 404, path
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.toml").write_text(tomli_w.dumps({"superlink": {
        "default": "proxy", "proxy": {"address": f"localhost:{federation.port}",
                                      "root-certificates": str(federation.coordinator /
                                                               "ca.crt")}}}))
    env = flower_env(outside)
    for command in (["ls"], ["stop", "1"], ["run", str(ROOT)]):
        done = subprocess.run([str(BIN / "flwr"), *command, "proxy"], capture_output=True,
                              text=True, env=env, timeout=120, cwd=tmp_path)
        assert done.returncode != 0, (command, done.stdout)
    inside = subprocess.run([str(BIN / "flwr"), "ls", "spinefl"], capture_output=True,
                            text=True, env=coordinator_env(federation.coordinator),
                            timeout=120)
    assert inside.returncode == 0, inside.stdout + inside.stderr
    assert not list(federation.coordinator.rglob("ca.key"))
    # On the coordinator's machine, a run that bypasses `coordinator run` (and so the
    # admitted list) is refused by the ServerApp before it contacts any node.
    bypass = subprocess.run([str(BIN / "flwr"), "run", str(ROOT), "spinefl", "--stream"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env=coordinator_env(federation.coordinator))
    assert "names no admitted list" in bypass.stdout + bypass.stderr, bypass.stdout[-2000:]


def test_another_local_account_cannot_take_a_nodes_requests(federation):
    """A hospital's SuperNode queues requests on its Runtime API (127.0.0.1); only the
    SuperExec holding the node's secret may claim them, so another process on the machine
    cannot answer in the hospital's name around the launcher."""
    port = federation.runtime_ports["ct-a"]
    answer = httpx.post(f"http://127.0.0.1:{port}/v1/runtime/acquire-task", content=b"",
                        headers={"Content-Type": "application/protobuf"}, timeout=30)
    assert answer.status_code == 401 and "authentication failed" in answer.text.lower(), \
        answer.text


def test_no_process_reports_home(federation):
    """Flower's telemetry is off in every Flower process spinefl started: the coordinator's
    SuperLink, every SuperNode and what runs below them (nginx is no Flower process, and
    writes its process title over its environment)."""
    roots = [federation.superlink, *federation.nodes.values()]
    pids = descendants(*(p.pid for p in roots if p.poll() is None))
    environments = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            if "python" in os.readlink(f"/proc/{pid}/exe"):
                environments[pid] = (Path("/proc") / str(pid) / "environ").read_bytes()
    assert len(environments) >= 4  # a SuperLink, three SuperNodes and their helpers
    for pid, environ in environments.items():
        assert b"FLWR_TELEMETRY_ENABLED=0\0" in environ, pid


def test_a_bundle_nobody_approved_is_refused_and_its_code_never_runs(federation, tmp_path):
    """A run submitted with a bundle whose client/app.py was changed (same name and version)
    reaches every hospital's real SuperNode; each refuses it unrun and audits the refusal with
    the bundle's hash. A node whose key was registered but never admitted by the coordinator
    is never sent anything, even though it approved that bundle."""
    from flwr.cli.build import build_fab_from_disk

    from client.approvals import digest

    tampered = tmp_path / "tampered"
    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(ROOT))) as bundle:
        bundle.extractall(tampered)
    client_app = tampered / "client" / "app.py"
    client_app.write_text(client_app.read_text() + "\nPath('BUNDLE-CODE-RAN').touch()\n")
    sha256 = digest(build_fab_from_disk(tampered))

    federation.hospitals["unlisted"] = copy_of_data(federation, "ct-a", "unlisted")
    federation.approve("unlisted", tampered)
    registered = subprocess.run(  # through the Control API on loopback, not `admit`
        [str(BIN / "flwr"), "supernode", "register", str(federation.keys("unlisted") /
                                                         "node.pub"), "spinefl"],
        capture_output=True, text=True, env=coordinator_env(federation.coordinator),
        timeout=120)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    unlisted = federation.join("unlisted")
    try:
        federation.wait_connected("unlisted")
        config = experiment(tmp_path, "deployment_smoke.toml", "tampered", rounds=1,
                            round_timeout=60.0)
        run_config = (f'experiment="{config}" admitted="{federation.coordinator / ADMITTED}"')
        done = subprocess.run([str(BIN / "flwr"), "run", str(tampered), "spinefl",
                               "--run-config", run_config, "--stream"], capture_output=True,
                              text=True, env=coordinator_env(federation.coordinator),
                              timeout=600, cwd=tmp_path)
    finally:
        stop_tree(unlisted)
    assert "not on the coordinator's admitted list" in done.stdout, done.stdout[-3000:]
    for name in HOSPITALS:
        folder = federation.hospitals[name]
        refused = [r for r in AuditLog(folder).records() if r.get("bundle_sha256") == sha256]
        assert refused and all("has not approved app bundle" in r["refused"]
                               for r in refused), name
        assert {r["type"] for r in refused} >= {"query", "train"}, name
        assert AuditLog(folder).verify() is None
    assert not list(federation.folder.rglob("BUNDLE-CODE-RAN"))
    assert not AuditLog(federation.hospitals["unlisted"]).records()


def test_secure_aggregation_with_three_hospitals(federation, tmp_path):
    """A SecAgg+ round, every request served by the hospitals' warm workers; the coordinator
    sees each hospital's bytes on the wire; each hospital cached its prepared data."""
    config = experiment(tmp_path, "deployment_secure.toml", "secure", rounds=1)
    before = set(runs(federation.coordinator).run)
    answered = {name: served(federation, name) for name in HOSPITALS}
    done = federation.run(config)
    assert done.returncode == 0, done.stdout[-3000:]
    assert all(served(federation, name) > answered[name] for name in HOSPITALS)
    assert done.stdout.count("Secure aggregation completed") == 1
    table = metrics(federation, "secure")
    for _, rows in table.groupby("round"):
        assert sorted(rows.hospital) == sorted(HOSPITALS)
        assert (rows["train_secagg-clipped"] == 0).all() and rows.train_loss.notna().all()
    loaded = load_experiment(config)
    task = task_class("segmentation")({k: v for k, v in loaded["task"].items() if k != "name"})
    initial, _ = starting_point(task, loaded, tmp_path / "fresh")
    _, model, _ = load_checkpoint(federation.output("runs/secure") / "model.pt")
    final = model.state_dict()
    assert all(torch.isfinite(final[k]).all() for k in final)
    moved = [k for k in initial if not torch.equal(initial[k], final[k])]
    assert len(moved) > len(initial) // 2, "the unmasked sum did not reach the global model"

    (run,) = set(runs(federation.coordinator).run) - before
    shown = spinefl("coordinator", "traffic", run, "--dir", str(federation.coordinator))
    assert shown.returncode == 0 and all(name in shown.stdout for name in HOSPITALS), \
        shown.stdout + shown.stderr
    traffic = run_traffic(federation.coordinator, int(run)).set_index("hospital")
    model_bytes = sum(t.numel() * 4 for t in final.values() if t.is_floating_point())
    for name in HOSPITALS:  # the global model came down; each masked update went up
        assert traffic.loc[name, "objects_received_bytes"] >= model_bytes, traffic
        assert traffic.loc[name, "objects_sent_bytes"] >= model_bytes, traffic
        rows = task.select(Manifest.load(federation.hospitals[name] / "manifest.csv")
                           .select(split="train"))
        cached = list((federation.hospitals[name] / ".spinefl" / "prepared").glob("*.npz"))
        assert len(cached) >= len(rows) > 0


def test_the_coordinator_watches_and_stops_a_run(federation, tmp_path):
    """`coordinator status` shows a 50-round run running and the three hospitals online by
    name; `coordinator stop` ends it in round 1 (`coordinator run` returns, every hospital
    stays up); `coordinator log` prints what the SuperLink kept of it."""
    config = experiment(tmp_path, "deployment_smoke.toml", "stopped", rounds=50)
    log, folder = federation.coordinator / "runs/stopped.log", federation.coordinator
    run = subprocess.Popen([str(SPINEFL), "coordinator", "run", str(config), "--dir",
                            str(folder)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_for(lambda: log.is_file() and "[ROUND 1/50]" in log.read_text(), 300,
                 "round 1 did not start")
        status = spinefl("coordinator", "status", "--dir", str(folder))
        assert status.returncode == 0, status.stderr
        shown = runs(folder)
        (running,) = shown[shown.status == "running"].run
        online = nodes(folder).set_index("hospital").status
        assert all(online[name] == "online" for name in HOSPITALS), online
        assert all(name in status.stdout for name in (*HOSPITALS, running, "running")), \
            status.stdout
        stop = spinefl("coordinator", "stop", running, "--dir", str(folder))
        assert stop.returncode == 0, stop.stderr
        run.wait(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert runs(folder).set_index("run").loc[running, "status"] == "finished:stopped"
    assert not (federation.output("runs/stopped") / "model.pt").is_file()
    shown = spinefl("coordinator", "log", running, "--dir", str(folder))
    assert shown.returncode == 0 and "[ROUND 1/50]" in shown.stdout, shown.stderr
    assert set(nodes(folder).set_index("hospital").status[list(HOSPITALS)]) == {"online"}
    assert_one_line_error(spinefl("coordinator", "stop", "999999", "--dir", str(folder)),
                          "no run 999999 on this SuperLink")


def test_two_rounds_over_tls_through_a_killed_node_and_a_crashed_coordinator(federation,
                                                                            tmp_path):
    """Two rounds of `configs/deployment_smoke.toml` over TLS with node authentication.
    A hospital dies mid-round 1: the round completes with the others. Then the coordinator
    dies: the run resumes after its last finished round, losing none, and the restarted
    hospital (same key, ledger and audit log) takes part in round 2. Every hospital's
    audit chain stays intact."""
    config = experiment(tmp_path, "deployment_smoke.toml", "faults", min_hospitals=2,
                        round_timeout=120.0)
    output, log = federation.output("runs/faults"), federation.coordinator / "runs/faults.log"
    run = subprocess.Popen([str(SPINEFL), "coordinator", "run", str(config), "--dir",
                            str(federation.coordinator)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_for(lambda: log.is_file() and "[ROUND 1/2]" in log.read_text(), 300,
                 "round 1 did not start")
        federation.kill(federation.nodes["mr-b"])  # the hospital's machine goes down
        wait_for(lambda: (output / "checkpoint_round.pt").is_file(), 300,
                 "round 1 did not finish")
        federation.kill(federation.superlink)  # then the coordinator's
        run.wait(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    first = metrics(federation, "faults").set_index("hospital")
    assert set(first["round"]) == {1} and not (output / "model.pt").is_file()
    assert first.loc[["ct-a", "ct-c"], "train_loss"].map(math.isfinite).all()
    assert "Node Unavailable" in first.loc["mr-b", "train_error"]

    federation.start_coordinator()  # ct-a and ct-c reconnect by themselves
    federation.join("mr-b")  # mr-b restarts: same key, same data folder
    refused = federation.run(config)
    assert refused.returncode != 0
    assert "holds round 1 of an earlier run" in refused.stderr.splitlines()[-1]
    config.write_text(config.read_text().replace("min_hospitals = 2", "min_hospitals = 3"))
    done = federation.run(config, "--resume")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Resuming after round 1" in done.stdout
    assert "Uvicorn running on https://" in (federation.folder / "superlink.log").read_text()
    table = metrics(federation, "faults")
    assert table.groupby("round").hospital.apply(sorted).to_dict() == {
        1: sorted(HOSPITALS), 2: sorted(HOSPITALS)}
    trained = table[table.train_loss.map(math.isfinite)]
    assert len(trained) == 5 and (trained.train_steps == 4).all()
    assert trained.val_dice_mean.between(0, 1).all()
    task, _, payload = load_checkpoint(output / "model.pt")
    assert task.name == "segmentation" and payload["round"] == 2
    for name in HOSPITALS:  # what arrived and what left: rounds 1 and 2, chain intact
        records, intact = re.search(r"(\d+) record\(s\), (chain intact)?",
                                    " ".join(audit(federation, name).split())).groups()
        # ct-a and ct-c: train of both rounds, the evaluation after the last, and what the
        # crashed run may have sent of round 2 before it died; mr-b: its round-2 train
        # (which validated round 1's aggregate) and the evaluation.
        assert intact and int(records) >= (2 if name == "mr-b" else 3), (name, records)
        resumed = AuditLog(federation.hospitals[name]).served("train")[-1]
        assert resumed["round"] == 2 and resumed["validated"], resumed
