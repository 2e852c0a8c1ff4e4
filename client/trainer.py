"""The one local trainer. `spinefl train`, the simulation's pooled and local-only
baselines and the ClientApp's rounds all train through ``LocalTrainer``; a task
gives only its batch loss (``Task.batch_loss``), its data and its evaluation.

The trainer owns: seeding and the network to train (``LocalTrainer.start``), the
optimizer (Adam), epochs or a step limit, the learning-rate schedule over the
whole run (which may span federated rounds: ``run_epochs`` and ``epochs_done``
place this call in it), a time budget, the evaluation cadence, mixed precision
on CUDA, patient-level DP-SGD (``client.privacy.PrivateRound`` around the epochs,
with a given noise multiplier) and an extra loss term (FedProx's proximal term).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from client.privacy import PrivateRound, Release, epsilon
from tasks.contract import Evaluation, PatientDraws, Task
from tasks.device import Precision, precision_for
from tasks.seeding import seed_everything

Penalty = Callable[[nn.Module], torch.Tensor]
Evaluate = Callable[[nn.Module], Evaluation]
EpochEnd = Callable[[dict[str, float], Evaluation | None], None]


def run_share(epochs_done: int, run_epochs: int, elapsed: float, budget: float) -> float:
    """Share (0-1) of a run behind after ``epochs_done`` of ``run_epochs``: by epochs, or by
    time (``elapsed`` of ``budget`` seconds; 0 = no budget) if the budget runs out first."""
    share = epochs_done / run_epochs
    if budget > 0:
        share = max(share, elapsed / budget)
    return min(share, 1.0)


def cosine_lr(base: float, share: float) -> float:
    """``base`` decayed to 0 along a half cosine, ``share`` (0-1) of the way through."""
    return base * 0.5 * (1.0 + math.cos(math.pi * share))


@dataclass(frozen=True)
class DPSettings:
    """DP-SGD for one call of ``fit``: the noise multiplier (already planned for the run's
    budget), the clipping norm, how Opacus computes per-sample gradients, the delta and
    accountant of the epsilon each epoch's row reports (spent by this call), the samples
    each patient item holds (``PatientDraws.size``: their gradients are averaged before
    clipping) and the pattern of the parameter names to train (None: all)."""

    noise_multiplier: float
    max_grad_norm: float
    grad_sample_mode: str
    delta: float
    accountant: str
    per_patient: int = 1
    trainable: str | None = None

    @classmethod
    def of(cls, privacy: Mapping[str, Any], task: Task, noise_multiplier: float,
           delta: float) -> DPSettings:
        """A run's validated ``[privacy]`` section for ``task``, with the planned noise."""
        part = privacy["trainable"]
        return cls(noise_multiplier, privacy["max_grad_norm"], privacy["grad_sample_mode"],
                   delta, privacy["accountant"],
                   PatientDraws(privacy["slices_per_patient"], privacy["augmentations"]).size,
                   None if part == "all" else task.parts[part])


@dataclass
class Fit:
    """What one call of ``fit`` did: one row per epoch (``train_loss``, ``train_steps``,
    ``lr``, ``val_*`` metrics when evaluated, ``epsilon`` under DP), the task's steps taken,
    the DP release (or None), and whether the time budget ended it."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    release: Release | None = None
    out_of_time: bool = False

    @property
    def loss(self) -> float:
        """The last epoch's mean training loss."""
        return self.epochs[-1]["train_loss"] if self.epochs else float("nan")


class LocalTrainer:
    """Local training of one model on one dataset for part or all of a run.

    ``settings`` are the ``[train]`` keys a hospital honours (``tasks.run_config.
    LOCAL_TRAIN_KEYS``: lr, schedule, weight decay); the optimizer lives as long as the
    trainer (a whole pooled run; one federated round at a hospital).
    """

    def __init__(self, task: Task, model: nn.Module, settings: Mapping[str, Any],
                 device: torch.device, *, run_epochs: int, epochs_done: int = 0,
                 max_minutes: float = 0.0) -> None:
        self.task, self.model, self.device = task, model.to(device), device
        self.base_lr = float(settings["lr"])
        self.schedule = str(settings["schedule"])
        self.run_epochs, self.epochs_done = run_epochs, epochs_done
        self.budget = 60.0 * max_minutes
        self.started: float | None = None  # the clock starts with the first epoch
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.base_lr,
                                          weight_decay=settings["weight_decay"])
        # Gradient scalers by precision (float16 only scales): the scale adapts over the
        # trainer's life, a whole pooled run or a round.
        self._scalers: dict[Precision, torch.amp.GradScaler] = {}
        self._schedule_lr()

    @classmethod
    def start(cls, task: Task, settings: Mapping[str, Any], device: torch.device, *,
              seed: int, state: Mapping[str, torch.Tensor] | None = None, run_epochs: int,
              epochs_done: int = 0, max_minutes: float = 0.0) -> LocalTrainer:
        """Seed Python, NumPy and torch with ``seed``, build the task's network (with
        ``state`` loaded, e.g. the global model) and a trainer for it."""
        seed_everything(seed)
        model = task.build_model()
        if state is not None:
            model.load_state_dict(state)
        return cls(task, model, settings, device, run_epochs=run_epochs,
                   epochs_done=epochs_done, max_minutes=max_minutes)

    def _schedule_lr(self) -> None:
        """Set the learning rate for the next epoch: the schedule's, at the share of the run
        behind (epochs done, or the time budget spent)."""
        if self.schedule != "cosine":
            return
        share = run_share(self.epochs_done, self.run_epochs, self.elapsed(), self.budget)
        for group in self.optimizer.param_groups:
            group["lr"] = cosine_lr(self.base_lr, share)

    def elapsed(self) -> float:
        """Seconds since the first epoch of this trainer began (0 before)."""
        return 0.0 if self.started is None else time.perf_counter() - self.started

    def fit(self, batches: Any, epochs: int, *, max_steps: int | None = None,
            penalty: Penalty | None = None, dp: DPSettings | None = None,
            evaluate: Evaluate | None = None, eval_every: int = 1,
            on_epoch_end: EpochEnd | None = None,
            on_step: Callable[[], None] | None = None) -> Fit:
        """Train ``epochs`` passes over ``batches`` (at most ``max_steps`` steps in all;
        ``on_step()`` after each step, e.g. to move a progress bar).

        ``evaluate(model)`` runs every ``eval_every`` epochs and after the last, its metrics
        going into the row as ``val_<name>``; ``on_epoch_end(row, evaluation)`` then sees
        each epoch's row (and that evaluation, or None) while the model holds that epoch's
        weights. The run stops before an epoch that would end past the time budget at the
        pace so far.
        """
        fit = Fit()
        if self.started is None:
            self.started = time.perf_counter()
        if dp is None:
            self._epochs(self.model, self.optimizer, batches, epochs, max_steps, penalty, fit,
                         evaluate, eval_every, on_epoch_end, None, on_step,
                         precision_for(self.device))
            return fit
        with PrivateRound(self.model, self.optimizer, batches, dp.noise_multiplier,
                          dp.max_grad_norm, dp.grad_sample_mode, max_steps=max_steps,
                          per_patient=dp.per_patient, trainable=dp.trainable) as private:
            self._epochs(private.model, private.optimizer, private.batches, epochs, max_steps,
                         penalty, fit, evaluate, eval_every, on_epoch_end, (private, dp),
                         on_step, precision_for(self.device, private=True))
        fit.release = private.release
        return fit

    def _epochs(self, model: nn.Module, optimizer: torch.optim.Optimizer, batches: Any,
                epochs: int, max_steps: int | None, penalty: Penalty | None, fit: Fit,
                evaluate: Evaluate | None, eval_every: int, on_epoch_end: EpochEnd | None,
                private: tuple[PrivateRound, DPSettings] | None,
                on_step: Callable[[], None] | None, precision: Precision) -> None:
        for epoch in range(1, epochs + 1):
            lr = float(self.optimizer.param_groups[0]["lr"])
            left = None if max_steps is None else max_steps - fit.steps
            before_step = None if private is None else private[0].group_gradients
            losses = self.steps(model, optimizer, batches, left, penalty, before_step, on_step,
                                precision=precision)
            fit.steps += len(losses)
            self.epochs_done += 1
            self._schedule_lr()
            row = {"train_loss": float(np.mean(losses)) if losses else float("nan"),
                   "train_steps": float(len(losses)), "lr": lr}
            if private is not None:
                round_, dp = private
                row["epsilon"] = epsilon([round_.spent()], dp.delta, dp.accountant)
            elapsed = self.elapsed()
            fit.out_of_time = self.budget > 0 and elapsed * (epoch + 1) / epoch > self.budget
            steps_done = (max_steps is not None and fit.steps >= max_steps) or (
                private is not None and private[0].steps_left == 0)
            last = epoch == epochs or fit.out_of_time or steps_done
            evaluation = None
            if evaluate is not None and (epoch % eval_every == 0 or last):
                evaluation = evaluate(self.model)
                row.update({f"val_{k}": v for k, v in evaluation.metrics.items()})
            if on_epoch_end is not None:
                on_epoch_end(row, evaluation)
            fit.epochs.append(row)
            if last:
                break

    def steps(self, model: nn.Module, optimizer: torch.optim.Optimizer, batches: Any,
              max_steps: int | None, penalty: Penalty | None,
              before_step: Callable[[], None] | None = None,
              after_step: Callable[[], None] | None = None, *, precision: Precision,
              scaler: torch.amp.GradScaler | None = None) -> list[float]:
        """One pass of optimiser steps on the task's batch loss, in ``precision``
        (``tasks.device.precision_for``: under DP-SGD, ask for it with ``private=True``)
        with ``scaler`` (None: this trainer's for that precision); ``before_step`` runs
        between each backward pass and its step, on the unscaled gradients, ``after_step``
        after each step. A float16 step whose gradients overflowed is skipped, and the
        scaler lowers its scale."""
        scaler = scaler or self._scalers.setdefault(precision, precision.scaler())
        model.train()
        losses: list[float] = []
        for step, batch in enumerate(batches):
            if max_steps is not None and step >= max_steps:
                break
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                loss = self.task.batch_loss(model, batch, self.device)
            if penalty is not None:
                loss = loss + penalty(model)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if before_step is not None:
                before_step()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            if after_step is not None:
                after_step()
        return losses
