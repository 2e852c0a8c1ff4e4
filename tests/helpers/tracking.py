"""Read tracked scalars back the way TensorBoard and MLflow do."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Tag -> (step, value) of every event file in ``folder``, as TensorBoard loads them,
    by step (files are read in name order, which need not be the order they were written
    in when two writers start within a second; a step logged twice stays twice)."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: sorted((e.step, e.value) for e in events.Scalars(tag))
            for tag in events.Tags()["scalars"]}


def _mlflow_runs(store: Path, name: str | None = None) -> tuple[Any, list[Any]]:
    """MLflow's client on the file store ``store`` and the runs (named ``name``, or all) of
    its experiment spinefl."""
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=store.absolute().as_uri())
    experiment = client.get_experiment_by_name("spinefl")
    if experiment is None:
        return client, []
    named = f"tags.`mlflow.runName` = '{name}'" if name else ""
    return client, client.search_runs([experiment.experiment_id], filter_string=named)


def mlflow_run_names(store: Path) -> set[str]:
    """The names of the MLflow runs of experiment spinefl in the file store ``store``."""
    return {run.info.run_name for run in _mlflow_runs(store)[1]}


def mlflow_metrics(store: Path, name: str) -> dict[str, list[tuple[int, float]]]:
    """Metric -> (step, value) of the one MLflow run named ``name`` in experiment spinefl of
    the file store ``store``, as MLflow's client reads them, by step."""
    client, (run,) = _mlflow_runs(store, name)
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id,
                                                                             key))
            for key in run.data.metrics}
