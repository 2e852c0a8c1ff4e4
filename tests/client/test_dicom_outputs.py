"""`spinefl predict --dicom`: a DICOM SEG and a DICOM SR (TID 1500) that pydicom and highdicom
read back, that reference the series they were predicted on, hold what the NIfTI and JSON
outputs hold, and that dciodvfy (dicom3tools) finds no error in."""

from __future__ import annotations

import json
import shutil
import subprocess

import highdicom as hd
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from pydicom.sr.codedict import codes

from client.dicom_outputs import site_code, write_report
from client.prediction import predict
from tasks.checkpoint import save_checkpoint
from tasks.imageio import load_image
from tasks.outputs import Finding
from tests.helpers.cli import spinefl
from tests.helpers.dicom_series import write_series
from tests.helpers.task_defaults import default_task


def dciodvfy_errors(path) -> list[str]:
    """dciodvfy's error lines for a file (its warnings are advice); skipped where dicom3tools
    is not installed (CI installs it)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian's dicom3tools) is not installed")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def measurement_groups(item) -> list:
    """The SR tree's measurement groups (TID 1501, concept DCM 125007), wherever they sit."""
    found = []
    for child in getattr(item, "ContentSequence", []):
        if child.ConceptNameCodeSequence[0].CodeValue == "125007":
            found.append(child)
        else:
            found += measurement_groups(child)
    return found


def a_ct_series(tiny_cohort, folder):
    row = tiny_cohort.select(modality="CT").rows()[0]
    files = write_series(load_image(tiny_cohort.path(row)), folder)
    return row, pydicom.dcmread(files[0]), files


@pytest.mark.slow  # `spinefl predict` in a real process
def test_a_label_map_becomes_a_seg_of_the_series_it_was_predicted_on(tiny_cohort, tmp_path):
    task = default_task("segmentation")  # level labels: segment numbers are not label values
    task.settings.update(channels=[8, 16], spacing=[4.0, 4.0, 4.0], labels="levels")
    task = type(task)(task.settings)
    torch.manual_seed(7)
    model = save_checkpoint(tmp_path / "model.pt", task, task.build_model())
    inputs = tmp_path / "inputs"
    row, source, files = a_ct_series(tiny_cohort, inputs / "ct")
    shutil.copy(tiny_cohort.path(row), inputs / "ct.nii.gz")  # a NIfTI: no DICOM to refer to
    out = tmp_path / "out"
    done = spinefl("predict", "--model", str(model), "--input", str(inputs), "--out", str(out),
                   "--dicom", "--modality", "CT")
    assert done.returncode == 0, done.stderr
    report = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("output")
    nifti_row = report.loc[str(out / "ct_pred.nii.gz")]
    assert nifti_row.dicom == "none: the input is not a DICOM series"
    seg_path = next((out / "ct").glob("series-*_seg.dcm"))
    assert str(seg_path) in set(report.dicom)

    seg = pydicom.dcmread(seg_path)
    assert seg.Modality == "SEG" and seg.SOPClassUID == pydicom.uid.SegmentationStorage
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    sources = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == sources

    # One segment per class, typed with its level's code; frame by frame, the segments hold
    # the label map the NIfTI holds (segment number -> its label -> the label's value).
    read = hd.seg.segread(seg_path)
    classes = json.loads((out / "labels.json").read_text())["classes"]
    value_of = {name: int(value) for value, name in classes.items()}
    labels = {n: read.get_segment_description(n).segment_label
              for n in read.get_segment_numbers()}
    assert sorted(labels.values()) == sorted(n for n in value_of if n != "background")
    number_of = {label: n for n, label in labels.items()}
    assert read.get_segment_description(number_of["L3"]).segmented_property_type == \
        codes.SCT.L3Vertebra
    to_value = np.zeros(max(labels) + 1, dtype=np.int64)
    for number, label in labels.items():
        to_value[number] = value_of[label]
    predicted = np.asarray(nib.load(next((out / "ct").glob("series-*_pred.nii.gz"))).dataobj)
    assert len(np.unique(predicted)) >= 3
    for f in files[:: max(1, len(files) // 5)]:
        instance = pydicom.dcmread(f)
        z = int(instance.InstanceNumber) - 1
        pixels = read.get_pixels_by_source_instance(
            source_sop_instance_uids=[instance.SOPInstanceUID], combine_segments=True)[0]
        np.testing.assert_array_equal(to_value[pixels], predicted[:, :, z].T)
    # 3D Slicer's colour table of the label convention, beside the predictions.
    table = (out / "labels.ctbl").read_text().splitlines()
    assert table[2].startswith("0 background 0 0 0 0")
    assert [line.split()[1] for line in table[3:]] == [classes[v] for v in classes if v != "0"]
    assert dciodvfy_errors(seg_path) == []


def test_disc_grades_become_an_sr_measurement_report_of_the_series(tiny_cohort, tmp_path):
    task = default_task("grading")
    torch.manual_seed(3)
    model = save_checkpoint(tmp_path / "grading.pt", task, task.build_model())
    row, source, _ = a_ct_series(tiny_cohort, tmp_path / "inputs" / "ct")
    stem = f"series-{source.SeriesInstanceUID}"
    (tmp_path / "ctd").mkdir()
    shutil.copy(tiny_cohort.path(row, "centroids"), tmp_path / "ctd" / f"{stem}_ctd.json")
    out = tmp_path / "out"
    report = predict(model, tmp_path / "inputs", out, "CT", extra={"centroids": tmp_path / "ctd"},
                     dicom=True)
    assert list(report.status) == ["written"], report.reason.tolist()
    sr_path = out / "ct" / f"{stem}_sr.dcm"
    assert report.dicom.iloc[0] == str(sr_path)
    grades = json.loads((out / "ct" / f"{stem}_grades.json").read_text())

    sr = hd.sr.srread(sr_path)
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = sr.content.get_planar_roi_measurement_groups() + \
        sr.content.get_volumetric_roi_measurement_groups()
    assert groups == []  # findings of a level, not of a drawn region
    measured = {}
    for group in measurement_groups(sr):
        items = {item.ConceptNameCodeSequence[0].CodeValue: item
                 for item in group.ContentSequence}
        level = items[codes.DCM.TrackingIdentifier.value].TextValue
        grade = items["pfirrmann-grade"].MeasuredValueSequence[0].NumericValue
        stenosis = items[codes.SCT.Stenosis.value].ConceptCodeSequence[0].CodeValue
        site = items[codes.SCT.FindingSite.value].ConceptCodeSequence[0].CodeValue
        measured[level] = (int(grade), stenosis, site)
    expected = {level.upper().replace("_", "/"): v for level, v in grades.items()}
    assert set(measured) == set(expected) and expected
    for level, (grade, stenosis, _) in measured.items():
        assert grade == expected[level]["pfirrmann"]
        assert stenosis == {"normal/mild": "normal-mild", "moderate": codes.SCT.Moderate.value,
                            "severe": codes.SCT.Severe.value}[
            expected[level]["spinal_canal_stenosis"]]
    if "L4/L5" in measured:
        assert measured["L4/L5"][2] == codes.SCT.L4L5Disc.value
    assert dciodvfy_errors(sr_path) == []


def test_a_cobb_angle_is_reported_in_degrees_with_its_snomed_concept(tiny_cohort, tmp_path):
    _, _, files = a_ct_series(tiny_cohort, tmp_path / "ct")
    path = write_report([Finding("spine", measurements=(("Cobb angle", 23.5, "deg"),))],
                        "cobb", files, tmp_path / "cobb_sr.dcm")
    sr = hd.sr.srread(path)
    (group,) = measurement_groups(sr)
    (angle,) = [i for i in group.ContentSequence if i.ValueType == "NUM"]
    assert angle.ConceptNameCodeSequence[0].CodeValue == codes.SCT.CobbAngle.value
    assert float(angle.MeasuredValueSequence[0].NumericValue) == 23.5
    unit = angle.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("deg", "UCUM")
    assert dciodvfy_errors(path) == []


def test_genant_grades_are_reported_per_vertebra(tiny_cohort, tmp_path):
    _, _, files = a_ct_series(tiny_cohort, tmp_path / "ct")
    findings = [Finding("L1", measurements=(("Genant grade", 2, "{grade}"),)),
                Finding("L2", measurements=(("Genant grade", 0, "{grade}"),))]
    path = write_report(findings, "fracture", files, tmp_path / "fracture_sr.dcm")
    reported = {}
    for group in measurement_groups(hd.sr.srread(path)):
        items = {item.ConceptNameCodeSequence[0].CodeValue: item
                 for item in group.ContentSequence}
        site = items[codes.SCT.FindingSite.value].ConceptCodeSequence[0].CodeValue
        reported[site] = int(items["genant-grade"].MeasuredValueSequence[0].NumericValue)
    assert reported == {codes.SCT.L1Vertebra.value: 2, codes.SCT.L2Vertebra.value: 0}
    assert dciodvfy_errors(path) == []


def test_every_level_of_the_convention_gets_its_own_snomed_code():
    from tasks.blocks.classes import class_table

    assert site_code("L3") == codes.SCT.L3Vertebra
    assert site_code("L4/L5") == codes.SCT.L4L5Disc
    assert site_code("L5/S1") == codes.SCT.L5S1Disc
    assert site_code("S") == codes.SCT.Sacrum
    assert site_code("canal") == codes.SCT.SpinalCanalStructure
    assert site_code("T13") == codes.SCT.Vertebra  # no code of its own: its structure's
    levels = class_table("levels").names[1:]
    assert len({site_code(name).value for name in levels}) == len(levels)
