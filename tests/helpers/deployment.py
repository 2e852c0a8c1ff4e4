"""A real federation on 127.0.0.1, started with spinefl's own commands as a coordinator and
hospitals would: `coordinator init/start/admit/run`, `hospital keys/join`."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tasks.processes import free_port, kill_tree, stop_tree
from tests.helpers.cli import SPINEFL, spinefl

ROOT = Path(__file__).resolve().parents[2]


class Federation:
    """A coordinator folder and SuperLink, and hospitals' nodes, all under ``folder``."""

    def __init__(self, folder: Path, hospitals: dict[str, Path]) -> None:
        self.folder = folder
        self.hospitals = hospitals
        self.coordinator = folder / "coordinator"
        self.port = free_port()
        self.superlink: subprocess.Popen | None = None
        self.nodes: dict[str, subprocess.Popen] = {}
        self.joins: dict[str, int] = {}
        self.runtime_ports: dict[str, int] = {}
        done = spinefl("coordinator", "init", "--out", str(self.coordinator), "--host",
                       "localhost,127.0.0.1", "--port", str(self.port), "--superlink-port",
                       str(free_port()))
        assert done.returncode == 0, done.stderr

    def _start(self, args: list[str], log: Path) -> subprocess.Popen:
        return subprocess.Popen([str(SPINEFL), *args], stdout=log.open("a"),
                                stderr=subprocess.STDOUT, cwd=self.folder)

    def start_coordinator(self) -> None:
        """`spinefl coordinator start`, returning once the SuperLink answers."""
        log = self.folder / "superlink.log"
        starts = log.read_text().count("Uvicorn running") if log.is_file() else 0
        self.superlink = self._start(["coordinator", "start", "--dir", str(self.coordinator)],
                                     log)
        wait_for(lambda: log.read_text().count("Uvicorn running") > starts, 60,
                 "the SuperLink did not start")

    def keys(self, name: str) -> Path:
        """`spinefl hospital keys` once per hospital; the key folder."""
        folder = self.folder / "keys" / name
        if not folder.exists():
            done = spinefl("hospital", "keys", "--out", str(folder), "--name", name)
            assert done.returncode == 0, done.stderr
        return folder

    def admit(self, name: str) -> None:
        done = spinefl("coordinator", "admit", str(self.keys(name) / "node.pub"), "--name",
                       name, "--dir", str(self.coordinator))
        assert done.returncode == 0, done.stdout + done.stderr

    def approve(self, name: str, bundle: Path = ROOT) -> None:
        """`spinefl hospital approve` of an app folder (this checkout: what runs are
        submitted with) at a hospital."""
        done = spinefl("hospital", "approve", str(bundle), "--data", str(self.hospitals[name]))
        assert done.returncode == 0, done.stdout + done.stderr

    def join(self, name: str, *extra: str, ca: Path | None = None) -> subprocess.Popen:
        """`spinefl hospital join` for a hospital, started in the background."""
        log = self.folder / f"node-{name}.log"
        self.joins[name] = self.joins.get(name, 0) + 1
        self.runtime_ports[name] = free_port()
        node = self._start(["hospital", "join", "--superlink", f"localhost:{self.port}",
                            "--ca", str(ca or self.coordinator / "ca.crt"),
                            "--key", str(self.keys(name) / "node.key"),
                            "--data", str(self.hospitals[name]), "--name", name,
                            "--runtime-port", str(self.runtime_ports[name]), *extra], log)
        self.nodes[name] = node
        return node

    def wait_connected(self, name: str) -> None:
        """Return once the node's latest start has connected (it says its node id)."""
        log = self.folder / f"node-{name}.log"
        wait_for(lambda: log.read_text().count("SuperNode ID") >= self.joins[name], 60,
                 f"node {name} did not connect")

    def run(self, experiment: Path, *extra: str, timeout: float = 600
            ) -> subprocess.CompletedProcess:
        """`spinefl coordinator run` to the end."""
        return subprocess.run([str(SPINEFL), "coordinator", "run", str(experiment), "--dir",
                               str(self.coordinator), *extra], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)

    def output(self, experiment_dir: str) -> Path:
        return self.coordinator / experiment_dir

    def kill(self, process: subprocess.Popen) -> None:
        """SIGKILL a process and everything below it at once, as a power cut would."""
        kill_tree(process.pid)
        process.wait(timeout=30)

    def stop(self) -> None:
        """Stop every node and the coordinator (SIGTERM through spinefl, then SIGKILL)."""
        for process in [*self.nodes.values(), self.superlink]:
            if process is not None:
                stop_tree(process)


def wait_for(condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.5)


def experiment(folder: Path, source: str, name: str, **federation: object) -> Path:
    """A copy of configs/<source> with its output folder ``runs/<name>`` and some
    [federation] keys replaced."""
    text = (ROOT / "configs" / source).read_text()
    lines = []
    for line in text.splitlines():
        key = line.split("=")[0].strip()
        if key in federation:
            value = federation.pop(key)
            line = f"{key} = {str(value).lower() if isinstance(value, bool) else value}"
        elif key == "dir":
            line = f'dir = "runs/{name}"'
        lines.append(line)
    text = "\n".join(lines).replace("[federation]", "[federation]\n" + "\n".join(
        f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in federation.items()))
    path = folder / f"{name}.toml"
    path.write_text(text + "\n")
    return path
