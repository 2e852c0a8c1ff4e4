"""`spinefl simulate` on a Ray cluster that is already running: two nodes started with
`ray start` on the loopback interface, the virtual hospitals spread over both."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pandas as pd
import psutil
import pytest

from simulation.config import load_simulation
from simulation.simulate import simulate
from tasks.processes import BIN, QUIET, free_port, kill_tree
from tests.helpers.flower_processes import left_after, running

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Ray turns 127.0.0.1 into the machine's network address (reachable from other machines);
# any other loopback address it takes as given, so the cluster stays on the loopback.
HOST = "127.0.0.2"


def _ray_start(arguments: list[str], marker: Path) -> None:
    """``ray start`` one node of the test's cluster (its processes carry ``marker``)."""
    env = {**os.environ, **QUIET, "SPINEFL_TEST_RAY": str(marker)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [str(BIN / "ray"), "start", f"--node-ip-address={HOST}", "--num-cpus=1",
         "--object-store-memory=100000000", "--disable-usage-stats",
         f"--dashboard-agent-listen-port={free_port()}", *arguments],
        env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def ray_cluster():
    """A two-node Ray cluster (one CPU each) on the loopback: its head's address and the
    folder its processes name. Every process of it is killed afterwards (``ray stop``
    would end other tests' Ray too)."""
    marker = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's sockets live here
    address = f"{HOST}:{free_port()}"
    try:
        _ray_start(["--head", f"--port={address.split(':')[1]}", "--include-dashboard=false",
                    f"--ray-client-server-port={free_port()}", f"--temp-dir={marker}"], marker)
        _ray_start([f"--address={address}"], marker)
        yield address, marker
    finally:
        for pid, _ in running(marker):
            kill_tree(pid)
        assert left_after(lambda: running(marker), 10) == set()
        shutil.rmtree(marker, ignore_errors=True)


def _actor_hosts(marker: Path, seen: set[int], stop: threading.Event) -> None:
    """Add the parent (its node's raylet) of every ClientApp actor of the cluster that
    ``marker`` names, until ``stop`` (other tests' Ray instances may run meanwhile)."""
    while not stop.wait(0.3):
        for pid, command in running(marker):
            if "ClientAppActor" in command:
                with contextlib.suppress(psutil.Error):
                    seen.add(psutil.Process(pid).ppid())


def test_the_smoke_federation_runs_on_a_two_node_ray_cluster(ray_cluster, tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_simulation(ROOT / "configs" / "federated_smoke.toml")
    config["phantoms"]["dir"] = str(tmp_path / "phantoms")
    config["output"]["dir"] = str(tmp_path / "run")
    config["baselines"] = {"pooled": False, "local": False}
    config["federation"]["rounds"] = 1
    address, marker = ray_cluster
    config["ray"].update(address=address, cpus_per_hospital=1)
    raylets = {pid for pid, command in running(marker) if "raylet/raylet" in command}
    hosts: set[int] = set()
    stop = threading.Event()
    watcher = threading.Thread(target=_actor_hosts, args=(marker, hosts, stop))
    watcher.start()
    try:
        results = simulate(config)
    finally:
        stop.set()
        watcher.join()
    rounds = pd.read_csv(tmp_path / "run" / "federated" / "federated_metrics.csv")
    assert set(rounds.hospital) == {"ct-a", "ct-c", "mr-b"}
    assert rounds["train_loss"].notna().all()
    assert set(results.model) == {"federated"}
    # One CPU a node, one a hospital: an actor on each node, both under the cluster's raylets.
    assert len(hosts) == 2 and hosts <= raylets, (hosts, raylets)
