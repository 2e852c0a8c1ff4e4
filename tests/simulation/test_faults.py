"""Fault injection with real processes: stop signals, a folder in use, a full disk, and
settings that cannot work. Whatever happens, nothing keeps running, nothing the user gave is
changed, and every file left under its final name is whole."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest

from tasks.checkpoint import load_checkpoint
from tasks.locks import LOCK, folder_lock
from tests.helpers.cli import SPINEFL, assert_one_line_error, run_config, spinefl
from tests.helpers.flower_processes import running
from tests.helpers.stops import stop_when

HOLDER = """
import sys, time
from pathlib import Path
from tasks.locks import folder_lock
with folder_lock(Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_ends_training_cleanly(stop, tiny_cohort, tmp_path):
    """Ctrl-C and SIGTERM (systemd, timeout, Slurm) end `train` cleanly: exit 128 + the signal
    with one line, the folder unlocked, every file whole (SIGHUP: tests/e2e/test_simulate)."""
    out = tmp_path / "run"
    config = run_config(tmp_path / "run.toml", tiny_cohort.root / "manifest.csv", out,
                        train={"epochs": 500})
    run = stop_when([str(SPINEFL), "train", "--config", str(config)],
                    lambda: (out / "checkpoint_last.pt").is_file(),  # an epoch's last file
                    stop, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert run.returncode == 128 + stop
    errors = run.stderr.read()
    assert "Traceback" not in errors and f"stopped ({signal.Signals(stop).name})" in errors
    assert not (out / LOCK).exists()
    assert len(pd.read_csv(out / "metrics.csv")) >= 1
    load_checkpoint(out / "checkpoint_last.pt")
    load_checkpoint(out / "model.pt")
    assert running(tmp_path) == set()


def test_a_folder_in_use_is_refused_naming_its_holder_and_a_dead_holder_is_taken_over(
        tiny_cohort, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        config = run_config(tmp_path / "run.toml", tiny_cohort.root / "manifest.csv", out,
                            train={"epochs": 1})
        refused = spinefl("train", "--config", str(config))
        assert_one_line_error(refused, str(out), "in use by", f"pid {holder.pid}", "running")
        assert sorted(p.name for p in out.iterdir()) == [LOCK], "the refused run wrote nothing"
        holder.kill()  # SIGKILL: the holder runs no clean-up; the kernel drops its lock
        holder.wait()
        with folder_lock(out):
            assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
        assert not (out / LOCK).exists()
    finally:
        if holder.poll() is None:
            holder.kill()


def test_simulate_refuses_a_minimum_no_partition_can_meet_before_making_anything(tmp_path):
    config = tmp_path / "sim.toml"
    config.write_text(f"""
[task]
name = "segmentation"
[phantoms]
dir = "{tmp_path / 'phantoms'}"
[federation]
min_hospitals = 10
[output]
dir = "{tmp_path / 'run'}"
""")
    done = spinefl("simulate", "--config", str(config))
    assert_one_line_error(done, "federation.min_hospitals = 10", "makes 3 hospital(s)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim.toml"]


@pytest.mark.parametrize("section, line, message", [
    ("train", "lr = nan", "train.lr must be a finite number"),
    ("train", "lr = inf", "train.lr must be a finite number"),
    ("privacy", "target_epsilon = inf", "privacy.target_epsilon must be a finite number"),
    ("privacy", "target_epsilon = nan", "privacy.target_epsilon must be a finite number"),
    ("privacy", "delta = 1.0", "privacy.delta must be < 1"),
    ("federation", "fraction_train = 2.0", "federation.fraction_train must be <= 1"),
    ("federation", "fraction_train = 0.0", "federation.fraction_train must be > 0"),
    ("federation", "trim_beta = 0.7", "federation.trim_beta must be < 0.5"),
    ("partition", "alpha = 0.0", "partition.alpha must be > 0"),
])
def test_settings_that_cannot_work_are_refused(section, line, message, tmp_path):
    """Loading the simulate config (the whole chain) refuses them, naming file and key; the
    command shows such errors as one line (test_cli.py), before writing anything."""
    from simulation.config import load_simulation
    from tasks.config import ConfigError

    config = tmp_path / "sim.toml"
    config.write_text(f"[task]\nname = \"segmentation\"\n[{section}]\n{line}\n")
    with pytest.raises(ConfigError, match=f"sim.toml: {re.escape(message)}"):
        load_simulation(config)


def test_cohort_settings_out_of_range_are_refused_in_one_line(tmp_path):
    from simulation.phantoms.config import cohort_config
    from tasks.config import ConfigError

    with pytest.raises(ConfigError, match=r"cohort\.scoliosis_probability must be <= 1"):
        cohort_config({"cohort": {"scoliosis_probability": 1.5}}, "cohort.toml")
    # As a real command: the message holds "[low, high]", which console markup once ate.
    config = tmp_path / "cohort.toml"
    config.write_text("[cohort]\ncobb_range = [40.0, 10.0]\n")
    done = spinefl("phantoms", "--config", str(config), "--out", str(tmp_path / "out"))
    assert_one_line_error(done, "cohort.toml", "must be [low, high] with low <= high")


# ---- a full disk -------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted for the test (root only), unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def grow(mount, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


def whole_files(folder, killed: bool = False) -> None:
    """Every NIfTI, checkpoint and table under ``folder`` reads back whole (and no temporary
    file is left, unless a writer was ``killed`` before it could remove its own)."""
    import nibabel as nib

    for path in folder.rglob("*"):
        if path.name.startswith(".part-"):
            if killed:
                continue
            raise AssertionError(f"a temporary file was left: {path}")
        if path.name.endswith(".nii.gz"):
            nib.load(path).get_fdata()
        elif path.suffix == ".pt":
            load_checkpoint(path)
        elif path.suffix in (".csv", ".json") and path.stat().st_size == 0:
            raise AssertionError(f"an empty file under its final name: {path}")


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_a_rerun_with_room_completes(small_disk, tiny_cohort,
                                                                 tmp_path):
    """hospital prepare, predict and train on a disk that fills up: one line naming the path,
    exit 2, no truncated file under its final name; with room again, a re-run completes."""
    few = tmp_path / "few"  # three patients' images
    for patient in ("P0001", "P0002", "P0003"):
        shutil.copytree(tiny_cohort.root / patient, few / patient)
    prepared = small_disk / "prepared"
    args = ("hospital", "prepare", "--input", str(few), "--out", str(prepared))
    full = spinefl(*args)
    assert_one_line_error(full, "No space left on device", str(prepared))
    whole_files(small_disk)
    grow(small_disk, "200m")
    done = spinefl(*args)
    assert done.returncode == 0, done.stderr
    whole_files(small_disk)

    grow(small_disk, "30m")
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 40_000))  # 40 kB left: less than a checkpoint
    config = run_config(tmp_path / "run.toml", tiny_cohort.root / "manifest.csv",
                        small_disk / "run", train={"epochs": 1})
    assert_one_line_error(spinefl("train", "--config", str(config)), "No space left on device")
    whole_files(small_disk / "run")
    filler.unlink()
    done = spinefl("train", "--config", str(config), "--force")
    assert done.returncode == 0, done.stderr
    model = small_disk / "run" / "model.pt"

    filler.write_bytes(b"\0" * (os.statvfs(small_disk).f_bavail
                                * os.statvfs(small_disk).f_frsize - 60_000))
    predictions = small_disk / "predictions"
    full = spinefl("predict", "--model", str(model), "--input", str(few), "--out",
                   str(predictions))
    assert full.returncode in (1, 2), full.stderr  # failed inputs, or the report itself
    assert "Traceback" not in full.stderr
    whole_files(predictions)
    filler.unlink()
    done = spinefl("predict", "--model", str(model), "--input", str(few), "--out",
                   str(predictions))
    assert done.returncode == 0, done.stdout + done.stderr
    report = pd.read_csv(predictions / "predictions.csv", keep_default_na=False)
    assert not (report.status == "failed").any(), report
    whole_files(predictions)


# ---- a batch stopped half-way ------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_a_prepare_stopped_half_way_is_completed_by_a_rerun(stop, tiny_cohort, tmp_path):
    out = tmp_path / "prepared"
    command = [str(SPINEFL), "hospital", "prepare", "--input", str(tiny_cohort.root), "--out",
               str(out)]
    stop_when(command, lambda: len(list(out.glob("images/*/*.nii.gz"))) >= 2, stop)
    whole_files(out, killed=stop == signal.SIGKILL)
    done = spinefl(*command[1:])
    assert done.returncode == 0, done.stderr
    whole_files(out)
    from tasks.manifest import Manifest

    assert len(Manifest.load(out / "manifest.csv")) == len(tiny_cohort)


@pytest.mark.slow
def test_a_predict_stopped_half_way_is_completed_by_a_rerun(tiny_cohort, tmp_path):
    from tasks.checkpoint import save_checkpoint
    from tests.helpers.task_defaults import default_task

    task = default_task("segmentation")
    task.settings.update(channels=[8, 16])
    task = type(task)(task.settings)
    model = save_checkpoint(tmp_path / "model.pt", task, task.build_model())
    out = tmp_path / "predictions"
    command = [str(SPINEFL), "predict", "--model", str(model), "--input", str(tiny_cohort.root),
               "--out", str(out)]
    stop_when(command, lambda: len(list(out.rglob("*_pred.nii.gz"))) >= 1, signal.SIGTERM)
    whole_files(out)
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*_pred.nii.gz")}
    done = spinefl(*command[1:])
    assert done.returncode == 0, done.stdout + done.stderr
    whole_files(out)
    assert len(list(out.rglob("*_pred.nii.gz"))) == len(tiny_cohort)
    assert all(p.stat().st_mtime_ns == t for p, t in first.items()), "finished work was redone"


@pytest.mark.parametrize("command", ["phantoms", "train", "prepare"])
def test_an_output_that_is_a_file_is_one_line(command, tiny_cohort, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("someone's file")
    if command == "phantoms":
        args = ["phantoms", "--out", str(taken), "--patients", "1"]
    elif command == "train":
        config = run_config(tmp_path / "run.toml", tiny_cohort.root / "manifest.csv", taken)
        args = ["train", "--config", str(config)]
    else:
        args = ["hospital", "prepare", "--input", str(tiny_cohort.root), "--out", str(taken)]
    assert_one_line_error(spinefl(*args), str(taken), "not a folder")
    assert taken.read_text() == "someone's file"
