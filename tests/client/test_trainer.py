"""The local trainer: learning-rate schedules, step limits, budgets, penalties, precision."""

from __future__ import annotations

import pytest
import torch

from client.trainer import LocalTrainer, cosine_lr, run_share
from tasks.contract import Evaluation
from tasks.device import Precision
from tests.helpers.training import train_for


def test_cosine_decay_and_the_share_of_a_run_behind():
    assert cosine_lr(0.01, 0.0) == pytest.approx(0.01)
    assert cosine_lr(0.01, 0.5) == pytest.approx(0.005)
    assert cosine_lr(0.01, 1.0) == pytest.approx(0.0)
    assert run_share(5, 10, elapsed=30.0, budget=0.0) == 0.5
    assert run_share(5, 10, elapsed=30.0, budget=40.0) == 0.75  # the budget ends first
    assert run_share(10, 10, elapsed=90.0, budget=40.0) == 1.0


def test_a_cosine_run_ends_at_a_learning_rate_of_zero(tiny_cohort, tmp_path):
    result = train_for(tiny_cohort, tmp_path, 'name = "segmentation"',
                       'epochs = 2\nbatch_size = 16\nlr = 0.01\nschedule = "cosine"')
    state = torch.load(result.folder / "checkpoint_last.pt", weights_only=False)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [pytest.approx(0.0)]


class _Line:
    """A task of one batch loss (least squares on y = 2x): enough for the trainer's loop."""

    def batch_loss(self, model, batch, device):
        x, y = batch
        return ((model(x.to(device)) - y.to(device)) ** 2).mean()


def _trainer(schedule: str = "constant", **kwargs) -> LocalTrainer:
    torch.manual_seed(0)
    settings = {"lr": 0.1, "schedule": schedule, "weight_decay": 0.0}
    return LocalTrainer(_Line(), torch.nn.Linear(1, 1), settings, torch.device("cpu"), **kwargs)


BATCHES = [(x, 2 * x) for x in torch.linspace(-1, 1, 8).reshape(2, 4, 1)]  # 2 batches


def test_the_schedule_places_each_call_in_the_whole_run():
    """Round 3 of 4 (one local epoch each) trains at the cosine's half-way rate."""
    trainer = _trainer("cosine", run_epochs=4, epochs_done=2)
    fit = trainer.fit(BATCHES, 1)
    assert fit.epochs[0]["lr"] == pytest.approx(cosine_lr(0.1, 0.5))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(cosine_lr(0.1, 0.75))


def test_steps_are_limited_across_epochs_and_evaluation_follows_its_cadence():
    seen = []
    fit = _trainer(run_epochs=5).fit(
        BATCHES, 5, max_steps=5, eval_every=2,
        evaluate=lambda model: Evaluation({"error": 0.0}),
        on_epoch_end=lambda row, evaluation: seen.append(evaluation is not None))
    assert fit.steps == 5 and [row["train_steps"] for row in fit.epochs] == [2, 2, 1]
    assert seen == [False, True, True]  # every second epoch, and after the last
    assert fit.loss < fit.epochs[0]["train_loss"]


def test_a_time_budget_stops_before_an_epoch_that_would_end_past_it():
    fit = _trainer(run_epochs=1000, max_minutes=1e-9).fit(BATCHES, 1000)
    assert fit.out_of_time and len(fit.epochs) == 1


def test_a_penalty_is_part_of_every_step():
    plain = _trainer(run_epochs=1).fit(BATCHES, 1)
    pulled = _trainer(run_epochs=1).fit(BATCHES, 1, penalty=lambda model: torch.tensor(5.0))
    assert pulled.loss == pytest.approx(plain.loss + 5.0, rel=1e-5)


FP16 = Precision("cpu", torch.float16)  # CUDA's fallback precision, run on the CPU here


def test_float16_steps_see_true_gradients_and_learn():
    """Under float16 with a scaler, ``before_step`` sees the gradient of the loss itself (not
    of the loss times the scale), and the steps still learn y = 2x."""
    reference = _trainer(run_epochs=1)
    _Line().batch_loss(reference.model, BATCHES[0], torch.device("cpu")).backward()
    expected = reference.model.weight.grad.clone()
    trainer = _trainer(run_epochs=1)
    seen = []
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # no overflow on the first step
    losses = trainer.steps(trainer.model, trainer.optimizer, BATCHES[:1], None, None,
                           before_step=lambda: seen.append(trainer.model.weight.grad.clone()),
                           precision=FP16, scaler=scaler)
    assert scaler.get_scale() == 1024.0  # the loss was scaled, the step taken ...
    assert torch.allclose(seen[0], expected, rtol=1e-2)  # ... and unscaled before the step
    for _ in range(30):
        losses += trainer.steps(trainer.model, trainer.optimizer, BATCHES, None, None,
                                precision=FP16, scaler=scaler)
    assert losses[-1] < 0.1 * losses[0]
    assert FP16.scaler().is_enabled()


def test_a_float16_step_whose_gradients_overflow_is_skipped():
    trainer = _trainer(run_epochs=1)
    before = trainer.model.weight.detach().clone()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)  # float16 overflows to inf
    trainer.steps(trainer.model, trainer.optimizer, BATCHES[:1], None, None,
                  precision=FP16, scaler=scaler)
    assert torch.equal(trainer.model.weight, before)
    assert scaler.get_scale() < 2.0**60
