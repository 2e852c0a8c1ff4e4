"""Experiment tracking: TensorBoard event files beside a run's tables.

``ScalarLog(folder)`` keeps one TensorBoard run per name under ``folder`` (one per
hospital in a federation, one for ``spinefl train``), each metric a tag and the epoch or
round its step, so that ``tensorboard --logdir <folder>`` draws every hospital's curves
of a metric in one chart. Non-numeric and non-finite values are left out; every call
flushes, so a reader sees each epoch or round as soon as it ends.
"""

from __future__ import annotations

import math
import shutil
from numbers import Real
from pathlib import Path
from typing import Any

TENSORBOARD = "tensorboard"


class ScalarLog:
    """TensorBoard scalars of named runs under ``folder``."""

    def __init__(self, folder: Path, fresh: bool = True) -> None:
        """``fresh`` starts from nothing (a run started over, ``--force``); otherwise the
        runs already under ``folder`` go on (a resumed federation)."""
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
        self.folder = folder
        self.writers: dict[str, Any] = {}

    def add(self, name: str, step: int, values: dict[str, Any]) -> None:
        """Each finite number of ``values`` as a scalar of run ``name`` at ``step``."""
        from torch.utils.tensorboard import SummaryWriter

        if name not in self.writers:
            self.writers[name] = SummaryWriter(log_dir=str(self.folder / name))
        writer = self.writers[name]
        for key, value in values.items():
            if isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value):
                writer.add_scalar(key, float(value), step)
        writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
