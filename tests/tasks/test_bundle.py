"""`spinefl export`: the MONAI bundle runs under MONAI's own bundle runner, with no spinefl
module importable, and gives exactly the labels `spinefl predict` gives."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from client.prediction import predict
from tasks.bundle import export_bundle
from tasks.checkpoint import load_checkpoint, save_checkpoint
from tasks.errors import UserError
from tests.helpers.cli import assert_one_line_error, spinefl
from tests.helpers.task_defaults import default_task

pytestmark = pytest.mark.slow  # MONAI's bundle runner and spinefl in real processes

# MONAI's bundle command line, in a Python where importing any spinefl package fails.
WITHOUT_SPINEFL = ("import sys, runpy; sys.modules.update(dict.fromkeys(['tasks', 'client', "
                   "'server', 'simulation'])); sys.argv[0] = 'monai.bundle'; "
                   "runpy.run_module('monai.bundle', run_name='__main__')")


def monai_bundle(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_SPINEFL, *args], capture_output=True,
                          text=True, timeout=300)


def segmentation_checkpoint(folder, network: str):
    """A small segmentation model (CT and MR) with fixed random weights, in ``folder``."""
    task = default_task("segmentation")
    task.settings.update(channels=[8, 16], spacing=[4.0, 4.0, 4.0], network=network,
                         patch_size=[32, 32, 32])
    task = type(task)(task.settings)
    torch.manual_seed(7)
    folder.mkdir(exist_ok=True)
    return save_checkpoint(folder / "model.pt", task, task.build_model())


@pytest.mark.parametrize(("network", "modality"), [("unet2d", "CT"), ("unet3d", "MR")])
def test_the_bundle_predicts_the_labels_spinefl_predicts(tiny_cohort, tmp_path, network,
                                                         modality):
    model = segmentation_checkpoint(tmp_path, network)
    bundle = export_bundle(model, tmp_path / "bundle")
    images = tmp_path / "images"
    images.mkdir()
    for row in tiny_cohort.select(modality=modality).rows()[:2]:
        shutil.copy(tiny_cohort.path(row), images / f"{row['patient_id']}.nii.gz")
    ours, theirs = tmp_path / "spinefl", tmp_path / "monai"
    predict(model, images, ours, modality)
    # A CT and MR model's inference.json reads CT; MR adds its override (MONAI merges them).
    configs = [str(bundle / "configs" / "inference.json")]
    if modality == "MR":
        configs.append(str(bundle / "configs" / "inference_mr.json"))
    ran = monai_bundle("run", "--config_file", json.dumps(configs), "--bundle_root",
                       str(bundle), "--dataset_dir", str(images), "--output_dir", str(theirs))
    assert ran.returncode == 0, ran.stderr[-3000:]
    predicted = sorted(ours.glob("*_pred.nii.gz"))
    assert len(predicted) == 2
    for path in predicted:
        mine, bundled = nib.load(path), nib.load(theirs / path.name)
        labels = np.asarray(mine.dataobj)
        assert len(np.unique(labels)) >= 2, "a prediction of one label proves nothing"
        np.testing.assert_array_equal(np.asarray(bundled.dataobj), labels)
        np.testing.assert_allclose(bundled.affine, mine.affine, atol=1e-5)


def test_the_bundle_passes_monai_checks_and_its_torchscript_is_the_network(tmp_path):
    model = segmentation_checkpoint(tmp_path, "unet2d")
    bundle = tmp_path / "bundle"
    assert spinefl("export", "--model", str(model), "--out", str(bundle)).returncode == 0
    checked = monai_bundle("verify_net_in_out", "network_def", "--meta_file",
                           str(bundle / "configs" / "metadata.json"), "--config_file",
                           str(bundle / "configs" / "inference.json"), "--n", "16")
    assert checked.returncode == 0, checked.stderr[-3000:]
    _, network, _ = load_checkpoint(model)
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"))
    image = torch.rand(2, 1, 64, 48)
    network.eval()
    with torch.no_grad():
        torch.testing.assert_close(scripted(image), network(image))
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["label_classes"] == {"0": "background", "1": "vertebra", "2": "disc",
                                         "3": "canal"}


def test_the_bundle_docs_give_each_hospitals_epsilon(tmp_path):
    model = segmentation_checkpoint(tmp_path, "unet2d")
    pd.DataFrame({"round": [1, 1, 2, 2], "hospital": ["a", "b", "a", "b"],
                  "train_num-examples": [40, 12, 40, 12],
                  "train_epsilon-total": [1.25, 2.5, 2.75, 4.125], "train_delta": [1e-5] * 4,
                  "val_dice_mean": [0.5, 0.4, 0.625, 0.375]}
                 ).to_csv(tmp_path / "federated_metrics.csv", index=False)
    assert spinefl("export", "--model", str(model), "--out", str(tmp_path / "b")).returncode == 0
    readme = (tmp_path / "b" / "docs" / "README.md").read_text()
    assert "| a | 2 | 40 | 2.750 | 1.0e-05 | 0.625 |" in readme
    assert "| b | 2 | 12 | 4.125 | 1.0e-05 | 0.375 |" in readme
    assert "patient-level" in readme


def test_export_refuses_a_task_without_a_bundle_and_replaces_only_a_bundle(tmp_path):
    task = default_task("grading")
    model = save_checkpoint(tmp_path / "grading.pt", task, task.build_model())
    done = spinefl("export", "--model", str(model), "--out", str(tmp_path / "out"))
    assert_one_line_error(done, "grading model has no MONAI bundle", "disc grades")
    assert not (tmp_path / "out").exists()
    segmentation = segmentation_checkpoint(tmp_path / "run", "unet2d")
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("the user's")
    done = spinefl("export", "--model", str(segmentation), "--out", str(kept))
    assert_one_line_error(done, str(kept), "--force")
    with pytest.raises(UserError, match="other than a MONAI bundle"):
        export_bundle(segmentation, kept, force=True)
    assert (kept / "mine.txt").read_text() == "the user's"
    with pytest.raises(UserError, match="holds the checkpoint"):
        export_bundle(segmentation, segmentation.parent, force=True)
    # --force replaces a bundle, whole: nothing of the old one is left.
    bundle = export_bundle(segmentation, tmp_path / "bundle")
    (bundle / "models" / "stale.pt").write_bytes(b"old")
    assert export_bundle(segmentation, bundle, force=True) == bundle
    assert not (bundle / "models" / "stale.pt").exists()
    assert (bundle / "models" / "model.ts").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".part-")] == []


def test_a_killed_exports_staging_folders_are_swept_by_the_next_export(tmp_path):
    """A bundle is staged in a folder named like every temporary (.part-<pid>-<name>), and a
    bundle it replaces is set aside as .part-<pid>-replaced-<name>; once their writer is
    dead, the next export to that name removes both (and nothing else)."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    for name in ("bundle", "replaced-bundle"):
        (tmp_path / f".part-{dead.pid}-{name}" / "models").mkdir(parents=True)
        (tmp_path / f".part-{dead.pid}-{name}" / "models" / "model.pt").write_bytes(b"half")
    (tmp_path / f".part-{dead.pid}-other").mkdir()
    model = segmentation_checkpoint(tmp_path / "run", "unet2d")
    export_bundle(model, tmp_path / "bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".part-{dead.pid}-other", "bundle",
                                                           "run"]
