"""Benchmark: `spinefl hospital prepare` on a large synthetic PACS export.

Writes an export of CT series (real DICOM through pydicom, 512 x 512 slices),
then runs the real command twice in a child process and prints, side by side:
files per second, input megabytes per second, the child's peak memory against
the export's size (streaming keeps memory near one series, not the export),
and the second run's time against the first (a second run only re-reads
headers and skips every unchanged series).

    .venv/bin/python benchmarks/hospital_prepare.py --out runs/bench-prepare
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.dicom_series import write_series  # noqa: E402

from tasks.imageio import Volume  # noqa: E402
from tasks.stops import handle_stops  # noqa: E402


def build_export(folder: Path, series: int, slices: int) -> int:
    """``series`` CT series of ``slices`` 512 x 512 slices; returns the export's bytes."""
    rng = np.random.default_rng(0)
    for i in range(series):
        volume = Volume(rng.integers(-1000, 2000, (512, 512, slices)).astype(np.float32),
                        np.diag([0.7, 0.7, 2.0, 1.0]))
        write_series(volume, folder / f"patient{i % 7:02d}" / f"series{i:03d}",
                     PatientID=f"MRN{i % 7:04d}")
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed_run(export: Path, out: Path) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB) of one `spinefl hospital prepare`."""
    start = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "spinefl"), "hospital", "prepare",
                           "--input", str(export), "--out", str(out)], capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-prepare"))
    parser.add_argument("--series", type=int, default=30)
    parser.add_argument("--slices", type=int, default=60)
    args = parser.parse_args()
    handle_stops()  # SIGTERM and SIGHUP too: every process it started is stopped
    console = Console()
    shutil.rmtree(args.out, ignore_errors=True)
    export, prepared = args.out / "export", args.out / "prepared"
    with console.status("Writing the export"):
        size = build_export(export, args.series, args.slices)
    files = args.series * args.slices
    first, peak = timed_run(export, prepared)
    second, _ = timed_run(export, prepared)
    mib = size / 2**20
    table = Table(title=f"hospital prepare: {args.series} CT series, {files} files, "
                        f"{mib:.0f} MiB")
    for column in ("measure", "value"):
        table.add_column(column)
    for name, value in (("first run (s)", f"{first:.1f}"),
                        ("files per second", f"{files / first:.0f}"),
                        ("MiB per second", f"{mib / first:.1f}"),
                        ("peak memory (MiB)", f"{peak:.0f}"),
                        ("peak memory / export size", f"{peak / mib:.2f}"),
                        ("second run (s)", f"{second:.1f}"),
                        ("second / first run", f"{second / first:.2f}")):
        table.add_row(name, value)
    console.print(table)


if __name__ == "__main__":
    main()
