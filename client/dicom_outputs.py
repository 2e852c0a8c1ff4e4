"""Predictions as DICOM objects a PACS and a viewer take (`spinefl predict --dicom`), made with
highdicom from the source series' own files:

- a label map becomes a DICOM Segmentation (binary, one segment per class of the model,
  SNOMED CT codes of each vertebra, disc or the canal, the convention's colours), on the
  source series' frame of reference and referencing its instances;
- a record's findings (a Cobb angle, disc grades) become a Comprehensive 3D SR measurement
  report (TID 1500): one measurement group per finding, with its site, measurements (UCUM
  units) and graded evaluations; the source series is the report's evidence (a finding
  is of a level, not of one slice).

Each object is a new series of the source's study (new series and instance UIDs), made by
an algorithm named with the task and spinefl's version.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from tasks.errors import UserError
from tasks.files import atomic
from tasks.labels import class_colour
from tasks.outputs import Finding

# spinefl's own concepts, where SNOMED CT, LOINC and DICOM have none (a private scheme).
SCHEME = "99SPINEFL"
_STRUCTURES = {"vertebra": codes.SCT.Vertebra,
               "disc": Code("360499006", "SCT", "Intervertebral disc structure"),
               "canal": codes.SCT.SpinalCanalStructure,
               "spine": codes.SCT.StructureOfVertebralColumn,
               "S": codes.SCT.Sacrum, "Co": codes.SCT.CoccygealVertebraStructure}
_MEASURED = {"Cobb angle": codes.SCT.CobbAngle,
             "Pfirrmann grade": Code("pfirrmann-grade", SCHEME, "Pfirrmann grade"),
             "Genant grade": Code("genant-grade", SCHEME, "Genant fracture grade")}
_UNITS = {"deg": codes.UCUM.Degree, "{grade}": Code("{grade}", "UCUM", "grade")}
_EVALUATED = {"Spinal canal stenosis": codes.SCT.Stenosis}
# RSNA's canal stenosis grades: "normal/mild" is one grade, not SNOMED CT's mild.
_GRADES = {"normal/mild": Code("normal-mild", SCHEME, "Normal or mild"),
           "moderate": codes.SCT.Moderate, "severe": codes.SCT.Severe}


def site_code(name: str) -> Code:
    """The SNOMED CT code of a site or class named as the label convention names it ('L4',
    'L4/L5', 'S', 'canal'; 'vertebra', 'disc', 'spine'); a level without a code of its own
    (T13, L6) gets its structure's."""
    if name in _STRUCTURES:
        return _STRUCTURES[name]
    if "/" in name:
        key = name.replace("/", "") + "Disc"
        return getattr(codes.SCT, key, _STRUCTURES["disc"])
    return getattr(codes.SCT, f"{name}Vertebra", _STRUCTURES["vertebra"])


def _algorithm(task: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(name=f"spinefl {task}", version=version("spinefl"),
                                              family=codes.DCM.ArtificialIntelligence)


# Type 2 attributes of the Patient and General Study modules the new objects copy: present in
# every conforming source, possibly empty; a source lacking one (e.g. a stripped export) is
# read as if it held it empty.
_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
           "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _sources(paths: list[Path]) -> list[pydicom.Dataset]:
    """The source files' headers, in order (their pixels were decoded for the prediction;
    the new objects need only the headers)."""
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    for ds in datasets:
        for keyword in _COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return datasets


def _series_number(source: pydicom.Dataset) -> int:
    return int(source.get("SeriesNumber", 0) or 0) + 1000


def write_segmentation(labels: np.ndarray, classes: dict[int, str], task: str,
                       sources: list[Path], path: Path) -> Path:
    """A DICOM SEG of ``labels`` (the convention's values on the source grid: (X, Y, Z) for
    a slice series in its ordered ``sources``, (U, V) for a radiograph) with one segment per
    value of ``classes`` but background."""
    datasets = _sources(sources)
    frames = labels.T[None] if labels.ndim == 2 else np.moveaxis(labels, 2, 0).transpose(0, 2, 1)
    if len(frames) != len(datasets):
        raise UserError(f"{path.name}: {len(frames)} frames for {len(datasets)} source files "
                        "(DICOM SEG is written for single-frame slices or one radiograph)")
    values = [v for v in sorted(classes) if v != 0]
    algorithm = _algorithm(task)
    numbers = np.zeros(max(max(values), int(labels.max())) + 1, dtype=np.uint8)
    numbers[values] = np.arange(1, len(values) + 1)
    segments = [hd.seg.SegmentDescription(
        segment_number=i, segment_label=classes[v],
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=site_code(classes[v]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, display_color=hd.color.CIELabColor.from_rgb(
            *(round(255 * c) for c in class_colour(v, classes[v]))))
        for i, v in enumerate(values, start=1)]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=numbers[frames.astype(np.int64)],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=hd.UID(), series_number=_series_number(datasets[0]),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="spinefl",
        manufacturer_model_name=f"spinefl {task}", software_versions=version("spinefl"),
        device_serial_number="0", series_description=f"spinefl {task}",
        omit_empty_frames=False)
    return _save(seg, path)


def write_report(findings: list[Finding], task: str, sources: list[Path], path: Path) -> Path:
    """A Comprehensive 3D SR measurement report (TID 1500) of ``findings`` on the source."""
    datasets = _sources(sources)
    groups = [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=finding.site),
        finding_sites=[hd.sr.FindingSite(site_code(finding.site))],
        algorithm_id=hd.sr.AlgorithmIdentification(name=f"spinefl {task}",
                                                   version=version("spinefl")),
        measurements=[hd.sr.Measurement(name=_MEASURED[name], value=value, unit=_UNITS[unit])
                      for name, value, unit in finding.measurements],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(_EVALUATED[name], _GRADES[grade])
                                 for name, grade in finding.evaluations])
        for finding in findings]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=f"spinefl {task}", manufacturer_name="spinefl",
            model_name=f"spinefl {task}"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport)
    sr = hd.sr.Comprehensive3DSR(
        evidence=datasets, content=report[0], series_instance_uid=hd.UID(),
        series_number=_series_number(datasets[0]), sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="spinefl", is_complete=True, is_final=False,
        is_verified=False)
    scheme = pydicom.Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "spinefl concepts"
    scheme.CodingSchemeResponsibleOrganization = "spinefl"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return _save(sr, path)


def _save(dataset: pydicom.Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic(path) as temporary:
        dataset.save_as(temporary, enforce_file_format=True)
    return path
