"""Run the installed `spinefl` command as a user would (a real process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomli_w

SPINEFL = Path(sys.executable).parent / "spinefl"


def spinefl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `spinefl ARGS`; capture its output; the process has ended when this returns."""
    return subprocess.run([str(SPINEFL), *args], capture_output=True, text=True,
                          timeout=timeout)


def run_config(path: Path, manifest: Path, out: Path, **sections: dict) -> Path:
    """Write a `spinefl train` config of a small segmentation network (channels 8, 16) on
    ``manifest`` into ``out``; ``sections`` add to or replace its keys, section by section."""
    config = {"data": {"manifest": str(manifest)},
              "task": {"name": "segmentation", "channels": [8, 16]},
              "train": {"epochs": 2, "batch_size": 2}, "output": {"dir": str(out)}}
    for name, keys in sections.items():
        config[name] = {**config.get(name, {}), **keys}
    path.write_text(tomli_w.dumps(config))
    return path


def assert_trains(manifest: Path, folder: Path, **task: object) -> None:
    """`spinefl train` runs one epoch of a small segmentation network on ``manifest`` as it
    is (no further step) and writes its model."""
    config = run_config(folder / "run.toml", manifest, folder / "run",
                        task={"channels": [8, 16, 32], **task},
                        train={"epochs": 1, "batch_size": 8})
    done = spinefl("train", "--config", str(config), timeout=600)
    assert done.returncode == 0, done.stderr
    assert (folder / "run" / "model.pt").is_file()


def assert_one_line_error(done, *fragments: str) -> None:
    """The command failed with exit status 2 and one line on stderr (no traceback) that
    holds every fragment."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
