"""`spinefl export`: a trained model as a MONAI bundle that MONAI's bundle tools run alone.

The bundle (https://docs.monai.io/en/stable/mb_specification.html) holds:

- ``configs/metadata.json``: versions, the label convention, the network's inputs and
  outputs (what ``monai.bundle verify_net_in_out`` checks);
- ``configs/inference.json`` (and ``inference_<modality>.json`` for a model of several
  modalities): the task's own prediction as MONAI transforms (``Task.bundle_configs``);
- ``models/model.pt`` (the state dict) and ``models/model.ts`` (TorchScript, made by
  ``monai.bundle.ckpt_export`` with the configs inside);
- ``docs/README.md``: the task, labels, preprocessing, the run's data, epsilon spent per
  hospital and metrics (read from the tables beside the checkpoint), and how to run it.

The bundle is written to a temporary folder beside ``out`` and moved into place whole;
``--force`` replaces only a bundle (never a folder holding anything else, nor the
checkpoint's own).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import monai
import nibabel
import numpy as np
import pandas as pd
import torch
from monai.bundle import ckpt_export

from tasks.blocks.bundle import VOLUME_MODALITIES
from tasks.checkpoint import load_checkpoint
from tasks.contract import Task
from tasks.errors import UserError
from tasks.files import sweep_temporaries, temporary_name, writable_folder
from tasks.tables import markdown_table

SCHEMA = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
          "meta_schema_20240725.json")
# What MONAI's bundle runner needs beside MONAI, with the least version where not installed.
RUNNER = {"pytorch-ignite": "0.4.11", "fire": "0.6.0"}
# The run tables `spinefl train` and a federation write beside their model.pt.
POOLED, FEDERATED = "metrics.csv", "federated_metrics.csv"


def export_bundle(model_path: Path, out: Path, force: bool = False) -> Path:
    """Write ``model_path``'s MONAI bundle to ``out`` (refused where it exists, unless
    ``force`` and it holds a bundle); return ``out``."""
    task, model, payload = load_checkpoint(model_path)
    configs = task.bundle_configs()
    out = out.resolve()
    _check_target(out, model_path.resolve(), force)
    writable_folder(out.parent)
    sweep_temporaries(out.parent, out.name)  # what a killed export of it left
    staging = temporary_name(out)
    try:
        for name, config in configs.items():
            _write_json(staging / "configs" / name, config)
        metadata = _metadata(task, model_path, payload)
        _write_json(staging / "configs" / "metadata.json", metadata)
        (staging / "models").mkdir()
        torch.save(model.state_dict(), staging / "models" / "model.pt")
        _script(staging)
        (staging / "docs").mkdir()
        (staging / "docs" / "README.md").write_text(_readme(task, model_path, payload,
                                                            metadata, list(configs)))
        _swap(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _check_target(out: Path, model_path: Path, force: bool) -> None:
    """Refuse an ``out`` that is a file, holds anything but a bundle, holds anything
    without ``force``, or holds the checkpoint itself."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if out == model_path.parent or out in model_path.parents:
        raise UserError(f"{out}: holds the checkpoint {model_path.name}; export elsewhere")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"{out}: exists; choose another folder or pass --force to "
                            "replace the bundle in it")
        if not (out / "configs" / "metadata.json").is_file():
            raise UserError(f"{out}: holds something other than a MONAI bundle; --force "
                            "replaces only a bundle")


def _swap(staging: Path, out: Path) -> None:
    """Move the finished bundle to ``out``; a bundle there is set aside until it has."""
    if not out.exists():
        staging.rename(out)
        return
    old = temporary_name(out.with_name(f"replaced-{out.name}"))
    out.rename(old)
    try:
        staging.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _script(bundle: Path) -> None:
    """``models/model.ts``: MONAI's own export of the bundle's network (TorchScript, with the
    configs inside), without its console report (and its warning about trusting configs,
    which spinefl wrote)."""
    logger = logging.getLogger("monai.bundle.scripts")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ckpt_export(net_id="network_def", filepath=str(bundle / "models" / "model.ts"),
                        ckpt_file=str(bundle / "models" / "model.pt"),
                        meta_file=str(bundle / "configs" / "metadata.json"),
                        config_file=str(bundle / "configs" / "inference.json"),
                        bundle_root=str(bundle))
    finally:
        logger.setLevel(level)


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")


def _version(package: str, least: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return least


def _metadata(task: Task, model_path: Path, payload: dict[str, Any]) -> dict[str, Any]:
    """``configs/metadata.json``: MONAI's bundle metadata for the model."""
    settings = task.settings
    classes = {str(k): v for k, v in task.describe_output()["classes"].items()}
    divisor = 2 ** (len(settings["channels"]) - 1)
    spatial = ["*"] * 2 if settings["network"] == "unet2d" else ["*"] * 3
    shape = [f"{divisor}*n" for _ in spatial]
    return {
        "schema": SCHEMA,
        "version": "1.0.0",
        "changelog": {"1.0.0": f"exported by spinefl from {model_path.name}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"nibabel": nibabel.__version__,
                                      **{name: _version(name, least)
                                         for name, least in RUNNER.items()}},
        "name": f"spinefl spine {task.name}",
        "task": f"Spine {task.name} of {', '.join(settings['modalities'])} images "
                f"({settings['labels']} labels)",
        "description": "A MONAI U-Net trained with spinefl (federated spine imaging); "
                       "see docs/README.md for its data, privacy and metrics.",
        "authors": "spinefl",
        "copyright": "the hospitals whose data trained it",
        "data_type": "nibabel",
        "image_classes": "single channel, intensity as stored (CT: HU; MR: any scale)",
        "label_classes": classes,
        "pred_classes": classes,
        "eval_metrics": {k: float(v) for k, v in (payload.get("metrics") or {}).items()
                         if isinstance(v, (int, float))},
        "intended_use": "Research only; not a medical device.",
        "references": ["https://github.com/Project-MONAI/MONAI"],
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": "/".join(
                    m for m in settings["modalities"] if m != "XR"),
                "num_channels": 1, "spatial_shape": shape, "dtype": "float32",
                "value_range": [0, 1], "is_patch_data": settings["network"] == "unet3d",
                "channel_def": {"0": "image"}}},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": len(classes),
                "spatial_shape": shape, "dtype": "float32", "value_range": [0, 1],
                "is_patch_data": settings["network"] == "unet3d",
                "channel_def": {str(i): name for i, name in enumerate(classes.values())}}},
        },
    }


def run_facts(model_path: Path) -> tuple[str, pd.DataFrame]:
    """What the tables beside a checkpoint say of its training: the kind of run, and one
    row per hospital (federated: its last round's samples, epsilon, delta and validation
    metrics) or one row for the run (pooled training: its last epoch)."""
    folder = model_path.parent
    if (folder / FEDERATED).is_file():
        table = pd.read_csv(folder / FEDERATED)
        last = table.sort_values("round").groupby("hospital").tail(1)
        keep = {"hospital": "hospital", "round": "rounds", "train_num-examples": "samples",
                "train_epsilon-total": "epsilon (total)", "train_delta": "delta",
                "central_epsilon": "central epsilon"}
        columns = {**keep, **{c: c.removeprefix("val_") for c in last.columns
                              if c.startswith("val_") and c != "val_num-examples"
                              and c != "val_seconds"}}
        present = [c for c in columns if c in last.columns]
        return "federated", last[present].rename(columns=columns).reset_index(drop=True)
    if (folder / POOLED).is_file():
        table = pd.read_csv(folder / POOLED)
        columns = [c for c in table.columns if c in ("epoch", "epsilon") or c.startswith("val_")]
        return "pooled", table.tail(1)[columns].reset_index(drop=True)
    return "unknown", pd.DataFrame()


def _readme(task: Task, model_path: Path, payload: dict[str, Any], metadata: dict[str, Any],
            configs: list[str]) -> str:
    """``docs/README.md``: what the model is, how it was trained, how to run the bundle."""
    settings = task.settings
    kind, facts = run_facts(model_path)
    labels = pd.DataFrame({"value": list(metadata["label_classes"]),
                           "name": list(metadata["label_classes"].values())})
    extra = configs[1:]
    reads = next(m for m in settings["modalities"] if m in VOLUME_MODALITIES)
    trained = {"federated": f"Federated training, {payload.get('round', '?')} rounds; "
                            "per hospital (its last round):",
               "pooled": f"Pooled training, {payload.get('epoch', '?')} epochs; last epoch:",
               "unknown": "No run table was found beside the checkpoint."}[kind]
    privacy = []
    if "epsilon (total)" in facts or "epsilon" in facts:
        privacy.append("Epsilon is the hospital's patient-level (epsilon, delta) spent in "
                       "total, as its own accountant computed it (DP-SGD, Poisson sampling "
                       "of patients).")
    if "central epsilon" in facts:
        privacy.append("Central epsilon is the hospital-level epsilon of the server's "
                       "central DP after these rounds (every hospital every round).")
    privacy = privacy or ["No differential privacy figures were recorded: trained "
                          "without DP."]
    lines = [
        f"# {metadata['name']}", "",
        metadata["task"] + ". " + metadata["intended_use"], "",
        "## Labels", "", "Predictions are label maps in spinefl's convention "
        "(VerSe values for vertebrae):", "", markdown_table(labels), "",
        "## Network and preprocessing", "",
        f"- MONAI `UNet` ({settings['network']}), channels {settings['channels']}, "
        f"{settings['res_units']} residual unit(s), instance norm.",
        "- Images are read with nibabel, turned to RAS, intensity-scaled (CT: "
        f"{settings['ct_window']} HU to [0, 1]; MR: 0.5-99.5th percentiles to [0, 1]), "
        f"resized to about {settings['spacing']} mm voxels and padded; scores are resized "
        "back onto the input's own grid and affine.",
        "- `models/model.pt` holds the weights (a state dict); `models/model.ts` the "
        "TorchScript network with these configs inside.", "",
        "## Training", "", trained, "",
        *([markdown_table(facts), ""] if len(facts) else []), " ".join(privacy), "",
        "## Run it", "",
        "Needs `monai`, `nibabel`, `pytorch-ignite` and `fire` (no spinefl):", "",
        "```",
        "python -m monai.bundle run --config_file configs/inference.json \\",
        "    --bundle_root . --dataset_dir IMAGES --output_dir PREDICTIONS",
        "```", "",
        "Every `*.nii*` file in IMAGES gets `<stem>_pred.nii.gz` in PREDICTIONS, on its own "
        f"grid. The default config reads {reads}"
        + (f"; for other modalities add the override after it, e.g. `--config_file "
           f"\"['configs/inference.json','configs/{extra[0]}']\"`." if extra else ".")
        + " Radiographs and DICOM series go through `spinefl predict`.", "",
    ]
    return "\n".join(lines)
