"""Run the Flower App on one machine: a private local SuperLink in simulation mode.

``run_federated`` starts ``flower-superlink --simulation`` on a free loopback
port with its own Flower home (so the user's ~/.flwr is never touched),
submits the app with ``flwr run`` (runtime dependency installation disabled:
there is no internet at a hospital either), streams the run's log, and stops
every process it started (the SuperLink, the simulation runtime and its Ray
workers) when the run ends, fails, or is interrupted, however (``tasks.processes.spawn``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from server.superlink import submit_run
from tasks.processes import BIN, flower_env, free_port, spawn, stop_tree, wait_until_healthy

CONNECTION = "spinefl-local"


@contextmanager
def local_superlink(workdir: Path) -> Iterator[dict[str, str]]:
    """A SuperLink in simulation mode on 127.0.0.1; yields the environment to reach it."""
    port = free_port()
    home = workdir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = flower_env(home)
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
                  resume: bool = False) -> None:
    """Run the federated experiment over ``hospitals`` simulated nodes; block until done
    (``resume``: continue after the last finished round of the experiment's output folder).

    Every log line of the run is written to ``workdir/run.log`` and passed to ``on_line``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    with local_superlink(workdir) as env:
        submit_run(CONNECTION, {"experiment": str(experiment), "partitions": str(partitions),
                                "resume": resume},
                   env, workdir / "run.log", on_line, ["--federation-config",
                                                       f"num-supernodes={hospitals}"])
