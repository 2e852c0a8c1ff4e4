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
