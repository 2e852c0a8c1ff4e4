"""Run the installed `spinefl` command as a user would (a real process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SPINEFL = Path(sys.executable).parent / "spinefl"


def spinefl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `spinefl ARGS`; capture its output; the process has ended when this returns."""
    return subprocess.run([str(SPINEFL), *args], capture_output=True, text=True,
                          timeout=timeout)


def assert_trains(manifest: Path, folder: Path, task_lines: str = "") -> None:
    """`spinefl train` runs one epoch of a small segmentation network on ``manifest`` as it
    is (no further step) and writes its model."""
    config = folder / "run.toml"
    config.write_text(f"""
[data]
manifest = "{manifest}"
[task]
name = "segmentation"
channels = [8, 16, 32]
{task_lines}
[train]
epochs = 1
batch_size = 8
[output]
dir = "{folder / 'run'}"
""")
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
