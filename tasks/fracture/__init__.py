"""Vertebral fracture grading: Genant grade 0-3 per vertebra (T12-L5)."""

from tasks.fracture.task import FractureTask

__all__ = ["FractureTask"]
