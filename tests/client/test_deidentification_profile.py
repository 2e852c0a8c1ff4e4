"""The table spinefl ships, its generator, and the profile a data protection officer edits."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from rich.console import Console

from client.confidentiality import NOT_OFFERED, OPTIONS, Profile, load_profile, table
from client.prepare import PrepareOptions, prepare
from tasks.errors import UserError
from tasks.imageio import Volume
from tests.helpers.cli import assert_one_line_error, spinefl
from tests.helpers.dicom_series import write_series

ROOT = Path(__file__).resolve().parents[2]
# Attributes the hand-typed list lacked (the examples): each is in the table and
# leaves under the basic profile.
ONCE_MISSING = ("ClinicalTrialSubjectID", "ClinicalTrialSiteName", "ClinicalTrialSiteID",
                "ClinicalTrialSponsorName", "ReasonForVisit",
                "ReasonForTheRequestedProcedure", "StationAETitle", "RetrieveAETitle",
                "PerformedStationAETitle", "UniqueDeviceIdentifier", "DeviceDescription",
                "XRayDetectorID", "BarcodeValue", "LabelText", "TimezoneOffsetFromUTC")


def test_the_table_names_its_edition_and_holds_what_the_old_list_lacked():
    shipped = table()
    assert (shipped.edition, shipped.options_edition) == ("2026c", "2024b")
    assert len(shipped.rows) > 600
    keywords = {row["keyword"]: tag for tag, row in shipped.rows.items()}
    actions = Profile("basic", ()).actions()
    for keyword in ONCE_MISSING:
        assert actions[keywords[keyword]][0] in ("X", "Z", "D"), keyword
    assert {"50xx,xxxx", "60xx,3000", "60xx,4000", "gggg,eeee"} <= set(shipped.rows)


def _tool():
    spec = importlib.util.spec_from_file_location("ps3_15_table", ROOT / "tools" /
                                                  "ps3_15_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sources(tmp_path: Path, patient_name_action: str) -> tuple[Path, Path]:
    actions = tmp_path / "dicomfields_2099a.py"
    actions.write_text("D_TAGS = [\n    (0x0012, 0x0040),  # Clinical Trial Subject ID\n]\n"
                       f"{patient_name_action}_TAGS = [\n"
                       "    (0x0010, 0x0010),  # Patient's Name\n]\n"
                       "ALL_TAGS = []\nALL_TAGS.extend(D_TAGS)\n")
    options = tmp_path / "options.json"
    options.write_text(json.dumps([
        {"name": "Patient's Name", "tag": "(0010,0010)", "basicProfile": "Z"},
        {"name": "Institution Name", "tag": "(0008,0080)", "basicProfile": "X/Z/D",
         "rtnInstIdOpt": "K"},
        {"name": "Private Attributes", "tag": "(GGGG,EEEE) WHERE GGGG IS ODD",
         "basicProfile": "X", "rtnSafePrivOpt": "C"}]))
    return actions, options


def _generate(tmp_path: Path, actions: Path, options: Path) -> list[str]:
    out = tmp_path / "table.csv"
    _tool().main(["--actions", str(actions), "--actions-edition", "2099a", "--actions-source",
                  "a", "--options", str(options), "--options-edition", "2098z",
                  "--options-source", "b", "--out", str(out)])
    return out.read_text().splitlines()


def test_the_generator_merges_the_newest_actions_with_the_option_columns(tmp_path):
    lines = _generate(tmp_path, *_sources(tmp_path, "Z"))
    assert lines[2] == "# edition=2099a options_edition=2098z rows=4"
    rows = {line.split('",')[0] + '"': line for line in lines[4:]}
    assert rows['"(0012,0040)"'].startswith('"(0012,0040)",ClinicalTrialSubjectID,'
                                           "Clinical Trial Subject ID,D,,")
    assert ",K," in rows['"(0008,0080)"'] and rows['"(0008,0080)"'].split(",")[4] == "X/Z/D"
    assert rows['"(gggg,eeee)"'].split(",")[4:6] == ["X", "C"]


def test_the_generator_stops_where_the_sources_disagree(tmp_path):
    with pytest.raises(SystemExit, match=r"0010,0010 Patient's Name: Z against X"):
        _generate(tmp_path, *_sources(tmp_path, "X"))


def _profile(tmp_path: Path, **changes: object) -> Path:
    text = Profile().text()
    for key, value in changes.items():
        rendered = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
        if f"\n{key} = " in text:
            text = "\n".join(f"{key} = {rendered}" if line.startswith(f"{key} = ") else line
                             for line in text.splitlines())
        else:
            text += f"{key} = {rendered}\n"
    path = tmp_path / "profile.toml"
    path.write_text(text)
    return path


def test_the_written_default_profile_reads_back_as_the_default(tmp_path):
    assert load_profile(_profile(tmp_path)) == Profile(source=str(tmp_path / "profile.toml"))
    chosen = load_profile(_profile(tmp_path, retain_device_identity=True, name="dpo-2026"))
    assert chosen.options == ("retain_longitudinal_modified_dates", "retain_device_identity")
    assert [code for code, _ in chosen.codes()] == ["113100", "113107", "113109"]
    assert all(len(value) <= 64 for value in chosen.method())  # LO


@pytest.mark.parametrize(("changes", "message"), [
    ({"retain_everything": True}, "unknown key 'retain_everything'; known: name, "),
    ({"clean_descriptors": True}, "'clean_descriptors' is not offered: cleaning free text"),
    ({"retain_device_identity": "yes"}, "'retain_device_identity' must be true or false"),
    ({"retain_longitudinal_full_dates": True}, "choose one of retain_longitudinal_modified"),
    ({"name": "a name with spaces"}, "'name' must be 1-40 letters"),
])
def test_a_bad_profile_is_refused_naming_the_file_and_key(tmp_path, changes, message):
    path = _profile(tmp_path, **changes)
    with pytest.raises(UserError, match=f"^{path}: {message}"):
        load_profile(path)


def test_every_column_of_the_table_is_offered_or_said_why_not():
    columns = set(next(iter(table().rows.values()))) - {"tag", "keyword", "name", "basic"}
    assert columns == set(OPTIONS) | set(NOT_OFFERED)


@pytest.mark.slow
def test_a_profile_written_edited_and_used_by_the_commands(tmp_path):
    """`hospital profile` writes it, the officer edits it, `prepare` applies and records it;
    a broken one is a one-line error with status 2 before anything is written."""
    export = tmp_path / "export"
    write_series(Volume(np.zeros((8, 8, 3)), np.eye(4)), export / "ct", StationName="CTROOM7",
                 InstitutionName="St Elsewhere", PatientAge="071Y")
    path = tmp_path / "dpo.toml"
    assert spinefl("hospital", "profile", "--out", str(path)).returncode == 0
    assert_one_line_error(spinefl("hospital", "profile", "--out", str(path)), "exists")
    path.write_text(path.read_text().replace("retain_device_identity = false",
                                             "retain_device_identity = true"))
    out = tmp_path / "out"
    done = spinefl("hospital", "prepare", "--input", str(export), "--out", str(out),
                   "--dicom", "--profile", str(path))
    assert done.returncode == 0, done.stderr
    assert "retain longitudinal modified dates, retain device identity" in " ".join(
        done.stdout.split())
    ds = pydicom.dcmread(next((out / "dicom").rglob("*.dcm")))
    assert ds.StationName == "CTROOM7" and ds.InstitutionName == "ANONYMOUS"
    assert "PatientAge" not in ds
    assert "113109" in [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]
    recorded = (out / "profile.toml").read_text()
    assert f"from {path}" in recorded and "retain_device_identity = true" in recorded
    assert table().sha256 in recorded
    copy = tmp_path / "copy.toml"
    assert spinefl("hospital", "profile", "--out", str(copy), "--from", str(path)
                   ).returncode == 0
    assert load_profile(copy).options == load_profile(path).options
    done = spinefl("hospital", "prepare", "--input", str(export), "--out", str(tmp_path / "b"),
                   "--profile", str(path))
    assert_one_line_error(done, "--profile applies to the DICOM that --dicom writes")
    path.write_text(path.read_text() + "retain_uids = true\n")
    done = spinefl("hospital", "prepare", "--input", str(export), "--out", str(tmp_path / "b"),
                   "--dicom", "--profile", str(path))
    assert_one_line_error(done, str(path), "'retain_uids' is not offered")
    assert not (tmp_path / "b").exists()


def _prepare(export: Path, out: Path, **options: object) -> pd.DataFrame:
    prepare(PrepareOptions(export, out, "h", **options), Console(quiet=True))
    return pd.read_csv(out / "report.csv", keep_default_na=False)


def test_dicom_written_under_other_options_is_written_again(tmp_path):
    export = tmp_path / "export"
    write_series(Volume(np.zeros((8, 8, 3)), np.eye(4)), export / "ct", StationName="CTROOM7")
    out = tmp_path / "out"
    assert list(_prepare(export, out, write_dicom=True).status) == ["kept"]
    assert list(_prepare(export, out, write_dicom=True).status) == ["unchanged"]
    assert list(_prepare(export, out).status) == ["unchanged"]  # no DICOM asked: nothing to redo
    device = Profile("device", ("retain_device_identity",))
    assert list(_prepare(export, out, write_dicom=True, profile=device).status) == ["kept"]
    files = list((out / "dicom").rglob("*.dcm"))
    assert len(files) == 3
    assert all(pydicom.dcmread(f).StationName == "CTROOM7" for f in files)
    assert "retain_device_identity = true" in (out / "profile.toml").read_text()


def test_a_series_with_one_file_flagged_burned_in_is_refused(tmp_path):
    export = tmp_path / "export"
    paths = write_series(Volume(np.zeros((8, 8, 3)), np.eye(4)), export / "ct")
    flagged = pydicom.dcmread(paths[1])
    flagged.BurnedInAnnotation = "YES"
    flagged.save_as(paths[1], enforce_file_format=True)
    report = _prepare(export, tmp_path / "out")
    assert list(report.status) == ["skipped"] and "burned-in" in report.reason[0]
