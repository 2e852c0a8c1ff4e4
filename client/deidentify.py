"""DICOM de-identification after PS3.15 Annex E, with the hospital's profile.

What ``deidentify`` does to a dataset, at every nesting level (sequences too), for
the attributes Table E.1-1 lists (client/confidentiality.py, actions resolved by the
profile):

- X: removed; Z: emptied; D: replaced by a dummy valid for the VR (an empty sequence
  for SQ); U: UIDs remapped through the hospital's keyed hash; K: kept (what an option
  retains); C: dates shifted back by the patient's number of days (modified dates),
  times kept; a C spinefl cannot carry out for the VR falls back to the basic action.

And for every attribute, listed or not (catch-all rules):

- every UID outside the DICOM root ``1.2.840.10008.`` (where SOP classes, transfer
  syntaxes and DICOM's own coding schemes lie) is remapped, so references between
  instances stay consistent; other registries' UIDs (SNOMED's coding scheme UID, a
  vendor's private SOP class) are remapped too;
- the file meta is made afresh (SOP class and instance, the transfer syntax kept as
  it was, spinefl's implementation) and the preamble zeroed;
- elements pydicom cannot name (VR UN, no keyword: public tags newer than its
  dictionary) are removed;
- every person name is removed, except the top-level PatientName, which becomes the
  pseudonym, and the table's Z/D person names, emptied or dummied (a PatientName or
  PatientID nested in a sequence is emptied as the table says);
- all private attributes and overlay/curve groups (60xx, 50xx) are removed;
- dates (DA, DT) not listed are shifted (modified dates), kept (full dates), or
  shifted too under the bare basic profile: no original date survives anywhere.

The result is marked as PS3.15 asks: Patient Identity Removed = YES, De-identification
Method (the table's edition and the profile) and its Code Sequence (113100 and one code
per option). Images whose header says Burned In Annotation = YES are refused by the
caller unless the user allows them: pixels with text in them cannot be de-identified
by header edits.
"""

from __future__ import annotations

import datetime as dt

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from client.confidentiality import Profile
from client.pseudonyms import PseudonymKey

PSEUDONYM = ("PatientID", "PatientName")
# What deidentify does, versioned: prepare rewrites the DICOM it wrote under other rules.
RULES_VERSION = 2
# UIDs under the DICOM root are registered ones (SOP classes, transfer syntaxes, coding schemes).
DICOM_ROOT = "1.2.840.10008."
# Replacement values of action D, valid for their VR (PS3.5 6.2).
_TEXT = "ANONYMOUS"
DUMMIES: dict[str, object] = {
    "AE": _TEXT, "AS": "000Y", "CS": _TEXT, "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": _TEXT, "LT": _TEXT, "PN": _TEXT, "SH": _TEXT,
    "ST": _TEXT, "TM": "000000", "UC": _TEXT, "UR": "urn:uuid:00000000-0000-0000-0000-000000000000",
    "UT": _TEXT, "AT": Tag(0), "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "SV": 0, "UL": 0,
    "US": 0, "UV": 0, "OB": b"\0" * 8, "OD": b"\0" * 8, "OF": b"\0" * 8, "OL": b"\0" * 8,
    "OV": b"\0" * 8, "OW": b"\0" * 8, "UN": b"\0" * 8,
}


def deidentify(ds: Dataset, key: PseudonymKey, patient: str,
               profile: Profile | None = None) -> Dataset:
    """De-identify ``ds`` in place for the patient pseudonym ``patient``; returns it."""
    profile = profile or Profile()
    cleaner = _Cleaner(profile, key, dt.timedelta(days=key.date_shift_days(patient)))
    cleaner.clean(ds, top=True)
    # The file meta and preamble are made afresh: AE titles, addresses, private information
    # and the preamble of the sending system go (Table E.1-1 lists none of them).
    transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds.preamble = b"\0" * 128
    for keyword in PSEUDONYM:
        setattr(ds, keyword, patient)
    ds.PatientIdentityRemoved = "YES"
    # The bare basic profile removes the listed dates but shifts the others: modified too.
    ds.LongitudinalTemporalInformationModified = (
        "UNMODIFIED" if profile.dates == "keep" else "MODIFIED")
    ds.DeidentificationMethod = profile.method()
    codes = []
    for value, meaning in profile.codes():
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
        codes.append(code)
    ds.DeidentificationMethodCodeSequence = codes
    return ds


class _Cleaner:
    def __init__(self, profile: Profile, key: PseudonymKey, shift: dt.timedelta) -> None:
        self.actions, self.key, self.shift = profile.actions(), key, shift
        self.dates = profile.dates

    def clean(self, ds: Dataset, top: bool = False) -> None:
        for element in list(ds):
            action = self.action(element, top)
            if action == "X":
                del ds[element.tag]
            elif action == "Z":
                element.value = [] if element.VR == "SQ" else None
            elif action == "D":
                element.value = self.dummy(element)
            else:
                self.keep(element)

    def action(self, element: DataElement, top: bool) -> str:
        """X, Z, D or K (kept, with the catch-alls applied) for one element; the pseudonym
        attributes are left for the caller at the top level only."""
        tag, vr = element.tag, element.VR
        group = tag.group
        # UN without a keyword: a public tag pydicom's dictionary does not know (its value
        # cannot be told apart from a name or a UID), so it goes.
        if (tag.is_private or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF
                or (vr == "UN" and not element.keyword)):
            return "X"
        if top and element.keyword in PSEUDONYM:
            return "K"
        action, fallback = self.actions.get(f"{group:04X},{tag.element:04X}", ("K", "K"))
        if action == "C":
            action = "K" if vr in ("DA", "DT", "TM", "SQ") else fallback
        if vr == "PN" and action not in ("Z", "D"):
            return "X"
        if action == "U" and vr not in ("UI", "SQ"):
            return "D"  # a UID attribute stored in another VR: nothing to remap, so replace
        if action in ("X", "Z") or (action == "D" and vr != "UI"):
            return action
        return "K"

    def keep(self, element: DataElement) -> None:
        vr = element.VR
        if vr == "SQ":
            for item in element.value:
                self.clean(item)
        elif vr == "UI" and element.value:
            element.value = _uids(element.value, self.key)
        elif vr in ("DA", "DT") and element.value and self.dates != "keep":
            element.value = _shifted(element.value, vr, self.shift)

    @staticmethod
    def dummy(element: DataElement) -> object:
        return [] if element.VR == "SQ" else DUMMIES.get(element.VR, _TEXT)


def _uids(value, key: PseudonymKey):
    def remap(uid: str) -> str:
        return uid if uid.startswith(DICOM_ROOT) else key.uid(uid)

    if isinstance(value, str):
        return remap(value)
    return [remap(str(v)) for v in value]


def _shifted(value, vr: str, shift: dt.timedelta):
    def one(text: str) -> str:
        text = str(text)
        try:
            day = dt.datetime.strptime(text[:8], "%Y%m%d") - shift
        except (ValueError, OverflowError):  # not a date, or shifted before year 1
            return ""
        return f"{day.year:04d}{day.month:02d}{day.day:02d}" + (text[8:] if vr == "DT" else "")

    if isinstance(value, str):
        return one(value)
    return [one(v) for v in value]
