"""The config chain: run -> experiment -> simulation, validated once, at load, with paths
taken from where the config file is."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulation.config import load_simulation
from tasks.config import ConfigError
from tasks.run_config import load_run_config
from tests.helpers.cli import assert_one_line_error, spinefl

ROOT = Path(__file__).resolve().parents[2]


def test_paths_a_config_reads_resolve_against_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anywhere but the repository
    config = load_simulation(ROOT / "configs" / "federated_smoke.toml")
    assert Path(config["phantoms"]["config"]) == ROOT / "configs" / "phantoms_smoke.toml"
    assert Path(config["phantoms"]["config"]).is_file()
    # Output folders stay where the user runs the command.
    assert config["output"]["dir"] == "runs/federated-smoke"
    assert config["phantoms"]["dir"] == "data/phantoms-smoke"

    (tmp_path / "configs").mkdir()
    run = tmp_path / "configs" / "run.toml"
    run.write_text('[data]\nmanifest = "../data/manifest.csv"\n[task]\nname = "segmentation"\n')
    assert Path(load_run_config(run)["data"]["manifest"]) == tmp_path / "data" / "manifest.csv"
    # An option given on the command line is the user's own path, as given.
    overridden = load_run_config(run, {"data": {"manifest": "elsewhere.csv"}})
    assert overridden["data"]["manifest"] == "elsewhere.csv"


def test_a_simulation_that_cannot_run_is_refused_at_load(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[task]\nname = "segmentation"\n[privacy]\nenabled = true\n'
                    'target_epsilon = 8.0\n[federation]\nstrategy = "fedprox"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: federation\.strategy 'fedprox' with "
                                          r"privacy\.enabled"):
        load_simulation(path)
    path.write_text('[task]\nname = "segmentation"\n[phantoms]\nenabled = false\n')
    with pytest.raises(ConfigError, match=r"set phantoms\.enabled = true or data\.manifest"):
        load_simulation(path)


def test_simulate_refuses_before_it_writes_anything(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(f'[phantoms]\ndir = "{tmp_path / "phantoms"}"\n[task]\n'
                    'name = "segmentation"\n[privacy]\nenabled = true\ntarget_epsilon = 8.0\n'
                    f'[federation]\nstrategy = "fedprox"\n[output]\ndir = "{tmp_path / "out"}"\n')
    done = spinefl("simulate", "--config", str(path))
    assert_one_line_error(done, "bad.toml", "fedprox")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_overrides_are_validated_with_the_file():
    """A benchmark's ``--set`` (load_simulation's overrides) goes through the same checks as
    the file: a wrong section, key or type is refused naming it; a right one wins."""
    config = Path(__file__).resolve().parents[2] / "configs" / "federated.toml"
    changed = load_simulation(config, {"task": {"norm_affine": True},
                                       "federation": {"strategy": "fedbn"}})
    assert changed["task"]["norm_affine"] is True
    assert changed["federation"]["strategy"] == "fedbn"
    for overrides, named in (({"tsk": {"norm_affine": True}}, "section 'tsk'"),
                             ({"task": {"norm_afine": True}}, "'task.norm_afine'"),
                             ({"task": {"norm_affine": 3}}, "task.norm_affine must be bool")):
        with pytest.raises(ConfigError, match=named):
            load_simulation(config, overrides)
