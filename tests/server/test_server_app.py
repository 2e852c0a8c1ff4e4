"""Where a federated run starts: fresh, from a checkpoint (transfer learning), or resumed."""

from __future__ import annotations

import pytest
import torch

from server.app import ROUND_CHECKPOINT, federation_identity, resumed_payload, starting_point
from server.config import validate_experiment
from tasks.checkpoint import save_checkpoint
from tasks.errors import UserError
from tasks.registry import task_class


def experiment(tmp_path, init_checkpoint="", **federation):
    return validate_experiment({
        "data": {"manifest": "m.csv"},
        "task": {"name": "segmentation", "channels": [8, 16]},
        "train": {"init_checkpoint": init_checkpoint},
        "federation": federation,
        "output": {"dir": str(tmp_path / "run")},
    }, "test")


def build(config):
    settings = {k: v for k, v in config["task"].items() if k != "name"}
    return task_class("segmentation")(settings)


def test_a_fresh_run_is_seeded(tmp_path):
    config = experiment(tmp_path)
    first, done = starting_point(build(config), config, tmp_path / "run")
    second, _ = starting_point(build(config), config, tmp_path / "run")
    assert done == 0
    for key in first:
        torch.testing.assert_close(first[key], second[key])


def test_transfer_learning_starts_from_the_given_checkpoint(tmp_path):
    config = experiment(tmp_path)
    task = build(config)
    model = task.build_model()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(0.25)
    save_checkpoint(tmp_path / "elsewhere.pt", task, model)
    config = experiment(tmp_path, init_checkpoint=str(tmp_path / "elsewhere.pt"))
    weights, done = starting_point(task, config, tmp_path / "run")
    assert done == 0
    assert all(torch.all(weights[name] == 0.25) for name, _ in model.named_parameters())

    other = task_class("segmentation")({**task.settings, "channels": [4, 8]})
    save_checkpoint(tmp_path / "other.pt", other, other.build_model())
    config = experiment(tmp_path, init_checkpoint=str(tmp_path / "other.pt"))
    with pytest.raises(UserError, match="task settings differ"):
        starting_point(task, config, tmp_path / "run")


def test_a_stopped_run_resumes_after_its_last_finished_round(tmp_path):
    config = experiment(tmp_path, rounds=5)
    task = build(config)
    model = task.build_model()
    save_checkpoint(tmp_path / "run" / ROUND_CHECKPOINT, task, model, round=3)
    weights, done = starting_point(task, config, tmp_path / "run", resume=True)
    assert done == 3
    for key, value in model.state_dict().items():
        torch.testing.assert_close(weights[key], value)
    with pytest.raises(UserError, match="holds round 3 of an earlier run"):
        starting_point(task, config, tmp_path / "run")  # a new run never overwrites it


def test_a_resumed_run_keeps_its_identity_and_a_new_run_gets_another(tmp_path):
    """Hospitals keep their personal models under the run's identity: a resumption must
    find them again, a new run in the same folder must not."""
    config = experiment(tmp_path)
    task = build(config)
    out = tmp_path / "run"
    first = federation_identity(resumed_payload(out, resume=False))
    assert len(first) == 32 and int(first, 16) >= 0
    save_checkpoint(out / ROUND_CHECKPOINT, task, task.build_model(), round=1,
                    **{"federation-id": first})
    assert federation_identity(resumed_payload(out, resume=True)) == first
    assert federation_identity(resumed_payload(out, resume=False)) != first


def test_resuming_needs_a_finished_round(tmp_path):
    config = experiment(tmp_path)
    with pytest.raises(UserError, match="no finished round to resume from"):
        starting_point(build(config), config, tmp_path / "run", resume=True)


@pytest.mark.parametrize("raw", [{}, {"task": {"name": "staging"}}])
def test_every_config_names_a_missing_or_unknown_task_the_same_way(raw, tmp_path):
    from simulation.config import load_simulation
    from tasks.run_config import load_run_config

    (tmp_path / "x.toml").write_text('[task]\nname = "staging"\n' if raw else "")
    for load in (lambda: validate_experiment(raw, str(tmp_path / "x.toml")),
                 lambda: load_run_config(tmp_path / "x.toml"),
                 lambda: load_simulation(tmp_path / "x.toml")):
        with pytest.raises(UserError, match=r"x\.toml: (missing required key task\.name|"
                                            r"task\.name 'staging' is not a task)"):
            load()


def test_a_rounds_validation_fills_in_its_row_when_the_next_round_brings_it(tmp_path):
    """The metrics table as written round by round: round 1's row gets its validation from
    round 2's replies; values already written stay, and the table survives a CSV round
    trip (what a resumed run reads back)."""
    import pandas as pd

    from server.app import merge_rows

    first = merge_rows(pd.DataFrame(), [{"round": 1, "hospital": "a", "train_loss": 0.9,
                                         "round_seconds": 30.0}])
    first.to_csv(tmp_path / "m.csv", index=False)
    table = merge_rows(pd.read_csv(tmp_path / "m.csv"), [
        {"round": 1, "hospital": "a", "val_dice": 0.5},
        {"round": 2, "hospital": "a", "train_loss": 0.4, "round_seconds": 20.0},
        {"round": 2, "hospital": "b", "train_error": "disk full"}])
    assert list(table.columns) == ["round", "hospital", "train_loss", "round_seconds",
                                   "val_dice", "train_error"]
    rows = table.set_index(["round", "hospital"])
    assert rows.loc[(1, "a"), ["train_loss", "round_seconds", "val_dice"]].tolist() == \
        [0.9, 30.0, 0.5]
    assert rows.loc[(2, "a"), "train_loss"] == 0.4 and pd.isna(rows.loc[(2, "a"), "val_dice"])
    assert rows.loc[(2, "b"), "train_error"] == "disk full"
