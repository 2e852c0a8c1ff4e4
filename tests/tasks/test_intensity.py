"""Cross-modality intensity augmentation: GIN's random networks and the steps around it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.blocks.crops import Crop, crop_loader
from tasks.blocks.intensity import RandGINd
from tasks.blocks.transforms import augmentation, without_metadata
from tasks.config import validate
from tasks.grading.task import GradingTask


def two_tissues(dims: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An image (1, *S) of a bright block ('bone', 0.9) beside a dark one ('disc', 0.3) on
    a background of 0, with the two blocks' masks."""
    shape = (1, *(24,) * dims)
    image = torch.zeros(shape)
    bone, disc = torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)
    bone[(0, slice(4, 11), *(slice(4, 20),) * (dims - 1))] = True
    disc[(0, slice(13, 20), *(slice(4, 20),) * (dims - 1))] = True
    image[bone], image[disc] = 0.9, 0.3
    return image, bone, disc


@pytest.mark.parametrize("dims", [2, 3])
def test_gin_keeps_shape_label_and_energy_and_follows_its_seed(dims):
    image, _, _ = two_tissues(dims)
    label = torch.randint(0, 3, image.shape)
    gin = RandGINd("image", prob=1.0)
    gin.set_random_state(seed=7)
    first = gin({"image": image, "label": label})
    assert first["image"].shape == image.shape and first["image"].dtype == torch.float32
    assert first["label"] is label, "the label is not touched"
    assert float(first["image"].norm()) == pytest.approx(float(image.norm()), rel=1e-5)
    assert not torch.allclose(first["image"], image)
    again = RandGINd("image", prob=1.0)
    again.set_random_state(seed=7)
    torch.testing.assert_close(again({"image": image})["image"], first["image"])
    assert not torch.allclose(gin({"image": image})["image"], first["image"]), "a new draw"


def test_gin_maps_intensities_non_monotonically_inverting_contrast_on_some_draws():
    """What lets a CT-only hospital's model meet MR-like contrast: the random networks map
    the same tissues to other intensities, reversing which is brighter on some draws and
    keeping it on others (a monotone scaling, as the standard steps do, never reverses)."""
    image, bone, disc = two_tissues(2)
    gin = RandGINd("image", prob=1.0)
    gin.set_random_state(seed=0)
    brighter = []
    for _ in range(40):
        out = gin({"image": image})["image"]
        brighter.append(bool(out[bone].mean() > out[disc].mean()))
    assert 5 <= sum(brighter) <= 35, brighter


def test_cross_modality_is_switched_on_by_the_setting_only():
    image, _, _ = two_tissues(2)
    label = torch.zeros_like(image, dtype=torch.long)
    standard = augmentation((24, 24), True)
    cross = augmentation((24, 24), True, intensity="cross-modality")
    assert not any(isinstance(t, RandGINd) for t in standard.transforms)
    assert sum(isinstance(t, RandGINd) for t in cross.transforms) == 1
    outputs = []
    for pipeline in (cross, augmentation((24, 24), True, intensity="cross-modality")):
        pipeline.set_random_state(seed=3)
        with without_metadata():
            outputs.append([pipeline({"image": image, "label": label})["image"]
                            for _ in range(5)])
    for a, b in zip(*outputs, strict=True):  # a run's samples are drawn the same anywhere
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b))


def test_grading_crops_take_the_cross_modality_mappings_when_set():
    """Disc crops (three sagittal slices as channels) under the grading task's own loader:
    GIN and the other mappings only with the setting, drawn the same for the same seeds."""
    image, bone, disc = two_tissues(2)
    crop = image.expand(3, -1, -1).clone()  # three identical slices
    discs = [[Crop("l4_l5", crop, (2, 0), np.zeros(3))]]
    settings = validate({"task": {}}, {"task": GradingTask.keys}, "t")["task"]

    def samples(intensity: str, seed: int = 0) -> list[torch.Tensor]:
        torch.manual_seed(seed)  # the standard noise draws from torch's generator
        loader = crop_loader(discs, {**settings, "intensity_augmentation": intensity}, 1, seed,
                             ["P1"])
        return [loader.dataset.sample(0, 0)["image"] for _ in range(12)]

    standard, cross = samples("standard"), samples("cross-modality")
    assert all(s.shape == c.shape == crop.shape for s, c in zip(standard, cross, strict=True))
    assert all(type(c) is torch.Tensor for c in cross), "no MONAI MetaTensor in a batch"
    # the standard steps scale and shift: bone stays brighter than disc in every sample
    assert all(s[0][bone[0]].mean() > s[0][disc[0]].mean() for s in standard)
    assert any(c[0][bone[0]].mean() < c[0][disc[0]].mean() for c in cross), \
        "GIN reverses the contrast on some draws"
    for a, b in zip(cross, samples("cross-modality"), strict=True):
        torch.testing.assert_close(a, b)
