"""Run the Flower App on one machine: a private local SuperLink in simulation mode.

``run_federated`` starts ``flower-superlink --simulation`` on a free loopback
port with its own Flower home (so the user's ~/.flwr is never touched),
submits the app with ``flwr run`` (runtime dependency installation disabled:
there is no internet at a hospital either), streams the run's log, and stops
every process it started (the SuperLink, the simulation runtime and its Ray
workers) when the run ends, fails, or is interrupted, however (``tasks.processes.spawn``).

The virtual hospitals run on a private Ray instance of this machine, or on a Ray
cluster that is already running (``Cluster.address``, given to Ray as
``RAY_ADDRESS``): its head on this machine or elsewhere. Ray ends a run's actors
there when the run's driver ends.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.superlink import submit_run
from tasks.processes import BIN, flower_env, free_port, spawn, stop_tree, wait_until_healthy

CONNECTION = "spinefl-local"


@dataclass(frozen=True)
class Cluster:
    """Where the virtual hospitals run: a Ray cluster's ``address`` (empty: a private Ray
    instance on this machine; ``auto``: the one ``ray start`` started here; ``HOST:PORT``)
    and what each virtual hospital holds of it while it trains."""

    address: str = ""
    cpus_per_hospital: int = 2
    gpus_per_hospital: float = 0.0

    @classmethod
    def of(cls, ray: Mapping[str, Any]) -> Cluster:
        """A simulate config's validated ``[ray]`` section."""
        return cls(ray["address"], ray["cpus_per_hospital"], ray["gpus_per_hospital"])

    def federation_config(self, hospitals: int) -> str:
        """``flwr run --federation-config``: the virtual hospitals and their resources."""
        return (f"num-supernodes={hospitals} client-resources-num-cpus={self.cpus_per_hospital}"
                f" client-resources-num-gpus={self.gpus_per_hospital}")

    def environment(self) -> dict[str, str]:
        """How Flower's simulation runtime finds the cluster: ``RAY_ADDRESS`` (``local``, a
        private instance, even where ``ray start`` runs a cluster on this machine)."""
        return {"RAY_ADDRESS": self.address or "local"}


@contextmanager
def local_superlink(workdir: Path, cluster: Cluster = Cluster()) -> Iterator[dict[str, str]]:
    """A SuperLink in simulation mode on 127.0.0.1 whose runs use ``cluster``; yields the
    environment to reach it."""
    port = free_port()
    home = workdir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**flower_env(home), **cluster.environment()}
    log = (workdir / "superlink.log").open("w")
    superlink = spawn(
        [str(BIN / "flower-superlink"), "--insecure", "--simulation",
         "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_healthy(port, superlink, timeout=60.0)
        yield env
    finally:
        stop_tree(superlink)
        log.close()


def run_federated(experiment: Path, partitions: Path, hospitals: int, workdir: Path,
                  on_line: Callable[[str], None] = lambda line: None,
                  resume: bool = False, cluster: Cluster = Cluster()) -> None:
    """Run the federated experiment over ``hospitals`` simulated nodes on ``cluster``; block
    until done (``resume``: continue after the last finished round of the experiment's
    output folder).

    Every log line of the run is written to ``workdir/run.log`` and passed to ``on_line``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    with local_superlink(workdir, cluster) as env:
        submit_run(CONNECTION, {"experiment": str(experiment), "partitions": str(partitions),
                                "resume": resume},
                   env, workdir / "run.log", on_line,
                   ["--federation-config", cluster.federation_config(hospitals)])
