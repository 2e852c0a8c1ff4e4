"""Differential privacy at the patient level: DP-SGD with Opacus, and its accounting.

The guarantee. Training data are handed to DP-SGD as **one item per
patient** (``Task.train_data(..., per_patient=PatientDraws(k, K))``): each
item is k randomly drawn slices (2D) or patches (3D) of randomly drawn images
of that patient, each augmented K times. At every step each patient is
included independently with probability q = 1 / ceil(N / B) (Poisson
sampling; N patients, B = ``train.batch_size`` expected patients per step).
Opacus computes the gradient of each of the k x K samples; the gradients of
one patient's samples are averaged (``PrivateRound.group_gradients``), that
mean is clipped to L2 norm C (``max_grad_norm``), the clipped means are
summed, Gaussian noise of standard deviation sigma * C is added
(``noise_multiplier``), and the result, divided by B, updates the model.
Parameters outside ``privacy.trainable`` are frozen: no gradient, no noise,
and they keep the starting model's values. A patient therefore contributes at
most one clipped gradient to any step however many slices, augmentations or
images they have, and the accountant (Opacus
RDP, or PRV) composes exactly these steps: (sigma, q, steps) per round, over
every round and run a hospital has taken part in. The epsilon it reports is
an (epsilon, delta) guarantee for each patient of that hospital, under
add/remove-one-patient neighbouring datasets, for everything the hospital
released (all model updates it sent). The patients drawn at each step and the
noise come from generators seeded by the operating system's entropy, so the
coordinator, who knows the run's seed, cannot replay them; DP runs are
therefore not bit-for-bit reproducible. (Opacus' ``secure_mode``, with a
cryptographically secure generator, is the stronger choice where torchcsprng
is installed.)
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from client import grad_samplers
from tasks.config import ConfigError

# Opacus' per-sample hooks are full backward hooks; on the first layer, whose input (the
# image) needs no gradient, torch warns on every step that they fire on outputs only, which
# is all the per-sample gradients need.
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)


@dataclass(frozen=True)
class Release:
    """Steps of DP-SGD with one noise multiplier and sample rate: what the accountant composes."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def epsilon(history: list[Release], delta: float, accountant: str = "rdp") -> float:
    """Epsilon of composing ``history`` at ``delta``, as the Opacus accountant computes it
    (infinite once any step was taken without noise)."""
    steps = [(r.noise_multiplier, r.sample_rate, r.steps) for r in history if r.steps > 0]
    if not steps:
        return 0.0
    if any(noise <= 0 for noise, _, _ in steps):
        return math.inf
    return float(_accountant(accountant, steps).get_epsilon(delta))


def accountant_state(history: list[Release], accountant: str = "rdp") -> dict[str, Any]:
    """The Opacus accountant's own state after ``history`` (kept in ledgers, for inspection)."""
    state = _accountant(accountant, [(r.noise_multiplier, r.sample_rate, r.steps)
                                     for r in history if r.steps > 0]).state_dict()
    return {"history": [list(h) for h in state["history"]], "mechanism": state["mechanism"]}


def _accountant(name: str, history: list[tuple[float, float, int]]):
    from opacus.accountants import PRVAccountant, RDPAccountant

    accountant = RDPAccountant() if name == "rdp" else PRVAccountant()
    accountant.history = list(history)
    return accountant


def noise_for(target_epsilon: float, delta: float, sample_rate: float, steps: int,
              accountant: str = "rdp") -> float:
    """The noise multiplier that reaches ``target_epsilon`` after ``steps`` at ``sample_rate``."""
    from opacus.accountants.utils import get_noise_multiplier

    if target_epsilon <= 0:
        raise ConfigError("privacy: set noise_multiplier > 0 or target_epsilon > 0")
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                      sample_rate=sample_rate, steps=steps,
                                      accountant=accountant))


def planned_noise(settings: dict[str, Any], sample_rate: float, steps: int,
                  delta: float) -> float:
    """The run's noise multiplier: as configured, or the one reaching ``target_epsilon``
    at ``delta`` after ``steps`` steps at ``sample_rate``."""
    if settings["noise_multiplier"] > 0:
        return float(settings["noise_multiplier"])
    return noise_for(settings["target_epsilon"], delta, sample_rate, steps,
                     settings["accountant"])


def sample_rate(patients: int, batch_size: int) -> float:
    """Each patient's inclusion probability per step: 1 / ceil(N / B), as Opacus samples."""
    return 1.0 / -(-patients // batch_size)


class PrivateRound:
    """One round of DP-SGD: wraps a model, optimizer and per-patient loader, then unwraps.

    Use as a context manager; inside, ``model``, ``optimizer`` and ``batches``
    are the private ones (train on them as usual). On exit the Opacus hooks are
    removed, so the plain model (``plain``) holds the trained weights with its
    own parameter names, and ``release`` says what was spent.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                 noise_multiplier: float, max_grad_norm: float, grad_sample_mode: str,
                 max_steps: int | None = None, per_patient: int = 1,
                 trainable: str | None = None) -> None:
        self.plain = model
        self.steps_left = max_steps
        self.per_patient = per_patient
        self.frozen = [p for name, p in model.named_parameters()
                       if p.requires_grad and trainable is not None
                       and not re.search(trainable, name)]
        if trainable is not None and not any(re.search(trainable, n)
                                             for n, _ in model.named_parameters()):
            raise ValueError(f"no parameter of the network matches {trainable!r}")
        self.device = next(model.parameters()).device
        self._args = (optimizer, loader, noise_multiplier, max_grad_norm, grad_sample_mode)
        self.model: nn.Module = model
        self.optimizer: torch.optim.Optimizer = optimizer
        self.batches: Any = loader
        self.release = Release(noise_multiplier, sample_rate(len(loader.dataset),
                                                             loader.batch_size or 1), 0)

    def __enter__(self) -> PrivateRound:
        from opacus import PrivacyEngine
        from opacus.data_loader import DPDataLoader

        optimizer, loader, noise, clip, mode = self._args
        grad_samplers.register()
        self.plain.train()
        for parameter in self.frozen:
            parameter.requires_grad_(False)
        self.engine = PrivacyEngine()
        # Which patients each step draws, and the noise, must be unknown to whoever sees
        # the result: both generators are seeded from the operating system's entropy,
        # never from the run's seed (which the coordinator knows).
        keys = list(loader.dataset[0])
        items = DataLoader(_Tuples(loader.dataset, keys), batch_size=loader.batch_size)
        sampling = DPDataLoader.from_data_loader(items, generator=_entropy_generator())
        wrapped = self.engine.make_private(
            module=self.plain, optimizer=optimizer, data_loader=sampling,
            noise_multiplier=noise, max_grad_norm=clip, poisson_sampling=False,
            grad_sample_mode=mode, noise_generator=_entropy_generator(self.device))
        self.model, self.optimizer, private_loader = wrapped
        self.batches = _Steps(private_loader, keys, self)
        return self

    def group_gradients(self) -> None:
        """Average each patient's per-sample gradients (call between backward and step): the
        batch's (B x per_patient) gradients, patient by patient, become B, which the
        optimizer then clips, sums and noises. Nothing to do with one sample per patient."""
        if self.per_patient == 1:
            return
        for parameter in self.plain.parameters():
            samples = getattr(parameter, "grad_sample", None)
            if parameter.requires_grad and isinstance(samples, torch.Tensor):
                parameter.grad_sample = samples.reshape(
                    -1, self.per_patient, *samples.shape[1:]).mean(dim=1)

    def noise_only_step(self) -> None:
        """The step of a draw with no patient: zero gradients, clipped (nothing), noised."""
        self.optimizer.zero_grad(set_to_none=True)
        for parameter in self.plain.parameters():
            if parameter.requires_grad:
                parameter.grad_sample = parameter.new_zeros((0, *parameter.shape))
        self.optimizer.step()

    def spent(self) -> Release:
        """What this round has released so far (the accountant's history of its steps)."""
        history = self.engine.accountant.history
        rates = {round(h[1], 12) for h in history}
        if len(rates) > 1:
            raise RuntimeError(f"one round used several sample rates: {sorted(rates)}")
        if not history:
            return Release(self.release.noise_multiplier, self.release.sample_rate, 0)
        return Release(float(history[0][0]), float(history[0][1]),
                       int(sum(h[2] for h in history)))

    def __exit__(self, *exc: object) -> None:
        self.release = self.spent()
        self.model._close()  # removes every Opacus hook from the plain model
        for parameter in self.frozen:
            parameter.requires_grad_(True)


def _entropy_generator(device: torch.device | None = None) -> torch.Generator:
    """A torch generator seeded with 64 bits from the operating system (os.urandom)."""
    generator = torch.Generator(device=device or "cpu")
    return generator.manual_seed(int.from_bytes(os.urandom(8), "big"))


class _Tuples(Dataset):
    """A dataset of dict items seen as tuples (in ``keys`` order): the form whose empty
    batches Opacus can build (zero-size tensors of the right shapes and dtypes)."""

    def __init__(self, dataset: Dataset, keys: list[str]) -> None:
        self.dataset, self.keys = dataset, keys

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        item = self.dataset[index]
        return tuple(item[k] for k in self.keys)


class _Steps:
    """The private batches as dicts again, at most the round's planned number of steps,
    each patient's samples laid side by side: every (patients, per_patient, ...) tensor
    becomes (patients x per_patient, ...), the batch a task's loss takes.

    Poisson sampling can draw no patient: that step is taken here (noise only) rather
    than handed to the task, and counts towards the planned steps like any other, so the
    steps taken never exceed the steps the budget was checked for.
    """

    def __init__(self, batches: DataLoader, keys: list[str], owner: PrivateRound) -> None:
        self.batches, self.keys, self.owner = batches, keys, owner
        self.dataset = batches.dataset

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.batches:
            if self.owner.steps_left is not None:
                if self.owner.steps_left <= 0:
                    return
                self.owner.steps_left -= 1
            if len(batch[0]) == 0:
                self.owner.noise_only_step()
                continue
            if batch[0].shape[1] != self.owner.per_patient:
                raise ValueError(f"patient items hold {batch[0].shape[1]} samples, expected "
                                 f"{self.owner.per_patient}")
            yield {key: value.flatten(0, 1) for key, value in zip(self.keys, batch, strict=True)}
