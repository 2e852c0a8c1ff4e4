"""DICOM de-identification after PS3.15 Annex E, Basic Application Level Confidentiality Profile.

What ``deidentify`` does to a dataset, at every nesting level (sequences too):

- the identifying attributes of PS3.15 Table E.1-1 are removed (action X),
  emptied (Z) or replaced by a pseudonym (D: patient name and ID);
- every UID that is not a registered DICOM UID (SOP classes, transfer syntaxes
  and coding schemes stay) is remapped through the hospital's keyed hash, so
  references between instances stay consistent (action U);
- every person name anywhere is removed, whatever its tag;
- all private attributes and overlay/curve groups (60xx, 50xx) are removed;
- dates (DA, DT) are shifted back by a per-patient number of days (the
  "Retain Longitudinal Temporal Information with Modified Dates" option), so
  intervals within a patient survive; times stay.

The result is marked as PS3.15 asks: Patient Identity Removed = YES, and the
De-identification Method Code Sequence lists 113100 (basic profile) and
113107 (modified dates). Images whose header says Burned In Annotation = YES
are refused by the caller unless the user allows them: pixels with text in
them cannot be de-identified by header edits.
"""

from __future__ import annotations

import datetime as dt

from pydicom.dataset import Dataset

from client.pseudonyms import PseudonymKey

# PS3.15 Table E.1-1, basic profile: attributes removed (X) ...
REMOVE = (
    "AcquisitionComments", "AcquisitionContextSequence", "AcquisitionDeviceProcessingDescription",
    "AcquisitionProtocolDescription", "ActualHumanPerformersSequence", "AdditionalPatientHistory",
    "AddressTrial", "AdmissionID", "AdmittingDate", "AdmittingDiagnosesCodeSequence",
    "AdmittingDiagnosesDescription", "AdmittingTime", "Allergies", "Arbitrary",
    "AuthorObserverSequence", "BranchOfService", "CassetteID",
    "CommentsOnThePerformedProcedureStep", "ConfidentialityConstraintOnPatientDataDescription",
    "ContentCreatorIdentificationCodeSequence", "ContributionDescription", "CountryOfResidence",
    "CurrentPatientLocation", "CustodialOrganizationSequence", "DataSetTrailingPadding",
    "DerivationDescription", "DetectorID", "DeviceSerialNumber", "DeviceUID",
    "DigitalSignaturesSequence", "DischargeDiagnosisDescription", "DistributionAddress",
    "DistributionName", "EthnicGroup", "FrameComments", "GantryID", "GeneratorID",
    "HumanPerformerName", "HumanPerformerOrganization", "IconImageSequence",
    "IdentifyingComments", "ImageComments", "ImagePresentationComments",
    "ImagingServiceRequestComments", "Impressions", "InstitutionAddress",
    "InstitutionalDepartmentName", "InstitutionCodeSequence", "InstitutionName",
    "InsurancePlanIdentification", "IntendedRecipientsOfResultsIdentificationSequence",
    "InterpretationApproverSequence", "InterpretationAuthor", "InterpretationDiagnosisDescription",
    "InterpretationIDIssuer", "InterpretationRecorder", "InterpretationText",
    "InterpretationTranscriber", "IssuerOfAdmissionID", "IssuerOfPatientID",
    "IssuerOfServiceEpisodeID", "LastMenstrualDate", "MedicalAlerts", "MedicalRecordLocator",
    "MilitaryRank", "ModifiedAttributesSequence", "ModifiedImageDescription", "ModifyingDeviceID",
    "NamesOfIntendedRecipientsOfResults", "Occupation", "OperatorIdentificationSequence",
    "OperatorsName", "OrderCallbackPhoneNumber", "OrderEnteredBy", "OrderEntererLocation",
    "OriginalAttributesSequence", "OtherPatientIDs", "OtherPatientIDsSequence",
    "OtherPatientNames", "ParticipantSequence", "PatientAddress", "PatientAge",
    "PatientBirthName", "PatientBirthTime", "PatientComments", "PatientInstitutionResidence",
    "PatientInsurancePlanCodeSequence", "PatientMotherBirthName", "PatientReligiousPreference",
    "PatientSexNeutered", "PatientSize", "PatientState", "PatientTelecomInformation",
    "PatientTelephoneNumbers", "PatientTransportArrangements", "PatientWeight",
    "PerformedLocation", "PerformedProcedureStepDescription", "PerformedProcedureStepID",
    "PerformingPhysicianIdentificationSequence", "PerformingPhysicianName", "PersonAddress",
    "PersonIdentificationCodeSequence", "PersonName", "PersonTelephoneNumbers",
    "PhysicianApprovingInterpretation", "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence", "PhysiciansReadingStudyIdentificationSequence",
    "NameOfPhysiciansReadingStudy", "PlateID", "PreMedication", "PregnancyStatus",
    "ProtocolName", "ReasonForStudy", "ReasonForTheImagingServiceRequest",
    "ReferencedDigitalSignatureSequence", "ReferencedPatientAliasSequence",
    "ReferencedPatientSequence", "ReferencedSOPInstanceMACSequence",
    "ReferringPhysicianAddress", "ReferringPhysicianIdentificationSequence",
    "ReferringPhysicianTelephoneNumbers", "RegionOfResidence", "RequestAttributesSequence",
    "RequestedContrastAgent", "RequestedProcedureComments", "RequestedProcedureDescription",
    "RequestedProcedureID", "RequestedProcedureLocation", "RequestingPhysician",
    "RequestingService", "ResponsibleOrganization", "ResponsiblePerson", "ResultsComments",
    "ResultsDistributionListSequence", "ResultsIDIssuer", "ScheduledHumanPerformersSequence",
    "ScheduledPatientInstitutionResidence", "ScheduledPerformingPhysicianIdentificationSequence",
    "ScheduledPerformingPhysicianName", "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepLocation", "ScheduledStationAETitle",
    "ScheduledStationGeographicLocationCodeSequence", "ScheduledStationName",
    "ScheduledStationNameCodeSequence", "ScheduledStudyLocation",
    "ScheduledStudyLocationAETitle", "SeriesDescription", "ServiceEpisodeDescription",
    "ServiceEpisodeID", "SmokingStatus", "SpecialNeeds", "StationName", "StudyComments",
    "StudyDescription", "StudyIDIssuer", "TextComments", "TextString", "TopicAuthor",
    "TopicKeywords", "TopicSubject", "TopicTitle", "VerifyingObserverIdentificationCodeSequence",
    "VerifyingOrganization", "VisitComments",
)
# ... emptied (Z: type 2 attributes that must stay present) ...
EMPTY = (
    "AccessionNumber", "ContentCreatorName", "FillerOrderNumberImagingServiceRequest",
    "PatientBirthDate", "PatientSex", "PlacerOrderNumberImagingServiceRequest",
    "ReferringPhysicianName", "StudyID", "VerifyingObserverName",
)
# ... and replaced by the patient's pseudonym (D).
PSEUDONYM = ("PatientID", "PatientName")
# Every attribute named above: what no de-identified file may carry with a value.
IDENTIFYING = REMOVE + EMPTY
_DROP, _EMPTY = frozenset(REMOVE), frozenset(EMPTY)
# UIDs under the DICOM root are registered ones (SOP classes, transfer syntaxes, coding schemes).
DICOM_ROOT = "1.2.840.10008."
METHOD = "PS3.15 basic profile; modified dates; keyed-hash pseudonyms"
METHOD_CODES = (("113100", "Basic Application Confidentiality Profile"),
                ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))


def deidentify(ds: Dataset, key: PseudonymKey, patient: str) -> Dataset:
    """De-identify ``ds`` in place for the patient pseudonym ``patient``; returns it."""
    shift = dt.timedelta(days=key.date_shift_days(patient))
    _clean(ds, key, shift)
    if getattr(ds, "file_meta", None) is not None:
        _clean(ds.file_meta, key, shift)
    for keyword in PSEUDONYM:
        setattr(ds, keyword, patient)
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    ds.DeidentificationMethod = METHOD
    codes = []
    for value, meaning in METHOD_CODES:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
        codes.append(code)
    ds.DeidentificationMethodCodeSequence = codes
    return ds


def _clean(ds: Dataset, key: PseudonymKey, shift: dt.timedelta) -> None:
    for element in list(ds):
        tag, vr = element.tag, element.VR
        if _dropped(element):
            del ds[tag]
        elif element.keyword in _EMPTY:
            element.value = None
        elif vr == "SQ":
            for item in element.value:
                _clean(item, key, shift)
        elif vr == "UI" and element.value:
            element.value = _uids(element.value, key)
        elif vr in ("DA", "DT") and element.value:
            element.value = _shifted(element.value, vr, shift)


def _dropped(element) -> bool:
    """Private, overlay/curve, listed as X, or a person name not handled otherwise."""
    group, keyword = element.tag.group, element.keyword
    return (element.tag.is_private or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF
            or keyword in _DROP
            or (element.VR == "PN" and keyword not in PSEUDONYM and keyword not in _EMPTY))


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
        except ValueError:
            return ""
        return day.strftime("%Y%m%d") + (text[8:] if vr == "DT" else "")

    if isinstance(value, str):
        return one(value)
    return [one(v) for v in value]
