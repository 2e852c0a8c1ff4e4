"""Read TensorBoard event files back the way TensorBoard does."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Tag -> (step, value) of every event file in ``folder``, as TensorBoard loads them,
    by step (files are read in name order, which need not be the order they were written
    in when two writers start within a second; a step logged twice stays twice)."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: sorted((e.step, e.value) for e in events.Scalars(tag))
            for tag in events.Tags()["scalars"]}
