"""Benchmark: how a segmentation model trained on phantoms transfers to real spine anatomy (VerSe).

The VerSe sample annotation (sub-verse004: a real vertebra mask, T9-L5, read from
../shared/fixtures/verse, never copied into the repository) comes without its
CT, so the CT is rendered from the mask: soft tissue at 40 HU everywhere, the
vertebrae cancellous bone inside and a brighter cortical shell on their boundary
(the mask minus its binary erosion), then a Gaussian point spread and Gaussian
noise. Four scanners are rendered, each seeded (the script is deterministic): a
sharp low-noise one, a noisy one, an osteoporotic one (lower bone HU) and one
with a calibration offset. The rendered CT keeps the mask's own affine (its real
PIR orientation, slight obliquity and 1 x 1 x 2 mm spacing). Each model
predicts on each rendering through the task's prediction API; its vertebra
classes, as one binary mask, are scored against the real mask > 0 (Dice,
precision, recall), written as a CSV and a PNG of a mid-sagittal slice.

Limits: the anatomy's shape, orientation and spacing are real but the
intensities are synthetic, and the image holds only vertebrae in uniform soft
tissue (no discs, canal, muscles, fat, ribs or other organs, no bone texture),
so it tests shape and geometry, not a real CT's appearance; one patient; the
labels cover T9-L5 only (a model of level classes, T12-S, misses T9-T11 by
design).

    .venv/bin/python benchmarks/verse_transfer.py --model runs/public/model.pt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.lines import Line2D
from rich.console import Console
from rich.table import Table
from scipy import ndimage
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.checkpoint import load_checkpoint  # noqa: E402
from tasks.contract import Task  # noqa: E402
from tasks.device import select_device  # noqa: E402
from tasks.errors import UserError  # noqa: E402
from tasks.imageio import Volume, load_image, reorient  # noqa: E402
from tasks.stops import handle_stops  # noqa: E402

MASK = "sub-verse004_seg-vert_msk.nii.gz"
SOFT_TISSUE = 40.0  # HU
DISPLAY_WINDOW = (-250.0, 1250.0)  # HU


@dataclass(frozen=True)
class Scanner:
    """One rendering: bone HU, point-spread sigma (mm), noise sigma (HU), HU offset, seed."""

    name: str
    cancellous: float
    cortical: float
    blur: float
    noise: float
    offset: float
    seed: int


SCANNERS = (
    Scanner("sharp", 230.0, 1050.0, 0.5, 8.0, 0.0, 1),
    Scanner("noisy", 230.0, 1050.0, 0.8, 40.0, 0.0, 2),
    Scanner("osteoporotic", 90.0, 750.0, 0.6, 15.0, 0.0, 3),
    Scanner("offset", 230.0, 1050.0, 0.6, 15.0, -60.0, 4),
)


def render(bone: Volume, scanner: Scanner) -> Volume:
    """A CT (HU) of a binary bone mask on the mask's own grid and affine."""
    mask = bone.array
    # Bone cut by the image's edge continues outside it: no cortex drawn there.
    shell = mask & ~ndimage.binary_erosion(mask, border_value=1)
    hu = np.full(mask.shape, SOFT_TISSUE, dtype=np.float32)
    hu[mask] = scanner.cancellous
    hu[shell] = scanner.cortical
    hu = ndimage.gaussian_filter(hu, scanner.blur / np.asarray(bone.spacing))
    hu += np.random.default_rng(scanner.seed).normal(0.0, scanner.noise, hu.shape)
    return Volume((hu + scanner.offset).astype(np.float32), bone.affine, "CT")


def predicted_vertebrae(task: Task, model: nn.Module, image: Volume,
                        device: torch.device) -> np.ndarray:
    """The model's vertebra classes, as one binary mask on the image's grid."""
    output = task.predict(model, image, device, {})
    classes = task.table.from_values(output.volume.array)
    vertebra = [i for i, s in enumerate(task.table.structures) if s == "vertebra"]
    return np.isin(classes, vertebra)


def overlap_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice, precision and recall of two binary masks (precision NaN when nothing is predicted)."""
    both = np.count_nonzero(predicted & truth)
    found, real = np.count_nonzero(predicted), np.count_nonzero(truth)
    return {"dice": 2 * both / (found + real),
            "precision": both / found if found else float("nan"),
            "recall": both / real}


def load_model(path: Path) -> tuple[Task, nn.Module]:
    """A segmentation checkpoint's task and model (UserError for anything else)."""
    task, model, _ = load_checkpoint(path)
    if task.name != "segmentation":
        raise UserError(f"{path}: a {task.name} model, not a segmentation model")
    return task, model


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file next to it, then rename it into place."""
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    temporary.replace(path)


def sagittal(volume: Volume, index: int | None = None) -> tuple[np.ndarray, int]:
    """A sagittal slice (rows superior to inferior, columns anterior to posterior) and its
    index along right-left; by default through the centre of mass of the volume's array."""
    array = reorient(volume, "IPR").array
    if index is None:
        index = round(ndimage.center_of_mass(array)[2])
    return array[:, :, index], index


def outline(axis: plt.Axes, mask: np.ndarray, color: str) -> None:
    """Draw a binary mask's outline (nothing for an empty mask)."""
    if mask.any():
        axis.contour(mask, levels=[0.5], colors=color, linewidths=0.7)


def plot(bone: Volume, images: dict[str, Volume], predictions: dict[tuple[str, str], np.ndarray],
         rows: list[dict[str, object]], path: Path) -> None:
    """One mid-sagittal panel per model and scanner: the rendered CT, the real mask's outline
    (green) and the prediction's (red)."""
    truth, index = sagittal(bone)
    models = list(dict.fromkeys(name for name, _ in predictions))
    dice = {(row["model"], row["scanner"]): row["dice"] for row in rows}
    figure, axes = plt.subplots(len(models), len(images), squeeze=False,
                                figsize=(2.6 * len(images), 5.2 * len(models)))
    for r, model in enumerate(models):
        for c, (scanner, image) in enumerate(images.items()):
            axis = axes[r, c]
            axis.imshow(sagittal(image, index)[0], cmap="gray", vmin=DISPLAY_WINDOW[0],
                        vmax=DISPLAY_WINDOW[1])
            outline(axis, truth, "lime")
            predicted = Volume(predictions[model, scanner], bone.affine)
            outline(axis, sagittal(predicted, index)[0], "red")
            axis.set_title(f"{scanner}: Dice {dice[model, scanner]:.3f}", fontsize=9)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[r, 0].set_ylabel(model, fontsize=8)
    handles = [Line2D([], [], color="lime", label="real mask (VerSe)"),
               Line2D([], [], color="red", label="predicted vertebra")]
    figure.legend(handles=handles, loc="lower center", ncol=2, fontsize=9)
    figure.suptitle(f"VerSe sub-verse004, sagittal slice {index} (rendered CT)", fontsize=10)
    figure.tight_layout(rect=(0, 0.05, 1, 0.96))
    replace_atomically(path, lambda temporary: figure.savefig(temporary, dpi=110, format="png"))
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, nargs="+",
                        default=[ROOT / "runs" / "public" / "model.pt"])
    parser.add_argument("--fixtures", type=Path,
                        default=ROOT.parent / "shared" / "fixtures" / "verse")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-verse"))
    args = parser.parse_args()
    handle_stops()  # SIGTERM and SIGHUP too: every process it started is stopped
    console = Console()
    if not (args.fixtures / MASK).is_file():
        console.print(f"{args.fixtures / MASK}: VerSe fixture not found", highlight=False)
        sys.exit(2)
    try:
        models = {str(path): load_model(path) for path in args.model}
    except UserError as e:
        console.print(f"error: {e}", highlight=False, soft_wrap=True)
        sys.exit(2)

    mask = load_image(args.fixtures / MASK)
    bone = Volume(np.rint(mask.array) > 0, mask.affine)
    images = {scanner.name: render(bone, scanner) for scanner in SCANNERS}
    device = select_device("auto")
    rows: list[dict[str, object]] = []
    predictions: dict[tuple[str, str], np.ndarray] = {}
    for name, (task, model) in models.items():
        model.to(device)
        for scanner, image in images.items():
            try:
                predicted = predicted_vertebrae(task, model, image, device)
            except UserError as e:  # e.g. a model not trained on CT
                console.print(f"error: {name}: {e}", highlight=False, soft_wrap=True)
                sys.exit(2)
            predictions[name, scanner] = predicted
            rows.append({"model": name, "scanner": scanner,
                         **overlap_scores(predicted, bone.array)})

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    replace_atomically(out / "verse_transfer.csv",
                       lambda temporary: frame.to_csv(temporary, index=False))
    plot(bone, images, predictions, rows, out / "verse_transfer.png")
    table = Table(title=f"Phantom-trained models on rendered CT of real anatomy (VerSe "
                        f"sub-verse004, T9-L5) on {device}")
    for column in ("model", "scanner", "Dice", "precision", "recall"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row["model"]), str(row["scanner"]),
                      *(f"{row[k]:.3f}" for k in ("dice", "precision", "recall")))
    console.print(table)
    console.print(f"wrote {out / 'verse_transfer.csv'} and {out / 'verse_transfer.png'}")


if __name__ == "__main__":
    main()
