"""Public spine datasets, as their users download them, into manifests (one module each).

Every adapter module has the same parts: ``NAME``, ``DESCRIPTION`` and
``prepare(root, out) -> manifest path``; ``simulation.datasets.common`` holds
what they share.
"""

from __future__ import annotations

from types import ModuleType

from simulation.datasets import aasce, rsna, spider, verse
from tasks.errors import UserError

DATASETS: dict[str, ModuleType] = {m.NAME: m for m in (verse, spider, rsna, aasce)}


def adapter(name: str) -> ModuleType:
    """The adapter module of a dataset name; a UserError listing the names otherwise."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")
    return DATASETS[name]
