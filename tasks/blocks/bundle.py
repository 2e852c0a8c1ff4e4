"""The segmenter's prediction as a MONAI bundle's inference config: the steps of
``Segmenter.classes`` (orientation, intensity, resampling, padding, slice-by-slice or
sliding-window scores, then back onto the input's grid) written as MONAI transforms,
inferers and handlers, which ``python -m monai.bundle run`` executes without spinefl.

Every value the steps take comes from the same settings and constants spinefl's own
prediction uses (``unet_arguments``, ``intensity_arguments``, ``inference``'s batch
sizes); one step has no MONAI transform of its own: resizing to the grid that
``transforms.target_shape`` computes from each image's spacing: a ``Lambdad`` sets that
size on the MONAI ``Resized`` that follows it (which ``Invertd`` undoes as any other).
"""

from __future__ import annotations

from typing import Any

from tasks.blocks.classes import ClassTable
from tasks.blocks.inference import SLICE_BATCH, WINDOW_BATCH, WINDOW_OVERLAP
from tasks.blocks.model import unet_arguments
from tasks.blocks.transforms import intensity_arguments
from tasks.errors import UserError

# The modalities a bundle reads: 3D volumes (radiographs go through `spinefl predict`).
VOLUME_MODALITIES = ("CT", "MR")

# transforms.target_shape's rule, per image: the canonical grid's size and spacing (pixdim),
# set on the one Resized that follows (an item at a time: DataLoader worker processes each
# hold their own copy; loading in threads would not be safe).
_SIZE = ("$lambda x: setattr(@resize.resizer, 'spatial_size', [max(1, round(n * s / t)) for n, "
         "s, t in zip(x.shape[1:], x.pixdim.tolist(), @spacing)]) or x")


def intensity_step(modality: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The config item of the modality's intensity transform (a dictionary transform)."""
    name, arguments = intensity_arguments(modality, settings["ct_window"])
    return {"_target_": f"{name}d", "keys": "image", **arguments}


def inference_config(settings: dict[str, Any], table: ClassTable, modality: str
                     ) -> dict[str, Any]:
    """``configs/inference.json`` for a segmenter reading ``modality`` volumes: every NIfTI
    in ``dataset_dir`` predicted into ``output_dir`` as ``<stem>_pred.nii.gz`` (the label
    convention's values, int16, the input's grid and affine)."""
    two_d = settings["network"] == "unet2d"
    divisor = 2 ** (len(settings["channels"]) - 1)
    patch = [*settings["patch_size"][:2], -1] if two_d else list(settings["patch_size"])
    inferer = ({"_target_": "SliceInferer", "roi_size": [-1, -1], "spatial_dim": 2,
                "sw_batch_size": SLICE_BATCH} if two_d else
               {"_target_": "SlidingWindowInferer", "roi_size": patch,
                "sw_batch_size": WINDOW_BATCH, "overlap": WINDOW_OVERLAP})
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, '*.nii*')))",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "UNet", **unet_arguments(settings, table.count)},
        "network": "$@network_def.to(@device)",
        "spacing": list(settings["spacing"]),
        "intensity": intensity_step(modality, settings),
        "resize": {"_target_": "Resized", "keys": "image", "spatial_size": [1, 1, 1],
                   "mode": "trilinear"},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "reader": "NibabelReader",
             "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            "@intensity",
            {"_target_": "Lambdad", "keys": "image", "func": _SIZE},
            "@resize",
            {"_target_": "SpatialPadd", "keys": "image", "spatial_size": patch},
            {"_target_": "DivisiblePadd", "keys": "image",
             "k": [divisor, divisor, 1] if two_d else divisor},
        ]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1,
                       "shuffle": False, "num_workers": 0},
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing",
             "orig_keys": "image", "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "MapLabelValued", "keys": "pred",
             "orig_labels": list(range(table.count)), "target_labels": list(table.values)},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir",
             "output_postfix": "pred", "output_ext": ".nii.gz", "output_dtype": "$numpy.int16",
             "resample": False, "separate_folder": False, "squeeze_end_dims": True},
        ]},
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
             "load_dict": {"model": "@network"}, "map_location": "@device"},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device",
                      "val_data_loader": "@dataloader", "network": "@network",
                      "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


def bundle_configs(settings: dict[str, Any], table: ClassTable) -> dict[str, dict[str, Any]]:
    """The configs of a segmenter's bundle, by file name: ``inference.json`` for its first
    volume modality, and ``inference_<modality>.json`` for each other one, overriding the
    intensity step (given after ``inference.json`` to ``monai.bundle run``)."""
    modalities = [m for m in settings["modalities"] if m in VOLUME_MODALITIES]
    if not modalities:
        raise UserError(f"a model of {', '.join(settings['modalities'])} images has no MONAI "
                        "bundle: bundles read CT and MR volumes (use `spinefl predict`)")
    first, *others = modalities
    return {"inference.json": inference_config(settings, table, first),
            **{f"inference_{m.lower()}.json": {"intensity": intensity_step(m, settings)}
               for m in others}}
