"""`spinefl predict`: run a checkpoint on images and write its outputs with their geometry.

Inputs are a NIfTI/MHA file, a folder of them, or a folder of DICOM series.
Each output is named after its input with the task's suffix: a mask NIfTI
with exactly its input's shape and affine (segmentation), or a JSON record in
its input's voxel coordinates (centroids, grades, Cobb angles); a
``labels.json`` beside them says what the values mean, and ``predictions.csv``
lists every input with what happened to it. A bad input is reported and
skipped; the others go on. A task that takes extra inputs per image declares
them (``Task.inputs``: name and file suffix) and gets each from the folder
given for that name (disc grading: ``centroids``, a folder of
``<stem>_ctd.json`` files, e.g. a labelling model's predictions).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from rich.progress import track

from client.dicom import load_series, scan_folder
from tasks.checkpoint import load_checkpoint
from tasks.device import select_device
from tasks.errors import UserError
from tasks.imageio import ITK_SUFFIXES, NIFTI_SUFFIXES, Volume, has_suffix, load_image
from tasks.points import read_points


@dataclass
class Input:
    """One image to predict on: a display name, an output stem, and how to load it."""

    name: str
    stem: str
    load: Callable[[], Volume]

    def extra(self, inputs: Mapping[str, str], folders: Mapping[str, Path]) -> dict[str, Any]:
        """This input's declared extra inputs (name -> file suffix) that ``folders`` hold, as
        ``<folder>/<stem><suffix>`` JSON, by name."""
        found = {}
        for name, suffix in inputs.items():
            path = folders[name] / f"{self.stem}{suffix}" if name in folders else None
            if path is not None and path.is_file():
                found[name] = read_points(path)
        return found


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, *ITK_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_inputs(path: Path) -> Iterator[Input]:
    """Images under ``path``: the file itself, or a folder's image files and DICOM series."""
    if path.is_file():
        yield Input(str(path), _stem(path), lambda: load_image(path))
        return
    if not path.is_dir():
        raise UserError(f"{path}: input not found")
    for file in sorted(path.rglob("*")):
        if file.is_file() and has_suffix(file, NIFTI_SUFFIXES + ITK_SUFFIXES):
            yield Input(str(file), _stem(file), lambda file=file: load_image(file))
    series, _ = scan_folder(path)
    for uid, files in series.items():
        yield Input(f"{files[0].path.parent} (series {uid})", f"series-{uid}",
                    lambda files=files: load_series(files))


def predict(model_path: Path, input_path: Path, out: Path, modality: str | None = None,
            device_name: str = "auto", force: bool = False,
            extra: Mapping[str, Path] | None = None) -> pd.DataFrame:
    """Predict every input; return the report (input, output, status, reason)."""
    task, model, _ = load_checkpoint(model_path)
    device = select_device(device_name)
    model.to(device)
    trained_on = task.settings.get("modalities", [])
    inputs = list(find_inputs(input_path))
    if not inputs:
        raise UserError(f"{input_path}: no NIfTI, MHA or DICOM image found")
    out.mkdir(parents=True, exist_ok=True)
    report = []
    for item in track(inputs, description="Predicting"):
        target = out / f"{item.stem}{task.output_suffix}"
        entry = {"input": item.name, "output": str(target), "status": "written", "reason": ""}
        if target.exists() and not force:
            entry.update(status="skipped", reason="output exists (pass --force to overwrite)")
            report.append(entry)
            continue
        try:
            volume = item.load()
            volume.modality = modality or volume.modality or (
                trained_on[0] if len(trained_on) == 1 else None)
            if volume.modality is None:
                raise UserError(f"{item.name}: pass --modality (this model takes "
                                f"{', '.join(trained_on)})")
            task.predict(model, volume, device, item.extra(task.inputs, extra or {})).save(target)
        except UserError as e:
            entry.update(status="failed", reason=str(e), output="")
        report.append(entry)
    (out / "labels.json").write_text(json.dumps(task.describe_output(), indent=2))
    frame = pd.DataFrame(report)
    frame.to_csv(out / "predictions.csv", index=False)
    return frame
