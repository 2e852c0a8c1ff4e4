"""Scanners of the small phantom cohorts the fixtures and the learning tests generate."""

from __future__ import annotations

CT_MR_SCANNERS = [
    {"name": "ct-a", "modality": "CT", "spacing": [1.5, 1.5, 2.0], "fov": 120.0, "noise": 15.0},
    {"name": "mr-b", "modality": "MR", "sequences": ["T2"], "spacing": [1.5, 1.5, 3.0],
     "fov": 120.0, "scale": 800.0, "noise": 0.03, "bias": 0.2},
    {"name": "ct-c", "modality": "CT", "spacing": [1.2, 1.2, 2.5], "fov": 120.0, "noise": 30.0,
     "offset": -20.0, "orientation": "LPS"},
]


LEARNING_SCANNERS = [
    {**CT_MR_SCANNERS[0]},
    {**CT_MR_SCANNERS[1], "sequences": ["T1", "T2"]},
    {**CT_MR_SCANNERS[2]},
]


XRAY_SCANNER = {"name": "xr-a", "modality": "XR", "views": ["AP"], "spacing": [1.2, 1.2, 1.2],
                "noise": 0.03, "blur": 0.8}
