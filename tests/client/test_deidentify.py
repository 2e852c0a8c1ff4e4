"""Pseudonyms (keyed hash) and DICOM de-identification of pydicom's real files.

Attribute-by-attribute coverage of Table E.1-1 is in test_confidentiality_table.py."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from client.confidentiality import Profile
from client.deidentify import DICOM_ROOT, DUMMIES, deidentify
from client.pseudonyms import PseudonymKey, PseudonymKeyError


def test_key_is_created_once_owner_only_and_reused(tmp_path):
    path = tmp_path / "state" / "pseudonym.key"
    first = PseudonymKey.load_or_create(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = PseudonymKey.load_or_create(path, create=False)
    assert first.pseudonym("patient", "12345", "P") == again.pseudonym("patient", "12345", "P")


def test_pseudonyms_depend_on_the_secret_and_do_not_show_the_identifier(tmp_path):
    one = PseudonymKey.load_or_create(tmp_path / "a.key", create=True)
    other = PseudonymKey.load_or_create(tmp_path / "b.key", create=True)
    a, b = one.pseudonym("patient", "12345", "P"), other.pseudonym("patient", "12345", "P")
    assert a != b
    assert "12345" not in a and len(a) == 17
    assert one.pseudonym("patient", "12346", "P") != a
    assert one.pseudonym("study", "12345", "P") != a  # namespaces apart
    assert one.uid("1.2.3") == one.uid("1.2.3") != other.uid("1.2.3")
    assert len(one.uid("1.2.3")) <= 64 and one.uid("1.2.3").startswith("2.25.")


def test_a_key_others_can_read_is_refused(tmp_path):
    path = tmp_path / "pseudonym.key"
    PseudonymKey.load_or_create(path, create=True)
    os.chmod(path, 0o644)
    with pytest.raises(PseudonymKeyError, match="readable by others"):
        PseudonymKey.load_or_create(path, create=True)


def _walk(ds: Dataset):
    for element in ds:
        yield element
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item)


def _loaded_with_extras(name: str) -> Dataset:
    """A real pydicom test file, plus a private tag, an overlay and a nested person and date."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.InstitutionName, ds.OperatorsName = "St Elsewhere", "Doe^Jane"
    ds.PatientBirthDate = "19700101"
    ds.StudyDate, ds.AccessionNumber, ds.StudyDescription = "20200315", "ACC123", "Lumbar spine"
    block = ds.private_block(0x0011, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "patient favourite colour")
    ds.add_new(0x60003000, "OW", b"\0\0")
    referenced = Dataset()
    referenced.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    referenced.ReferencedSOPClassUID = ds.SOPClassUID
    referenced.PersonName, referenced.ContentDate = "Smith^John", "20200316"
    ds.ReferencedImageSequence = [referenced]
    return ds


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm"])
def test_no_identifying_attribute_survives_in_written_dicom(tmp_path, name):
    key = PseudonymKey.load_or_create(tmp_path / "k.key", create=True)
    ds = _loaded_with_extras(name)
    original_uids = {e.value for e in _walk(ds) if e.VR == "UI" and e.value and
                     not str(e.value).startswith(DICOM_ROOT)}
    sop_instance = ds.SOPInstanceUID
    deidentify(ds, key, "P0123456789abcdef")
    ds.save_as(tmp_path / "out.dcm", enforce_file_format=True)
    written = pydicom.dcmread(tmp_path / "out.dcm")
    actions = Profile().actions()
    for element in [*_walk(written), *written.file_meta]:
        action, _ = actions.get(f"{element.tag.group:04X},{element.tag.element:04X}", ("", ""))
        assert action != "X", element
        if action == "Z" and element.keyword not in ("PatientName", "PatientID"):
            assert element.value in (None, "", []), element
        assert not element.tag.is_private, element
        assert not 0x6000 <= element.tag.group <= 0x60FF, element
        if element.VR == "PN" and element.value:
            assert element.value == ("P0123456789abcdef" if element.keyword == "PatientName"
                                     else DUMMIES["PN"]), element
        if element.VR == "UI":
            assert element.value not in original_uids, element
    assert written.PatientID == "P0123456789abcdef"
    assert written.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in written.DeidentificationMethodCodeSequence] == \
        ["113100", "113107"]
    # UIDs are remapped consistently: the reference still points at the instance.
    assert written.ReferencedImageSequence[0].ReferencedSOPInstanceUID == \
        written.SOPInstanceUID == key.uid(sop_instance)
    assert written.file_meta.MediaStorageSOPInstanceUID == written.SOPInstanceUID
    assert written.SOPClassUID == pydicom.dcmread(get_testdata_file(name)).SOPClassUID


def test_dates_move_back_by_the_patients_own_offset(tmp_path):
    key = PseudonymKey.load_or_create(tmp_path / "k.key", create=True)
    ds = _loaded_with_extras("CT_small.dcm")
    deidentify(ds, key, "Pa")
    shift = dt.timedelta(days=key.date_shift_days("Pa"))
    assert ds.StudyDate == (dt.date(2020, 3, 15) - shift).strftime("%Y%m%d")
    nested = ds.ReferencedImageSequence[0]
    assert nested.ContentDate == (dt.date(2020, 3, 16) - shift).strftime("%Y%m%d")
    assert "Smith" not in str(nested)
    assert ds.PatientBirthDate in ("", None)
    assert key.date_shift_days("Pa") != key.date_shift_days("Pb") or \
        key.date_shift_days("Pc") != key.date_shift_days("Pa")


def test_dates_near_the_calendar_start_shift_to_valid_dates_or_go(tmp_path):
    key = PseudonymKey.load_or_create(tmp_path / "k.key", create=True)
    ds = _loaded_with_extras("CT_small.dcm")
    ds.StudyDate, ds.ContentDate = "00010101", "10000201"
    deidentify(ds, key, "Pa")
    assert ds.StudyDate in ("", None)  # before year 1 once shifted
    shifted = dt.date(1000, 2, 1) - dt.timedelta(days=key.date_shift_days("Pa"))
    assert ds.ContentDate == f"{shifted.year:04d}{shifted.month:02d}{shifted.day:02d}"
