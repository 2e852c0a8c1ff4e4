"""A hospital's approvals and its launcher: the bundle hash is Flower's own build's; a run of a
bundle nobody approved is refused, with its hash in the audit log, before any installed code
runs; an approved one is served by the installed ClientApp."""

from __future__ import annotations

import subprocess

import pytest
from flwr.app import Context, RecordDict

from client.approvals import Approvals, bundle_bytes, digest
from client.audit import AuditLog
from client.runtime_request import answer
from tasks.processes import BIN
from tests.helpers.cli import assert_one_line_error, spinefl
from tests.helpers.messages import evaluation, task

PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "mini"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "test"

[tool.flwr.app.components]
serverapp = "server:app"
clientapp = "client.app:app"

[tool.flwr.app.config]
"""


@pytest.fixture
def app_folder(tmp_path):
    """A small Flower app folder: what a coordinator would run."""
    folder = tmp_path / "app"
    (folder / "client").mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    (folder / "client" / "app.py").write_text("app = None\n")
    (folder / "server.py").write_text("app = None\n")
    return folder


def test_approving_a_folder_records_the_hash_of_flowers_own_build(app_folder, tmp_path):
    done = subprocess.run([str(BIN / "flwr"), "build", "--app", str(app_folder)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    fab = next(tmp_path.glob("*.fab"))
    data = tmp_path / "hospital"
    data.mkdir()
    approved = spinefl("hospital", "approve", str(app_folder), "--data", str(data),
                       "--by", "dpo@hospital")
    assert approved.returncode == 0, approved.stderr
    entry = Approvals(data).entries[0]
    assert entry.sha256 == digest(fab.read_bytes())  # what `flwr run` would send
    assert (entry.name, entry.version, entry.approved_by) == ("mini", "1.0.0", "dpo@hospital")
    assert spinefl("hospital", "approve", str(fab), "--data", str(data)).returncode == 0
    assert len(Approvals(data).entries) == 1  # the same bundle, once
    listed = spinefl("hospital", "approvals", "--data", str(data))
    assert listed.returncode == 0 and entry.sha256[:20] in listed.stdout.replace("\n", "")


def test_one_changed_byte_is_another_bundle(app_folder):
    before = digest(bundle_bytes(app_folder))
    (app_folder / "client" / "app.py").write_text("app = None \n")
    assert digest(bundle_bytes(app_folder)) != before


def test_approving_what_is_not_a_bundle_is_one_line(tmp_path):
    (tmp_path / "not.fab").write_bytes(b"just bytes")
    assert_one_line_error(spinefl("hospital", "approve", str(tmp_path / "not.fab"), "--data",
                                  str(tmp_path)), "not.fab: not a Flower app bundle")
    assert_one_line_error(spinefl("hospital", "approve", str(tmp_path), "--data",
                                  str(tmp_path)), "not a Flower app folder (no pyproject.toml)")
    assert_one_line_error(spinefl("hospital", "approvals", "--data", str(tmp_path)),
                          "no app bundle approved")


def _node(folder) -> Context:
    return Context(run_id=1, node_id=1, node_config={"data-path": str(folder),
                                                     "hospital-name": "ct-a"},
                   state=RecordDict(), run_config={})


def test_the_launcher_refuses_an_unapproved_bundle_and_audits_its_hash(app_folder, tmp_path,
                                                                       tiny_cohort,
                                                                       inside_a_run):
    hospital = tmp_path / "hospital"
    hospital.mkdir()
    tiny_cohort.select(site="ct-a").with_absolute_paths(hospital).save(
        hospital / "manifest.csv")
    bundle = bundle_bytes(app_folder)
    sent = evaluation(task().build_model().state_dict())
    refused = answer(sent, _node(hospital), bundle)
    assert refused.has_error()
    assert f"hospital ct-a has not approved app bundle {digest(bundle)} (mini 1.0.0)" in \
        refused.error.reason
    record = AuditLog(hospital).records()[-1]
    assert record["bundle_sha256"] == digest(bundle) and "not approved" in record["refused"]

    Approvals(hospital).approve(app_folder)
    served = answer(sent, _node(hospital), bundle)
    assert not served.has_error(), served.error.reason if served.has_error() else ""
    assert "dice_vertebra" in served.content["metrics"]
    record = AuditLog(hospital).records()[-1]
    assert record["bundle_sha256"] == digest(bundle) and "refused" not in record
    assert AuditLog(hospital).verify() is None
