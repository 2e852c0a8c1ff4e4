"""Find the Flower (and Ray) processes a test started, to show none is left behind."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

FLOWER_PROCESSES = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp",
                    "flwr-clientapp", "flwr-simulation", "spinefl", "client.worker",
                    "client.prompt_supernode", "client.prompt_superexec", "raylet",
                    "gcs_server", "ray::")


def running(marker: Path) -> set[tuple[int, str]]:
    """Live processes whose environment or command line names ``marker`` (a test's folder)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            environment = (entry / "environ").read_bytes()
        except OSError:
            continue
        if state != "Z" and (str(marker).encode() in environment or str(marker) in command):
            found.add((int(entry.name), command.strip()))
    return found


def flower_processes(marker: Path) -> set[tuple[int, str]]:
    """Live Flower, Ray or spinefl processes started for this test: their environment or
    command line names ``marker`` (the test's folder, where the run's Flower home lives)."""
    return {(pid, command) for pid, command in running(marker)
            if any(name in command for name in FLOWER_PROCESSES)}


def left_after(find: Callable[[], set[tuple[int, str]]], seconds: float
               ) -> set[tuple[int, str]]:
    """What ``find()`` still returns after waiting up to ``seconds`` for it to come back
    empty (processes that should end soon after a stop)."""
    deadline = time.monotonic() + seconds
    while (found := find()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found
