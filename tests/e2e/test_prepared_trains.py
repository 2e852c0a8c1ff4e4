"""A prepared hospital folder trains with `spinefl train` and `spinefl simulate`, no further step.

The tiny phantom cohort is exported the way hospitals hold such data (CT as
DICOM series with a mask file beside each, MR as NIfTI with `_mask` files),
prepared, and handed to both commands as it is.
"""

from __future__ import annotations

import pytest

from client.pseudonyms import PseudonymKey
from tasks.imageio import load_image, save_nifti
from tasks.manifest import Manifest, split_of
from tests.helpers.cli import assert_trains, spinefl
from tests.helpers.dicom_series import write_series

pytestmark = pytest.mark.slow
SPLIT = (0.5, 0.25, 0.25)


@pytest.fixture(scope="module")
def prepared(tiny_cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("hospital")
    export = root / "export"
    for row in tiny_cohort.select(modality=("CT", "MR")).rows():
        folder = export / row.patient_id
        image, mask = load_image(tiny_cohort.path(row)), load_image(tiny_cohort.path(row, "mask"))
        if row.modality == "CT":
            write_series(image, folder / row.series_id, PatientID=row.patient_id)
            save_nifti(mask, folder / row.series_id / "ct_seg.nii.gz")
        else:
            save_nifti(image, folder / f"{row.sequence.lower()}.nii.gz")
            save_nifti(mask, folder / f"{row.sequence.lower()}_mask.nii.gz")
    key = root / "test.key"
    key.write_bytes(_key_with_every_split(tiny_cohort.table.patient_id.unique()))
    key.chmod(0o600)
    out = root / "prepared"
    done = spinefl("hospital", "prepare", "--input", str(export), "--out", str(out), "--key",
                   str(key), "--split", ",".join(map(str, SPLIT)))
    assert done.returncode == 0, done.stderr
    return out


def _key_with_every_split(patients) -> bytes:
    """A key under which these 9 patients fall in all three splits: splits come from a hash
    of each pseudonym (stable as a hospital's data grows), so a small cohort can lack one."""
    for seed in range(100):
        secret = bytes([seed] * 32)
        key = PseudonymKey(secret)
        splits = {split_of(key.pseudonym("patient", p, "P"), SPLIT) for p in patients}
        if splits == {"train", "val", "test"}:
            return secret
    raise AssertionError("no key found")


def test_prepared_manifest_keeps_every_labelled_image(prepared, tiny_cohort):
    table = Manifest.load(prepared / "manifest.csv").table
    expected = tiny_cohort.select(modality=("CT", "MR")).table
    assert len(table) == len(expected)
    assert (table["mask"] != "").all()
    assert table.patient_id.nunique() == expected.patient_id.nunique()
    assert set(table.split) == {"train", "val", "test"}


def test_prepared_folder_trains(prepared, tmp_path):
    assert_trains(prepared / "manifest.csv", tmp_path)


def test_prepared_folder_simulates(prepared, tmp_path):
    config = tmp_path / "simulate.toml"
    config.write_text(f"""
[data]
manifest = "{prepared / 'manifest.csv'}"
[phantoms]
enabled = false
[partition]
method = "iid"
hospitals = 2
[baselines]
pooled = false
local = false
[task]
name = "segmentation"
channels = [8, 16, 32]
spacing = [3.0, 3.0, 3.0]
patch_size = [48, 48, 48]
[train]
batch_size = 8
[federation]
rounds = 1
local_steps = 2
min_hospitals = 2
[output]
dir = "{tmp_path / 'sim'}"
""")
    done = spinefl("simulate", "--config", str(config), timeout=600)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "sim" / "federated" / "model.pt").is_file()
