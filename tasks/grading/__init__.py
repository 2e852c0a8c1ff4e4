"""Disc grading: Pfirrmann-like degeneration and RSNA canal stenosis per disc level."""

from tasks.grading.task import GradingTask

__all__ = ["GradingTask"]
