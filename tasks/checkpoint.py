"""Checkpoints that carry everything needed to use a model again.

A checkpoint holds the task name and its full settings (network, transforms,
label map), the model's state dict, and whatever the run adds (epoch,
metrics, optimizer state). It holds only tensors and plain Python values and
is loaded with ``weights_only=True``, so opening one never runs code from it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasks.config import ConfigError, validate
from tasks.contract import Task
from tasks.errors import UserError
from tasks.files import atomic, writable_folder
from tasks.registry import task_class

FORMAT = "spinefl-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, task: Task, model: nn.Module, **extra: Any) -> Path:
    """Write task, settings, weights and ``extra`` to ``path`` (atomically, via a temp file)."""
    payload = {"format": FORMAT, "version": VERSION, "task": task.name,
               "settings": task.settings, "output": task.describe_output(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               **extra}
    writable_folder(path.parent)
    serialised = io.BytesIO()  # torch's own file writer turns a full disk into RuntimeError
    torch.save(payload, serialised)
    with atomic(path) as temporary:
        temporary.write_bytes(serialised.getbuffer())
    return path


def load_checkpoint(path: Path) -> tuple[Task, nn.Module, dict[str, Any]]:
    """The task (rebuilt from its stored settings), the model with its weights, and the payload."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for foreign or corrupt files
        raise UserError(f"{path}: not a readable spinefl checkpoint ({e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a spinefl checkpoint")
    version = payload.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise UserError(f"{path}: checkpoint version {version!r}; this spinefl reads versions "
                        f"1 to {VERSION} (a newer spinefl wrote it: upgrade to use it)")
    missing = [key for key in ("task", "settings", "state_dict") if key not in payload]
    if missing:
        raise UserError(f"{path}: a damaged spinefl checkpoint (no {', '.join(missing)})")
    try:
        cls = task_class(str(payload["task"]))
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    try:
        settings = validate({"task": payload["settings"]}, {"task": cls.keys}, str(path))["task"]
    except ConfigError as e:
        raise UserError(f"{path}: stored task settings are invalid ({e})") from None
    task = cls(settings)
    model = task.build_model()
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as e:
        reason = str(e).splitlines()[0]
        raise UserError(f"{path}: its weights do not fit its task's network ({reason})") from None
    return task, model, payload


def starting_weights(path: Path, task: Task) -> dict[str, torch.Tensor]:
    """The weights of the checkpoint a run starts from (``train.init_checkpoint``), refused
    unless it was trained for the same task with the same settings."""
    stored, model, _ = load_checkpoint(path)
    if stored.name != task.name or stored.settings != task.settings:
        raise UserError(f"{path}: its task settings differ from the config's [task] (a "
                        "starting model must be trained with the same [task] section)")
    return model.state_dict()
