"""`spinefl predict`: run a checkpoint on images and write its outputs with their geometry.

Inputs are a NIfTI/MHA file, a folder of them, or a folder of DICOM series. Outputs
mirror the input tree: ``<in>/P0001/ct.nii.gz`` becomes ``<out>/P0001/ct<suffix>``
(a DICOM series: ``<out>/<its folder>/series-<uid><suffix>``), with the task's
suffix: a mask NIfTI with exactly its input's shape and affine (segmentation), or a
JSON record in its input's voxel coordinates (centroids, grades, Cobb angles). A
``labels.json`` beside them says what the values mean; ``predictions.csv`` lists
every input with what happened to it, kept across batches into the same folder.
Masks and label maps beside the images (``*_mask``, ``*_seg``, ``*_label(s)``,
``*_pred``) are reported and skipped, a bad input is reported and the others go on.
Nothing is ever written inside the input folder. A task that takes extra inputs per
image declares them (``Task.inputs``: name and file suffix) and gets each from the
folder given for that name (disc grading: ``centroids``, a folder of
``<stem>_ctd.json`` files, e.g. a labelling model's predictions).

An image's modality is ``--modality`` when given, else its DICOM header's, else the
model's when it reads one only, else a word of its file or folder names (``ct``,
``mr``/``mri``/``t1``/``t2``, ``xr``/``cr``/``dx``: ``tasks.imageio.modality_in_name``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.progress import track
from torch import nn

from client.dicom import DicomFile, load_series, scan_folder
from client.dicom_outputs import write_report, write_segmentation
from tasks.checkpoint import load_checkpoint
from tasks.contract import Task
from tasks.device import select_device
from tasks.errors import UserError
from tasks.files import write_table, write_text
from tasks.imageio import (
    ITK_SUFFIXES,
    NIFTI_SUFFIXES,
    Volume,
    has_suffix,
    load_image,
    modality_in_name,
)
from tasks.labels import colour_table
from tasks.locks import folder_lock
from tasks.outputs import MaskOutput, RecordOutput
from tasks.plots import plot_overlay
from tasks.points import read_points

# Stems of files that hold a mask or label map, not an image.
LABEL_STEMS = re.compile(r"_(mask|msk|seg|label|labels|pred)$", re.IGNORECASE)


@dataclass
class Input:
    """One image to predict on: a display name, where its output goes (relative to the output
    folder, without the suffix), its file or DICOM series, and why it is skipped (empty: it is
    not). ``sources``: a loaded series' files in slice order."""

    name: str
    place: Path
    path: Path | None = None
    series: list[DicomFile] | None = None
    skip: str = ""
    sources: list[Path] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return self.place.name

    def load(self) -> Volume:
        """The image (a series: its volume, remembering its ordered files)."""
        if self.series is None:
            return load_image(self.path)
        built = load_series(self.series)
        self.sources = built.files
        return built.volume

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
    """Images under ``path``: the file itself, or a folder's image files and DICOM series
    (hidden files and folders are passed over)."""
    if path.is_file():
        yield Input(str(path), Path(_stem(path)), path)
        return
    if not path.is_dir():
        raise UserError(f"{path}: input not found")
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if file.is_file() and has_suffix(file, NIFTI_SUFFIXES + ITK_SUFFIXES):
            place = relative.parent / _stem(file)
            skip = "a mask or label map, not an image" if LABEL_STEMS.search(place.name) else ""
            yield Input(str(file), place, file, skip=skip)
    series, _ = scan_folder(path)
    for uid, files in series.items():
        folder = files[0].path.parent
        yield Input(f"{folder} (series {uid})", folder.relative_to(path) / f"series-{uid}",
                    series=files)


def check_output_folder(input_path: Path, out: Path) -> None:
    """Refuse an output folder inside the input folder (outputs would mix with the user's
    images and be predicted on by the next run)."""
    source, target = input_path.resolve(), out.resolve()
    if source.is_dir() and (target == source or source in target.parents):
        raise UserError(f"{out}: inside the input folder {input_path}; predictions are never "
                        "written among the inputs: choose an output folder outside it")


def predict(model_path: Path, input_path: Path, out: Path, modality: str | None = None,
            device_name: str = "auto", force: bool = False,
            extra: Mapping[str, Path] | None = None, qc: bool = False,
            dicom: bool = False) -> pd.DataFrame:
    """Predict every input; return this batch's report (input, output, status, reason).
    ``qc`` adds ``<stem>_qc.png`` beside each output: the prediction over its image; ``dicom``
    adds, for a DICOM series, ``<stem>_seg.dcm`` (a label map) or ``<stem>_sr.dcm`` (a record's
    findings), with the report's ``dicom`` column naming it or saying why there is none."""
    task, model, _ = load_checkpoint(model_path)
    check_output_folder(input_path, out)
    inputs = list(find_inputs(input_path))
    if not inputs:
        raise UserError(f"{input_path}: no NIfTI, MHA or DICOM image found")
    described = task.describe_output()
    labels = json.dumps(described, indent=2)
    with folder_lock(out):
        earlier = out / "labels.json"
        if earlier.is_file() and earlier.read_text() != labels and not force:
            raise UserError(f"{out}: holds predictions of a model with other outputs "
                            f"({earlier}); choose another folder or pass --force")
        device = select_device(device_name)
        model.to(device)
        report = [_predict_one(task, model, item, out, modality, device, force, extra or {},
                               qc, dicom) for item in track(inputs, description="Predicting")]
        write_text(earlier, labels)
        if "classes" in described:
            write_text(out / "labels.ctbl", colour_table(described["classes"]))
        frame = pd.DataFrame(report)
        table = out / "predictions.csv"
        if table.is_file():
            kept = pd.read_csv(table, keep_default_na=False)
            kept = kept[~kept["input"].isin(frame["input"])]
            frame = pd.concat([kept, frame], ignore_index=True)
        write_table(frame, table)
    return pd.DataFrame(report)


def _qc(volume: Volume, output: MaskOutput | RecordOutput, path: Path, name: str) -> None:
    """The prediction over its image: a label map in the convention's colours, or the
    record's points with their labels and its caption."""
    if isinstance(output, MaskOutput):
        plot_overlay(volume, path, name, labels=output.volume.array)
    else:
        plot_overlay(volume, path, f"{name}  {output.caption}".strip(), points=output.points)


def _dicom_object(task: Task, output: MaskOutput | RecordOutput, item: Input,
                  folder: Path) -> str:
    """Write a prediction's DICOM object into ``folder``; its path, or why there is none."""
    if not item.sources:
        return "none: the input is not a DICOM series"
    try:
        if isinstance(output, MaskOutput):
            return str(write_segmentation(output.volume.array,
                                          task.describe_output()["classes"], task.name,
                                          item.sources, folder / f"{item.stem}_seg.dcm"))
        if output.findings:
            return str(write_report(output.findings, task.name, item.sources,
                                    folder / f"{item.stem}_sr.dcm"))
    except UserError as e:
        return f"none: {e}"
    except (ValueError, AttributeError) as e:  # highdicom refusing the source's content
        return f"none: the source series cannot be referenced ({str(e).splitlines()[0]})"
    return f"none: a {task.name} record has no measurements or grades to report"


def _predict_one(task: Task, model: nn.Module, item: Input, out: Path, modality: str | None,
                 device: torch.device, force: bool, extra: Mapping[str, Path],
                 qc: bool = False, dicom: bool = False) -> dict[str, str]:
    """Predict one input into ``out``; its report row."""
    target = out / item.place.parent / f"{item.stem}{task.output_suffix}"
    entry = {"input": item.name, "output": str(target), "status": "written", "reason": ""}
    if dicom:
        entry["dicom"] = ""
    if item.skip:
        return {**entry, "output": "", "status": "skipped", "reason": item.skip}
    if target.exists() and not force:
        return {**entry, "status": "skipped", "reason": "output exists (pass --force to overwrite)"}
    try:
        volume = item.load()
        only = task.modalities[0] if len(task.modalities) == 1 else None
        named = modality_in_name(item.place.parent / Path(item.name).name)[0] or None
        volume.modality = modality or volume.modality or only or named
        if volume.modality is None:
            raise UserError(f"{item.name}: pass --modality (this model takes "
                            f"{', '.join(task.modalities)}; the file name does not say)")
        output = task.predict(model, volume, device, item.extra(task.inputs, extra))
        if qc:
            _qc(volume, output, out / item.place.parent / f"{item.stem}_qc.png", item.name)
        if dicom:
            entry["dicom"] = _dicom_object(task, output, item, out / item.place.parent)
        if isinstance(output, MaskOutput) and volume.stored_shape is not None:
            output.volume.array = output.volume.array.reshape(volume.stored_shape)
        output.save(target)
    except UserError as e:
        return {**entry, "output": "", "status": "failed", "reason": str(e)}
    return entry
