"""Cobb angle from AP radiographs: vertebral bodies, their endplate tilt, the largest angle."""

from tasks.cobb.task import CobbTask

__all__ = ["CobbTask"]
