"""The command line: a newcomer's --help, and one clear line (no traceback) for each mistake."""

from __future__ import annotations

import pytest

from tests.helpers.cli import assert_one_line_error, spinefl


def test_help_lists_the_stages():
    done = spinefl("--help")
    assert done.returncode == 0
    for command in ("phantoms", "train", "predict", "manifest"):
        assert command in done.stdout


@pytest.fixture
def run_config(tmp_path, tiny_cohort):
    def write(extra: str = "", out: str | None = None) -> str:
        path = tmp_path / "run.toml"
        path.write_text(f"""
[data]
manifest = "{tiny_cohort.root / 'manifest.csv'}"
[task]
name = "segmentation"
[train]
epochs = 1
{extra}
[output]
dir = "{out or tmp_path / 'run'}"
""")
        return str(path)

    return write


def test_unknown_config_key_is_named_with_a_suggestion(run_config):
    done = spinefl("train", "--config", run_config("lrr = 0.1"))
    assert_one_line_error(done, "run.toml", "unknown key 'train.lrr'", "did you mean 'train.lr'")


def test_wrong_type_is_named(run_config):
    done = spinefl("train", "--config", run_config('epochs_typo = 1\nlr = "fast"'))
    assert_one_line_error(done, "run.toml", "unknown key 'train.epochs_typo'")
    done = spinefl("train", "--config", run_config('lr = "fast"'))
    assert_one_line_error(done, "train.lr must be float, got 'fast'")


def test_missing_config_and_missing_manifest(run_config, tmp_path):
    assert_one_line_error(spinefl("train", "--config", str(tmp_path / "none.toml")),
                          "none.toml: config file not found")
    done = spinefl("train", "--config", run_config(), "--manifest", str(tmp_path / "gone.csv"))
    assert_one_line_error(done, "gone.csv: manifest not found")


def test_output_folder_holding_another_run_is_left_alone(run_config, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "model.pt").write_bytes(b"someone else's model")
    done = spinefl("train", "--config", run_config(out=str(out)))
    assert_one_line_error(done, str(out), "already holds another run", "--force")
    assert (out / "model.pt").read_bytes() == b"someone else's model"
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]


def test_phantoms_refuse_a_folder_holding_something_else(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    done = spinefl("phantoms", "--out", str(tmp_path), "--patients", "1")
    assert_one_line_error(done, str(tmp_path), "--force")
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_manifest_check_names_the_bad_row(tiny_cohort, tmp_path):
    table = tiny_cohort.with_absolute_paths(tmp_path).table
    table.loc[3, "split"] = "holdout"
    table.to_csv(tmp_path / "bad.csv", index=False)
    done = spinefl("manifest", "check", str(tmp_path / "bad.csv"))
    assert_one_line_error(done, "bad.csv", "row 4", "'split'", "'holdout'")
    assert spinefl("manifest", "check", str(tiny_cohort.root / "manifest.csv")).returncode == 0


def test_predict_with_a_missing_checkpoint(tmp_path):
    done = spinefl("predict", "--model", str(tmp_path / "m.pt"), "--input", str(tmp_path),
                   "--out", str(tmp_path / "o"))
    assert_one_line_error(done, "m.pt: checkpoint not found")


def test_simulate_shows_the_runs_progress_and_not_flowers_configuration_tree():
    from simulation.simulate import PROGRESS_LINE

    shown = ["INFO :      [ROUND 2/5]",
             "INFO :      round 2 | ct-a | train loss 0.412 | val dice_mean 0.801",
             "WARNING :   round 2: hospital mr-b failed in train: no rows",
             "ERROR :     The run stops: only 2 of the 3 hospitals ...",
             "INFO :      Resuming after round 1 from run/federated/round.pt",
             "INFO :      Final global model: run/federated/model.pt"]
    hidden = ["INFO :      │     ├──Minimum nodes: train (3) | evaluate (3)",
              "INFO :      │     ├──Fraction: train (1.00) | evaluate ( 1.00)",
              "INFO :      Starting FedAvg strategy:"]
    assert all(PROGRESS_LINE.search(line) for line in shown)
    assert not any(PROGRESS_LINE.search(line) for line in hidden)


def test_training_without_a_validation_split_says_what_it_keeps_and_what_to_do(tiny_cohort,
                                                                              tmp_path):
    from tests.helpers.cli import run_config as write_run_config

    manifest = tiny_cohort.with_absolute_paths(tmp_path)
    manifest.table.loc[manifest.table.split == "val", "split"] = "train"
    manifest.save(tmp_path / "manifest.csv")
    config = write_run_config(tmp_path / "run.toml", tmp_path / "manifest.csv", tmp_path / "run",
                              train={"epochs": 1})
    done = spinefl("train", "--config", str(config))
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())
    assert "no validation rows" in said and "give the manifest a val split" in said
    assert "Best validation" not in said and (tmp_path / "run" / "model.pt").is_file()
