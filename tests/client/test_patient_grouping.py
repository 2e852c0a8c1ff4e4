"""Several samples per patient in one DP-SGD step (k slices x K augmentations, their gradients
averaged and clipped together) and DP on part of a network: the sensitivity bound on real
per-sample gradients, what an item holds, what k = K = 1 reduces to, frozen parameters."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from client.privacy import PrivateRound
from tasks.blocks.dataset import PatientDataset
from tasks.blocks.model import UNET_PARTS
from tasks.contract import PatientDraws
from tests.helpers.messages import task

PATIENTS = 3


class Samples(Dataset):
    """Samples that say where they come from: sample (volume, z) of a 32 x 32 image whose
    pixels are seeded by (volume, z), plus a random augmentation offset, and its labels."""

    def __init__(self, volumes: int = 5, slices: int = 4) -> None:
        self.index = [(v, z) for v in range(volumes) for z in range(slices)]
        self.augmentation = random.Random(7)

    def sample(self, volume: int, z: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(100 * volume + z)
        image = torch.rand(1, 32, 32, generator=generator) + self.augmentation.random()
        return {"image": image, "label": (image > 1.0).long() + (image > 1.3).long(),
                "where": torch.tensor([volume, z])}


def patients_of_volumes() -> list[str]:
    return ["p0", "p0", "p1", "p2", "p2"]  # patients 0 and 2 have two images each


@pytest.mark.parametrize(("slices", "augmentations"), [(1, 1), (3, 1), (2, 3)])
def test_an_item_is_k_draws_of_one_patient_each_augmented_k_times(slices, augmentations):
    draws = PatientDraws(slices, augmentations)
    dataset = PatientDataset(Samples(), patients_of_volumes(), seed=0, draws=draws)
    own = {"p0": {0, 1}, "p1": {2}, "p2": {3, 4}}
    for index, patient in enumerate(dataset.patients):
        item = dataset[index]
        assert item["image"].shape == (draws.size, 1, 32, 32)
        volumes = set(item["where"][:, 0].tolist())
        assert volumes <= own[patient]
        # the K augmentations of a draw come from one slice, differently augmented
        where = item["where"].reshape(slices, augmentations, 2)
        assert (where == where[:, :1]).all()
        if augmentations > 1:
            assert not torch.equal(item["image"][0], item["image"][1])


def test_one_draw_and_one_augmentation_is_one_random_sample_of_the_patient():
    """k = K = 1: each item is the single sample a random choice of the patient's samples
    gives (the same random stream as drawing it by hand), stacked on an axis of one."""
    dataset = PatientDataset(Samples(), patients_of_volumes(), seed=3, draws=PatientDraws())
    by_hand, samples = random.Random(3), Samples()
    for index in (0, 2, 1, 0):
        choice = by_hand.choice(dataset.choices[index])
        expected = samples.sample(*choice)
        item = dataset[index]
        assert item["image"].shape[0] == 1
        torch.testing.assert_close(item["image"][0], expected["image"])


def _sample_gradients(model, loss_of, batch) -> list[list[torch.Tensor]]:
    """Each sample's gradient of its own loss (plain autograd, one sample at a time)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    return [list(torch.autograd.grad(loss_of(model, {k: v[i:i + 1] for k, v in batch.items()}),
                                     parameters)) for i in range(len(batch["image"]))]


@pytest.mark.parametrize(("slices", "augmentations"), [(1, 1), (3, 1), (2, 3)])
def test_no_patient_contributes_more_than_one_clipped_gradient(slices, augmentations):
    """On the real U-Net and loss, with a clipping norm small enough to bite: after grouping,
    each patient's gradient is the mean of its k x K samples' own gradients, and the step
    (no noise, SGD, lr 1) is minus the sum of those means clipped to C, over the expected
    patients per step, so that no patient moves the model by more than C / B."""
    draws = PatientDraws(slices, augmentations)
    segmentation = task()
    torch.manual_seed(0)
    model = segmentation.build_model()
    dataset = PatientDataset(Samples(), patients_of_volumes(), seed=0, draws=draws)
    stacked = [dataset[i] for i in range(PATIENTS)]
    batch = {k: torch.cat([item[k] for item in stacked]) for k in ("image", "label")}

    def loss_of(net, b):
        return segmentation.batch_loss(net, b, torch.device("cpu"))

    per_sample = _sample_gradients(model, loss_of, batch)
    means = [[torch.stack([per_sample[p * draws.size + s][j] for s in range(draws.size)])
              .mean(0) for j in range(len(per_sample[0]))] for p in range(PATIENTS)]
    clip = 0.05
    norms = [torch.sqrt(sum((g ** 2).sum() for g in mean)) for mean in means]
    assert all(n > clip for n in norms)  # the bound is what limits each patient
    before = [p.detach().clone() for p in model.parameters()]
    loader = DataLoader(dataset, batch_size=PATIENTS)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    with PrivateRound(model, optimizer, loader, 0.0, clip, "hooks",
                      per_patient=draws.size) as private:
        private.optimizer.zero_grad()
        loss_of(private.model, batch).backward()
        private.group_gradients()
        grouped = [p.grad_sample.clone() for p in model.parameters()]
        private.optimizer.step()
    # The batched pass and the one-sample passes convolve with different CPU kernels (float32
    # sums in other orders): each tensor is compared within 1% of its own largest element,
    # and a tensor whose gradient is nothing but noise (a bias before a norm) within a
    # millionth of the patient's whole gradient. Another patient's gradient, a lost draw or
    # a zeroed tensor is off by far more.
    def tolerance(tensor: torch.Tensor, whole: float) -> float:
        return max(1e-2 * float(tensor.abs().max()), 1e-6 * whole)

    scales = [max(float(g.abs().max()) for g in mean) for mean in means]
    for j, found in enumerate(grouped):
        assert found.shape[0] == PATIENTS
        for p in range(PATIENTS):
            torch.testing.assert_close(found[p], means[p][j], rtol=1e-3,
                                       atol=tolerance(means[p][j], scales[p]))
    expected_patients = private.release.sample_rate * PATIENTS
    steps = [sum(means[p][j] * min(1.0, clip / float(norms[p])) for p in range(PATIENTS))
             / expected_patients for j in range(len(before))]
    largest = max(float(step.abs().max()) for step in steps)
    for old, new, step in zip(before, model.parameters(), steps, strict=True):
        torch.testing.assert_close(old - new.detach(), step, rtol=1e-3,
                                   atol=tolerance(step, largest))


def test_frozen_parameters_get_no_gradient_and_no_noise():
    """DP on the U-Net's head only: the other parameters keep their values bit for bit under
    noise (no gradient, no noise), the head moves, and afterwards all train again."""
    segmentation = task()
    torch.manual_seed(0)
    model = segmentation.build_model()
    draws = PatientDraws(2, 1)
    dataset = PatientDataset(Samples(), patients_of_volumes(), seed=0, draws=draws)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with PrivateRound(model, optimizer, DataLoader(dataset, batch_size=PATIENTS), 1.0, 1.0,
                      "hooks", max_steps=3, per_patient=draws.size,
                      trainable=UNET_PARTS["head"]) as private:
        for _ in range(3):  # three passes of one step (every patient each step: q = 1)
            for batch in private.batches:
                private.optimizer.zero_grad()
                segmentation.batch_loss(private.model, batch, torch.device("cpu")).backward()
                private.group_gradients()
                private.optimizer.step()
        frozen = {n: p.grad for n, p in model.named_parameters() if not p.requires_grad}
    assert private.release.steps == 3
    head = {n for n, _ in model.named_parameters() if n.startswith("model.2.")}
    assert head and set(frozen) == set(before) - head
    assert all(grad is None for grad in frozen.values())
    for name, parameter in model.named_parameters():
        moved = not torch.equal(before[name], parameter.detach())
        assert moved == (name in head), name
        assert parameter.requires_grad


def test_a_part_that_names_no_parameter_is_refused():
    model = task().build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dataset = PatientDataset(Samples(), patients_of_volumes(), seed=0, draws=PatientDraws())
    with pytest.raises(ValueError, match="no parameter"):
        PrivateRound(model, optimizer, DataLoader(dataset, batch_size=2), 1.0, 1.0, "hooks",
                     trainable=r"^no_such_layer\.")
