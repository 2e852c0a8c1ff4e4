"""De-identification checked attribute by attribute, from PS3.15 Table E.1-1 itself.

Every attribute the table lists (but the command group 0000, which never lies in a
stored file) is set on a real CT series with a value of its own, in each VR the data
dictionary allows (slices take them in turn; attributes newer than pydicom's dictionary
in the VR their name implies), at the top level and again inside an item of a sequence
the table does not list, with the overlay, curve and private rows too. The file meta
carries the sender's AE titles and private information, the preamble text, and one
element is a public tag pydicom does not know (UN). The series lies in a folder named
by a patient's name, beside NIfTI images in folders named by patients (one with spaces,
whose broken file makes nibabel quote its path), a NIfTI header and centroid files
carrying identifying text. `hospital prepare --dicom` runs on it (in process), and then:

- no original value (text, bytes, UID, date, number as text) is in any output file
  outside ``.spinefl`` (DICOM, NIfTI headers, centroids, manifest, report, profile);
- in the written DICOM, each attribute got its action, at both levels: X absent, Z
  empty, D a dummy valid for its VR, U remapped consistently across the series, C dates
  shifted by the patient's offset; K (what an option retains) the original.
"""

from __future__ import annotations

import copy
import datetime as dt
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value
from rich.console import Console

from client.confidentiality import Profile, table
from client.deidentify import DUMMIES
from client.prepare import PrepareOptions, prepare
from client.pseudonyms import PseudonymKey
from tasks.imageio import Volume
from tests.helpers.dicom_series import write_series

PATIENT = "ORIGNAME^PATIENT"
UNKNOWN_TAG = 0x0018FFF0  # a public tag no dictionary names
# Attributes write_series sets per slice, and attributes the test gives their own value
# in the file meta (group 0002 cannot lie in the data set).
PER_SLICE = {"SOPInstanceUID", "MediaStorageSOPInstanceUID"}
PSEUDONYMS = ("0010,0010", "0010,0020")  # PatientName, PatientID
PROFILES = {
    "basic": Profile("basic", ()),
    "default": Profile(),
    "retain-all": Profile("retain-all", ("retain_longitudinal_full_dates",
                                         "retain_patient_characteristics",
                                         "retain_device_identity",
                                         "retain_institution_identity")),
}


def _vrs(row: dict[str, str]) -> list[str]:
    """Every VR the data dictionary allows ("US or SS"); slices take them in turn."""
    if row["keyword"]:
        return dictionary_VR(row["keyword"]).split(" or ")
    name = row["name"]
    return ["SQ" if name.endswith("Sequence") else "DT" if name.endswith("DateTime")
            else "UR" if name.endswith("URI") else "LO"]


def _value(vr: str, n: int) -> object:
    """A value of ``vr`` no other attribute has (dates 3700 days apart: no shift of at most
    3650 days makes one attribute's date another's)."""
    day = dt.date(1000, 1, 1) + dt.timedelta(days=3700 * n)
    text = {"DA": day.strftime("%Y%m%d"), "DT": day.strftime("%Y%m%d") + f"1011{n % 60:02d}",
            "TM": f"1011{n % 60:02d}.{n:06d}", "AS": f"{n % 1000:03d}Y", "DS": str(700000 + n),
            "IS": str(700000 + n), "UI": f"1.2.826.0.1.3680043.99.{n}",
            "UR": f"http://example.org/ORIG{n:04d}", "AE": f"ORIG{n:04d}",
            "PN": f"ORIG{n:04d}^NAME"}.get(vr)
    if text is not None:
        return text
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return 30000 + n
    if vr in ("FL", "FD"):
        return 30000.5 + n
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return f"ORIG{n:04d}".encode()
    return f"ORIG{n:04d}"


def _item(n: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.98.{n}"
    return item


def _originals() -> dict[str, tuple[str, object]]:
    """Table tag -> (VR, value) for every listed attribute the test sets (the value fits
    each VR the attribute may take; the first is returned)."""
    values = {}
    for n, (tag, row) in enumerate(sorted(table().rows.items())):
        if tag.startswith("0000") or "x" in tag or "g" in tag or row["keyword"] in PER_SLICE:
            continue
        vr = _vrs(row)[0]
        values[tag] = (vr, [_item(n)] if vr == "SQ" else _value(vr, n))
    return values


def _identified_export(root: Path) -> tuple[Path, dict]:
    originals = _originals()
    folder = root / PATIENT / "ct"
    rng = np.random.default_rng(0)
    paths = write_series(Volume(rng.normal(40, 5, (10, 9, 4)), np.diag([1.0, 1.0, 2.5, 1.0])),
                         folder, PatientName=PATIENT, PatientID="ORIGMRN01")
    rows = table().rows
    for i, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        nested = Dataset()
        for tag, (_, value) in originals.items():
            vrs = _vrs(rows[tag])
            number = int(tag.replace(",", ""), 16)
            if tag.startswith("0002"):
                ds.file_meta.add_new(number, vrs[i % len(vrs)], value)
                continue
            ds.add_new(number, vrs[i % len(vrs)], value)
            nested.add_new(number, vrs[i % len(vrs)], copy.deepcopy(value))
        ds.RelatedSeriesSequence = [nested]  # not in the table: its items are cleaned
        ds.add_new(0x50000022, "LO", "ORIGCURVE")
        ds.add_new(0x60004000, "LT", "ORIGOVERLAY")
        ds.add_new(0x60003000, "OW", b"\0\0")
        ds.private_block(0x0011, "ORIGCREATOR", create=True).add_new(0x01, "LO", "ORIGPRIVATE")
        ds.add_new(UNKNOWN_TAG, "UN", b"ORIGUNKNOWN\0")
        meta = ds.file_meta
        meta.SourceApplicationEntityTitle = meta.SendingApplicationEntityTitle = "ORIGAE"
        meta.ImplementationVersionName = "ORIGIMPL"
        meta.PrivateInformationCreatorUID = "1.2.826.0.1.3680043.97.1"
        meta.PrivateInformation = b"ORIGPRIVINFO"
        ds.preamble = b"ORIGPREAMBLE".ljust(128, b"\0")
        ds.save_as(path, enforce_file_format=True)
    # NIfTI images in folders named by patients: a header, centroids naming them.
    image = nib.Nifti1Image(rng.normal(0, 1, (8, 8, 4)).astype(np.float32), np.eye(4))
    image.header["descrip"] = b"ORIGDESCRIP"
    for name, point in (("ORIGFOLDER", {"note": "ORIGNOTE"}),
                        ("ORIGFOLDER2", {"X": "ORIGXTEXT"})):
        (root / name).mkdir()
        nib.save(image, root / name / "ct.nii.gz")
        (root / name / "ct_ctd.json").write_text(json.dumps(
            [{"direction": ["R", "A", "S"]}, {"label": 20, "X": 4, "Y": 4, "Z": 2, **point}]))
    (root / "ORIGSP1 ORIGSP2").mkdir()  # nibabel's error quotes this path
    (root / "ORIGSP1 ORIGSP2" / "ct.nii.gz").write_bytes(b"not a gzip file")
    return root, originals


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[Path, dict]:
    return _identified_export(tmp_path_factory.mktemp("export"))


def _prepared(export, tmp_path: Path, profile: Profile) -> tuple[Path, PseudonymKey]:
    out = tmp_path / "out"
    prepare(PrepareOptions(export[0], out, "h", write_dicom=True, profile=profile),
            Console(quiet=True))
    return out, PseudonymKey.load_or_create(out / ".spinefl" / "pseudonym.key", False)


def _texts(originals: dict, kept: set[str]) -> set[bytes]:
    texts = {b"ORIGNAME", b"ORIGMRN01", b"ORIGCURVE", b"ORIGOVERLAY", b"ORIGPRIVATE",
             b"ORIGCREATOR", b"ORIGDESCRIP", b"ORIGFOLDER", b"ORIGNOTE", b"ORIGXTEXT",
             b"ORIGSP1", b"ORIGSP2", b"ORIGUNKNOWN", b"ORIGAE", b"ORIGIMPL", b"ORIGPRIVINFO",
             b"ORIGPREAMBLE", b"1.2.826.0.1.3680043.98.", b"1.2.826.0.1.3680043.97."}
    for tag, (_, value) in originals.items():
        if tag not in kept and isinstance(value, str | bytes):
            texts.add(value.encode() if isinstance(value, str) else value)
    return texts


def _output_bytes(out: Path):
    for path in out.rglob("*"):
        if path.is_file() and ".spinefl" not in path.relative_to(out).parts:
            data = path.read_bytes()
            yield path, gzip.decompress(data) if path.suffix == ".gz" else data


@pytest.mark.parametrize("name", PROFILES)
def test_no_original_value_leaves_prepare(export, tmp_path, name):
    profile = PROFILES[name]
    out, _ = _prepared(export, tmp_path, profile)
    originals = export[1]
    actions = profile.actions()
    kept = {t for t, (a, _) in actions.items() if a == "K" or (a == "C" and originals.get(
        t, ("",))[0] == "TM")}
    texts = _texts(originals, kept)
    written = list(_output_bytes(out))
    assert len([p for p, _ in written if p.suffix == ".dcm"]) == 4
    assert {p.name for p, _ in written} >= {"manifest.csv", "report.csv", "profile.toml"}
    for path, data in written:
        found = [t for t in texts if t in data]
        assert not found, (path, found[:5])
    # What an option keeps is kept, at both levels (the scan would be vacuous otherwise).
    dicom = pydicom.dcmread(next(p for p, _ in written if p.suffix == ".dcm"))
    retained = [t for t in kept if originals[t][0] not in ("PN", "UI", "SQ")]
    if name == "retain-all":
        assert len(retained) > 100
    for level in (dicom, dicom.RelatedSeriesSequence[0]):
        for tag in retained:
            element = level.get(int(tag.replace(",", ""), 16))
            assert element is not None and element.value == originals[tag][1], tag


@pytest.mark.parametrize("name", ["basic", "default"])
def test_each_attribute_gets_its_action(export, tmp_path, name):
    profile = PROFILES[name]
    out, key = _prepared(export, tmp_path, profile)
    originals = export[1]
    files = sorted((out / "dicom").rglob("*.dcm"))
    patient = pydicom.dcmread(files[0]).PatientID
    shift = dt.timedelta(days=key.date_shift_days(patient))
    by_action: dict[str, int] = {}
    for path in files:
        ds = pydicom.dcmread(path)
        for level in (ds, ds.RelatedSeriesSequence[0]):
            for tag, (vr, value) in originals.items():
                if tag.startswith("0002") and level is not ds:
                    continue  # the file meta is checked below
                action, fallback = profile.actions()[tag]
                if tag in PSEUDONYMS and level is ds:
                    continue  # Z, carried out with the pseudonym as its dummy: below
                where = ds.file_meta if tag.startswith("0002") else level
                element = where.get(int(tag.replace(",", ""), 16))
                action = _effective(action, fallback, vr)
                by_action[action] = by_action.get(action, 0) + 1
                _check(action, vr, value, element, key, shift, tag)
        assert UNKNOWN_TAG not in ds
        assert set(ds.file_meta.keys()) <= {0x00020000, 0x00020001, 0x00020002, 0x00020003,
                                            0x00020010, 0x00020012, 0x00020013}
        assert ds.preamble == b"\0" * 128
        assert ds.PatientName == ds.PatientID == patient != "ORIGMRN01"
        assert ds.PatientIdentityRemoved == "YES"
        assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == \
            [code for code, _ in profile.codes()]
        assert not any(e.tag.is_private or e.tag.group in (0x5000, 0x6000) for e in ds)
    # Every action of the table was exercised, on every slice, at both levels.
    assert by_action.get("X", 0) > 2000 and by_action.get("Z", 0) > 200
    assert by_action.get("D", 0) > 200 and by_action.get("U", 0) > 200
    assert (by_action.get("C", 0) > 200) == (name == "default")


def _effective(action: str, fallback: str, vr: str) -> str:
    """The action PS3.15's and spinefl's stated rules give (docs/hospital-data.md)."""
    if vr == "PN" and action not in ("Z", "D"):
        return "X"  # catch-all: no person name survives
    if action == "C" and vr not in ("DA", "DT", "TM"):
        return fallback
    if action == "D" and vr == "UI":
        return "U"
    if action == "U" and vr not in ("UI", "SQ"):
        return "D"
    return action


def _check(action: str, vr: str, value, element, key: PseudonymKey, shift, tag: str) -> None:
    if action == "X":
        assert element is None, (tag, element)
        return
    assert element is not None, (tag, action)
    if action == "Z":
        assert element.value in (None, "", b"", []), (tag, element)
    elif action == "D":
        assert element.value == ([] if vr == "SQ" else DUMMIES[vr]), (tag, element)
        if vr != "SQ":
            validate_value(vr, element.value, validation_mode=2)
    elif action == "U":
        if vr == "SQ":
            assert element.value[0].ReferencedSOPInstanceUID == \
                key.uid(value[0].ReferencedSOPInstanceUID), tag
        else:
            assert element.value == key.uid(value) != value, (tag, element)
    elif action == "C":
        if vr == "TM":
            assert element.value == value, tag  # times stay under modified dates
        else:
            day = dt.datetime.strptime(value[:8], "%Y%m%d") - shift
            assert element.value == day.strftime("%Y%m%d") + value[8:], (tag, element)
    else:
        raise AssertionError(f"{tag}: unexpected action {action}")


def test_the_report_names_items_by_pseudonym_and_the_key_side_maps_them_back(export, tmp_path):
    out, key = _prepared(export, tmp_path, Profile())
    report = pd.read_csv(out / "report.csv", keep_default_na=False)
    sources = pd.read_csv(out / ".spinefl" / "sources.csv", keep_default_na=False)
    assert list(report["item"]) == list(sources["item"])
    assert set(sources["source"]) == {f"{PATIENT}/ct", "ORIGFOLDER/ct.nii.gz",
                                      "ORIGFOLDER2/ct.nii.gz", "ORIGSP1 ORIGSP2/ct.nii.gz"}
    reasons = sources.set_index("source").reason
    assert "centroids ct_ctd.json not used" in reasons["ORIGFOLDER2/ct.nii.gz"]
    assert "ORIGSP1 ORIGSP2" in reasons["ORIGSP1 ORIGSP2/ct.nii.gz"]  # as nibabel said it
    assert all(item == key.pseudonym("input", source, "I")
               for item, source in zip(sources["item"], sources["source"], strict=True))
    assert (out / "profile.toml").read_text().count("retain_longitudinal_modified_dates = true")
    assert (out / ".spinefl").stat().st_mode & 0o777 == 0o700
