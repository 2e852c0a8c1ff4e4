"""Experiment tracking: TensorBoard event files, and MLflow runs where MLflow is installed,
beside a run's tables.

``ScalarLog(out)`` keeps one run per name (one per hospital in a federation, one for
``spinefl train``), each metric a tag and the epoch or round its step:

- ``out/tensorboard/<name>``: ``tensorboard --logdir out/tensorboard`` draws every
  hospital's curves of a metric in one chart;
- ``out/mlruns``: an MLflow local file store (experiment ``spinefl``, one MLflow run per
  name), when ``mlflow`` (or ``mlflow-skinny``) can be imported; the full ``mlflow``
  package shows it: ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri
  out/mlruns``. MLflow's usage telemetry is turned off.

Non-numeric and non-finite values are left out; every call writes through, so a reader
sees each epoch or round as soon as it ends. A resumed federation goes on in the same runs.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from importlib.util import find_spec
from numbers import Real
from pathlib import Path
from typing import Any, Protocol

TENSORBOARD = "tensorboard"
MLRUNS = "mlruns"
EXPERIMENT = "spinefl"


def finite_numbers(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers (not booleans) of ``values``."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)}


class Runs(Protocol):
    """Named runs of scalars in one tracking system."""

    def add(self, name: str, step: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoardRuns:
    """One TensorBoard run (a folder of event files) per name under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.writers: dict[str, Any] = {}

    def add(self, name: str, step: int, values: dict[str, float]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if name not in self.writers:
            self.writers[name] = SummaryWriter(log_dir=str(self.folder / name))
        writer = self.writers[name]
        for key, value in values.items():
            writer.add_scalar(key, value, step)
        writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


class MlflowRuns:
    """One MLflow run per name in experiment ``spinefl`` of the local file store ``folder``
    (a name's earlier run goes on: a resumed federation).

    It sets two variables of this process's environment, unless already set: MLflow's
    opt-in to its file store, and the opt-out of MLflow 3's usage telemetry (which would
    otherwise report to MLflow's servers from coordinator and hospital machines)."""

    def __init__(self, folder: Path) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # MLflow 3 keeps its file store in maintenance mode and asks for this to use it; a
        # file store needs no database packages and sits beside the run's other outputs.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.store.tracking.file_store import FileStore
        from mlflow.tracking import MlflowClient

        # Lay the store out (MLflow reuses a store object it opened before in this process,
        # which expects its folders to be there still: a run started over removed them).
        FileStore(folder.absolute().as_uri())
        self.client = MlflowClient(tracking_uri=folder.absolute().as_uri())
        found = self.client.get_experiment_by_name(EXPERIMENT)
        self.experiment = (found.experiment_id if found is not None
                           else self.client.create_experiment(EXPERIMENT))
        self.runs: dict[str, str] = {}

    def _run(self, name: str) -> str:
        """The run id of ``name``: its earlier run, running again, or a new one."""
        if name not in self.runs:
            earlier = self.client.search_runs(
                [self.experiment], filter_string=f"tags.`mlflow.runName` = '{name}'")
            if earlier:
                self.runs[name] = earlier[0].info.run_id
                self.client.update_run(self.runs[name], status="RUNNING")
            else:
                self.runs[name] = self.client.create_run(self.experiment,
                                                         run_name=name).info.run_id
        return self.runs[name]

    def add(self, name: str, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self._run(name), metrics=[
            Metric(key, value, stamp, step) for key, value in values.items()])

    def close(self) -> None:
        for run in self.runs.values():
            self.client.set_terminated(run)
        self.runs.clear()


def mlflow_installed() -> bool:
    """Whether MLflow (``mlflow`` or ``mlflow-skinny``) can be imported."""
    return find_spec("mlflow") is not None


class ScalarLog:
    """Scalars of named runs in every tracking system there is: TensorBoard under
    ``out/tensorboard``, MLflow under ``out/mlruns`` where installed."""

    def __init__(self, out: Path, fresh: bool = True) -> None:
        """``fresh`` starts from nothing (a run started over, ``--force``); otherwise the
        runs already under ``out`` go on (a resumed federation)."""
        if fresh:
            for folder in (TENSORBOARD, MLRUNS):
                shutil.rmtree(out / folder, ignore_errors=True)
        self.systems: list[Runs] = [TensorBoardRuns(out / TENSORBOARD)]
        if mlflow_installed():
            self.systems.append(MlflowRuns(out / MLRUNS))

    def add(self, name: str, step: int, values: dict[str, Any]) -> None:
        """Each finite number of ``values`` as a scalar of run ``name`` at ``step``."""
        numbers = finite_numbers(values)
        for system in self.systems:
            system.add(name, step, numbers)

    def close(self) -> None:
        for system in self.systems:
            system.close()
