"""Tasks by name: the one place that lists them."""

from __future__ import annotations

from tasks.cobb import CobbTask
from tasks.contract import Task
from tasks.errors import UserError
from tasks.fracture import FractureTask
from tasks.grading import GradingTask
from tasks.labelling import LabellingTask
from tasks.segmentation import SegmentationTask

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (SegmentationTask, LabellingTask,
                                                            GradingTask, CobbTask, FractureTask)}


def task_class(name: str) -> type[Task]:
    """The task class registered under ``name``."""
    if name not in TASKS:
        raise UserError(f"unknown task '{name}' (known: {', '.join(sorted(TASKS))})")
    return TASKS[name]
