"""A hospital's own model of a federation: what personalisation leaves at the hospital.

No single global model serves every hospital best when their scanners, modalities or
patients differ, so each hospital may end a run with a model of its own
(``[federation] personalisation``), kept in its data folder and never sent:

- ``ditto`` (Li et al., ICML 2021): every round, after training the global model's update,
  the hospital trains its personal model ``v`` on its own data with the loss plus
  ``(lambda / 2) * ||v - w||^2``, ``w`` the global model it received; ``v`` starts from that
  global model the first time and from the stored one after (a restarted node included);
- ``finetune``: after the last round the global model is fine-tuned on the hospital's own
  training patients and kept only where it scores higher than the global model on its val
  patients (``keeps_tuned``), so it is never worse there than the global one;
- with ``none`` under FedBN, the global model with the hospital's own normalisation layers.

The model is a spinefl checkpoint (``spinefl predict`` takes it as it is) at
``<data>/.spinefl/personal/<run>/model.pt``, owner-only, written whole; ``<run>`` is the
federation's identity, which the coordinator keeps across resumptions. A personal model is
trained without DP noise: under DP it is not covered by the hospital's epsilon and its
metrics are not sent; it must stay where the data are.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tasks.checkpoint import load_checkpoint, save_checkpoint
from tasks.contract import Task
from tasks.errors import UserError
from tasks.files import os_problem

PERSONAL_FOLDER = Path(".spinefl") / "personal"
_IDENTITY = re.compile(r"[0-9a-f]{32}")


def personal_model_path(folder: Path, federation_id: str) -> Path:
    """Where the hospital whose data folder is ``folder`` keeps its model of a federation
    (an identity that is not 32 hex digits, which could name another path, is refused)."""
    if not _IDENTITY.fullmatch(federation_id):
        raise UserError(f"federation id {federation_id!r} is not 32 hexadecimal digits")
    return folder / PERSONAL_FOLDER / federation_id / "model.pt"


def load_personal(path: Path, task: Task) -> tuple[dict[str, torch.Tensor], int] | None:
    """The stored personal model's weights and the round it was stored in (None before the
    first), refused when they were trained for other task settings."""
    if not path.is_file():
        return None
    stored, model, payload = load_checkpoint(path)
    if stored.name != task.name or stored.settings != task.settings:
        raise UserError(f"{path}: a personal model of other task settings than this run's")
    return model.state_dict(), int(payload.get("round", 0))


def save_personal(path: Path, task: Task, model: torch.nn.Module, **extra: Any) -> Path:
    """Write the personal model whole into its owner-only folders (``.spinefl`` is made
    owner-only where it is missing; ``personal`` and the run's folder are made so)."""
    spinefl, personal, run = path.parents[2], path.parents[1], path.parent
    try:
        spinefl.mkdir(exist_ok=True, mode=0o700)
        for folder in (personal, run):
            folder.mkdir(exist_ok=True, mode=0o700)
            os.chmod(folder, 0o700)
    except OSError as e:
        raise os_problem(run, e) from None
    return save_checkpoint(path, task, model, **extra)


def keeps_tuned(task: Task, global_metrics: Mapping[str, float],
                tuned_metrics: Mapping[str, float]) -> bool:
    """Whether the fine-tuned model is kept: only where its val score is higher than the
    global model's (a tie, an unscored or a non-finite score keeps the global model)."""
    tuned = tuned_metrics.get(task.score, math.nan)
    best = global_metrics.get(task.score, math.nan)
    if not math.isfinite(tuned):
        return False
    return not math.isfinite(best) or tuned > best
