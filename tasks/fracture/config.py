"""Settings of the fracture grading task (the ``[task]`` section of a run config)."""

from __future__ import annotations

from tasks.blocks.settings import network_keys
from tasks.config import Key

KEYS = (
    Key("modalities", "list[str]", ["CT"], "Manifest modalities this model trains on and "
        "accepts.", choices=("CT", "MR")),
    Key("crop", "list[float]", [64.0, 96.0], "Sagittal crop around each vertebra centroid in "
        "mm: antero-posterior, then cranio-caudal extent (it holds the body, both discs and "
        "both neighbours, whose heights a fracture is judged against).", length=2,
        minimum=8.0),
    Key("pixel", "float", 2.0, "Pixel size of the crops in mm.", minimum=0.1),
    Key("slab", "float", 4.0, "Lateral distance (mm) of the two outer sagittal slices from "
        "the middle one; the three slices are the network's input channels.", minimum=0.0),
    *network_keys({}, ("ct_window",)),
    Key("init_features", "int", 16, "DenseNet features after the stem.", minimum=1),
    Key("growth_rate", "int", 8, "DenseNet growth rate.", minimum=1),
    Key("blocks", "list[int]", [3, 3, 3], "DenseNet layers per dense block.", minimum=1),
    Key("fracture_weight", "float", 4.0, "Weight of a fractured vertebra (Genant 1-3) in the "
        "loss against 1 for an intact one: fractures are rare.", above=0.0),
    Key("augment", "bool", True, "Random intensity scale/shift, noise and lateral flips in "
        "training."),
    *network_keys({}, ("intensity_augmentation",)),
)
