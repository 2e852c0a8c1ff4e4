"""`spinefl hospital prepare` on a messy PACS export: what is kept, what is skipped and why,
the input untouched, pseudonyms stable, geometry right, and a second run that skips done work."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from client.confidentiality import Profile
from tasks.imageio import LPS_TO_RAS, load_image
from tasks.manifest import Manifest
from tests.helpers import pacs_export
from tests.helpers.cli import assert_one_line_error, spinefl

# Table E.1-1 actions under the default profile, by tag.
ACTIONS = {tag: action for tag, (action, _) in Profile().actions().items()}


def _hashes(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return pacs_export.build(tmp_path_factory.mktemp("pacs") / "export")


@pytest.fixture(scope="module")
def prepared(export, tmp_path_factory):
    """The export prepared once (with de-identified DICOM); the input's hashes before and after."""
    out = tmp_path_factory.mktemp("prepared") / "hospital-a"
    before = _hashes(export)
    done = spinefl("hospital", "prepare", "--input", str(export), "--out", str(out), "--dicom")
    assert done.returncode == 0, done.stderr
    return out, before, _hashes(export), done


def _report(out: Path) -> pd.DataFrame:
    """The report indexed by each item's input path, with the reasons as the key side keeps
    them (.spinefl/sources.csv)."""
    report = pd.read_csv(out / "report.csv", keep_default_na=False)
    sources = pd.read_csv(out / ".spinefl" / "sources.csv", keep_default_na=False)
    return report.drop(columns="reason").merge(sources, on="item").set_index("source")


def test_the_shared_report_names_no_input_file(prepared):
    out, *_ = prepared
    text = (out / "report.csv").read_text()
    assert "MRN00" not in text and "slice0001.dcm" not in text and "nifti/" not in text
    report = pd.read_csv(out / "report.csv", keep_default_na=False).set_index("item")
    truncated = _report(out).loc["MRN002/truncated"]
    assert truncated.reason.startswith("slice0001.dcm: truncated file")
    assert report.loc[truncated["item"], "reason"].startswith("<input name>: truncated file")


def test_every_item_is_kept_or_skipped_with_its_reason(prepared):
    out, *_ = prepared
    report = _report(out)
    assert set(report.index) == set(pacs_export.EXPECTED)
    for item, (status, reason) in pacs_export.EXPECTED.items():
        assert report.loc[item, "status"] == status, (item, report.loc[item].to_dict())
        assert reason in report.loc[item, "reason"], (item, report.loc[item, "reason"])


def test_input_is_byte_for_byte_unchanged(prepared):
    _, before, after, _ = prepared
    assert before == after


def test_manifest_is_valid_and_holds_no_identifier(prepared, export):
    out, *_ = prepared
    manifest = Manifest.load(out / "manifest.csv")
    table = manifest.table
    assert len(table) == sum(s == "kept" for s, _ in pacs_export.EXPECTED.values())
    text = (out / "manifest.csv").read_text()
    for identifier in ("MRN001", "MRN002", "Doe", "pat9", "export"):
        assert identifier not in text
    assert set(table.site) == {"hospital-a"}
    ct, mr = (table[table.patient_id == table.patient_id.iloc[0]]
              .set_index("modality").loc[m] for m in ("CT", "MR"))
    assert ct.patient_id == mr.patient_id  # one patient, two series
    assert mr.sequence == "T2" and ct.mask
    t1 = table[table.sequence == "T1"].iloc[0]
    assert t1.mask  # the NIfTI image's mask was paired by name


def test_volume_geometry_and_hu_come_from_the_headers(prepared, export):
    out, *_ = prepared
    table = Manifest.load(out / "manifest.csv").table
    ct = table[(table.modality == "CT") & (table["mask"] != "")].iloc[0]
    volume = load_image(out / ct.image)
    slices = sorted((pydicom.dcmread(p) for p in (export / "MRN001" / "ct").glob("*.dcm")),
                    key=lambda s: float(s.ImagePositionPatient[2]))
    lps = LPS_TO_RAS @ volume.affine
    np.testing.assert_allclose(lps[:3, 3], [float(v) for v in slices[0].ImagePositionPatient])
    row_spacing, col_spacing = (float(v) for v in slices[0].PixelSpacing)
    assert volume.spacing == pytest.approx((col_spacing, row_spacing,
                                            float(slices[1].ImagePositionPatient[2]) -
                                            float(slices[0].ImagePositionPatient[2])))
    hu = slices[3].pixel_array.T * float(slices[3].RescaleSlope) + float(
        slices[3].RescaleIntercept)
    np.testing.assert_allclose(volume.array[:, :, 3], hu)
    mask = load_image(out / ct["mask"])
    np.testing.assert_allclose(mask.affine, volume.affine, atol=1e-4)
    assert set(np.unique(mask.array)) == {0, 20, 120, 200}


def test_written_dicom_is_deidentified(prepared):
    out, *_ = prepared
    files = sorted((out / "dicom").rglob("*.dcm"))
    assert len(files) == 6 + 6 + 6 + 1  # CT, MR, duplicates (one copy dropped), enhanced CT
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientID.startswith("P") and ds.PatientID == str(ds.PatientName)
        assert path.parts[-4] == ds.PatientID
        for element in [*ds.iterall(), *ds.file_meta]:  # nested items too
            action = ACTIONS.get(f"{element.tag.group:04X},{element.tag.element:04X}")
            assert action != "X", element
            if action == "Z" and element.keyword not in ("PatientName", "PatientID"):
                assert not element.value, element
        assert "Doe" not in str(ds) and "MRN" not in str(ds) and "Elsewhere" not in str(ds)


def test_key_is_owner_only_and_pseudonyms_are_stable_across_runs(prepared, export, tmp_path):
    out, *_ = prepared
    key = out / ".spinefl" / "pseudonym.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    first = Manifest.load(out / "manifest.csv").table
    again = tmp_path / "again"
    done = spinefl("hospital", "prepare", "--input", str(export / "MRN001"), "--out",
                   str(again), "--key", str(key))
    assert done.returncode == 0, done.stderr
    assert set(Manifest.load(again / "manifest.csv").table.patient_id) <= set(first.patient_id)
    other = tmp_path / "other-key"
    done = spinefl("hospital", "prepare", "--input", str(export / "MRN001"), "--out",
                   str(other))
    assert not set(Manifest.load(other / "manifest.csv").table.patient_id) & \
        set(first.patient_id)


def test_second_run_skips_what_is_done(prepared, export):
    out, *_ = prepared
    images = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.nii.gz")}
    manifest_before = Manifest.load(out / "manifest.csv").table
    done = spinefl("hospital", "prepare", "--input", str(export), "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = _report(out)
    kept = [i for i, (s, _) in pacs_export.EXPECTED.items() if s == "kept"]
    assert set(report.loc[kept, "status"]) == {"unchanged"}
    assert {p: p.stat().st_mtime_ns for p in images} == images
    pd.testing.assert_frame_equal(Manifest.load(out / "manifest.csv").table, manifest_before)


def test_burned_in_images_are_kept_only_when_allowed(export, tmp_path):
    done = spinefl("hospital", "prepare", "--input", str(export / "MRN002"), "--out",
                   str(tmp_path / "out"), "--allow-burned-in")
    assert done.returncode == 0, done.stderr
    assert _report(tmp_path / "out").loc["burned", "status"] == "kept"


def test_output_inside_the_input_is_refused(export):
    done = spinefl("hospital", "prepare", "--input", str(export), "--out",
                   str(export / "prepared"))
    assert_one_line_error(done, "must not be inside the input")
    assert not (export / "prepared").exists()


def test_a_folder_without_images_says_so_and_still_reports(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("nothing here")
    done = spinefl("hospital", "prepare", "--input", str(tmp_path / "in"), "--out",
                   str(tmp_path / "out"))
    assert_one_line_error(done, "no image could be prepared")
    assert _report(tmp_path / "out").loc["readme.txt", "reason"] == "not a DICOM file"


def test_a_key_readable_by_others_is_a_one_line_error(export, tmp_path):
    key = tmp_path / "shared.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o644)
    done = spinefl("hospital", "prepare", "--input", str(export / "MRN001"), "--out",
                   str(tmp_path / "out"), "--key", str(key))
    assert_one_line_error(done, "readable by others", "chmod 600")


def _nifti_export(tiny_cohort, folder: Path, patients: tuple[str, ...]) -> Path:
    """Phantom patients as a NIfTI export: P0001/ct.nii.gz with its mask and centroids."""
    import shutil

    for patient in patients:
        shutil.copytree(tiny_cohort.root / patient, folder / patient)
    return folder


def test_a_second_export_adds_patients_and_centroids_stay_with_their_image(tiny_cohort,
                                                                         tmp_path):
    from tasks.points import read_points

    out = tmp_path / "prepared"
    first = _nifti_export(tiny_cohort, tmp_path / "first", ("P0001", "P0002"))
    second = _nifti_export(tiny_cohort, tmp_path / "second", ("P0003",))
    assert spinefl("hospital", "prepare", "--input", str(first), "--out", str(out)
                   ).returncode == 0
    table = Manifest.load(out / "manifest.csv").table
    assert len(table) == 2 and (table.centroids != "").all()
    def points(paths) -> list[str]:
        return sorted(json.dumps(read_points(p), sort_keys=True) for p in paths)

    assert points(out / path for path in table.centroids) == \
        points(first.rglob("*_ctd.json"))
    report = _report(out)
    assert not report.reason.str.contains("not a DICOM file").any(), "centroids were dropped"
    done = spinefl("hospital", "prepare", "--input", str(second), "--out", str(out))
    assert done.returncode == 0, done.stderr
    merged = Manifest.load(out / "manifest.csv").table
    assert set(table.patient_id) < set(merged.patient_id) and len(merged) == 3


def test_a_pseudonym_key_is_created_only_when_asked(tiny_cohort, tmp_path):
    source = _nifti_export(tiny_cohort, tmp_path / "export", ("P0001",))
    typo = tmp_path / "keys" / "hospital.kye"
    refused = spinefl("hospital", "prepare", "--input", str(source), "--out",
                      str(tmp_path / "a"), "--key", str(typo))
    assert_one_line_error(refused, str(typo), "no pseudonym key there", "--new-key")
    assert not typo.exists() and not (tmp_path / "a" / "manifest.csv").exists()
    done = spinefl("hospital", "prepare", "--input", str(source), "--out", str(tmp_path / "a"),
                   "--key", str(typo), "--new-key")
    assert done.returncode == 0 and typo.is_file()
    # The default key of a folder that already holds a dataset is never made anew.
    out = tmp_path / "b"
    assert spinefl("hospital", "prepare", "--input", str(source), "--out", str(out)
                   ).returncode == 0
    (out / ".spinefl" / "pseudonym.key").unlink()
    assert_one_line_error(spinefl("hospital", "prepare", "--input", str(source), "--out",
                                  str(out)), "no pseudonym key there")


def test_a_damaged_state_file_is_rebuilt(tiny_cohort, tmp_path):
    source = _nifti_export(tiny_cohort, tmp_path / "export", ("P0001", "P0002"))
    out = tmp_path / "prepared"
    assert spinefl("hospital", "prepare", "--input", str(source), "--out", str(out)
                   ).returncode == 0
    before = Manifest.load(out / "manifest.csv").table
    (out / ".spinefl" / "done.json").write_text("")  # as a full disk once left it
    done = spinefl("hospital", "prepare", "--input", str(source), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "damaged" in done.stdout
    pd.testing.assert_frame_equal(Manifest.load(out / "manifest.csv").table, before)
