"""A registered task with every setting at its default, and a small untrained checkpoint."""

from __future__ import annotations

from pathlib import Path

from tasks.checkpoint import save_checkpoint
from tasks.config import validate
from tasks.registry import TASKS


def default_task(name: str):
    cls = TASKS[name]
    return cls(validate({}, {"task": cls.keys}, "defaults")["task"])


def untrained_segmentation(folder: Path) -> Path:
    """A small untrained segmentation checkpoint (CT and MR) in ``folder``: seconds to use."""
    task = default_task("segmentation")
    task.settings.update(channels=[8, 16], spacing=[4.0, 4.0, 4.0])
    return save_checkpoint(folder / "model.pt", type(task)(task.settings),
                           type(task)(task.settings).build_model())
