"""A registered task with every setting at its default."""

from __future__ import annotations

from tasks.config import validate
from tasks.registry import TASKS


def default_task(name: str):
    cls = TASKS[name]
    return cls(validate({}, {"task": cls.keys}, "defaults")["task"])
