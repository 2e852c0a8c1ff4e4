"""The hospital's audit log: hash-chained, every edit found; written by the real ClientApp for
each request it serves or refuses; and the node's task policy."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
from flwr.app import Context, RecordDict

from client.app import app
from client.audit import AuditLog, digest_arrays
from tests.helpers.cli import assert_one_line_error, spinefl
from tests.helpers.messages import request, task


def _log(tmp_path, count: int = 4) -> AuditLog:
    log = AuditLog(tmp_path)
    for i in range(count):
        log.append({"type": "train", "run": "7", "round": i + 1, "samples": 10 + i})
    return log


def _rewrite(log: AuditLog, change) -> None:
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join(change(lines)) + "\n")


def test_an_intact_log_verifies_and_chains_its_records(tmp_path):
    log = _log(tmp_path)
    assert log.verify() is None
    records = log.records()
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert all(b["prev"] == a["hash"] for a, b in pairwise(records))


@pytest.mark.parametrize(("change", "found"), [
    (lambda lines: [lines[0], lines[1].replace('"samples": 11', '"samples": 99'), *lines[2:]],
     "line 2: its content does not match its hash"),
    (lambda lines: [lines[0], *lines[2:]], "line 2: sequence number 3"),
    (lambda lines: [lines[1], lines[0], *lines[2:]], "line 1: sequence number 2"),
    (lambda lines: [*lines[:2], "not json", *lines[2:]], "line 3 is not a JSON record"),
])
def test_every_edit_is_found_and_named(tmp_path, change, found):
    log = _log(tmp_path)
    _rewrite(log, change)
    assert found in log.verify()


def test_a_record_rewritten_with_a_fresh_hash_still_breaks_the_chain(tmp_path):
    from client.audit import _hash

    log = _log(tmp_path)

    def forge(lines):
        record = json.loads(lines[1])
        record["samples"] = 99
        record["hash"] = _hash(record)
        return [lines[0], json.dumps(record, sort_keys=True), *lines[2:]]

    _rewrite(log, forge)
    assert "line 3: does not follow the previous record" in log.verify()


def _node(folder, **config) -> Context:
    return Context(run_id=1, node_id=1, node_config={"data-path": str(folder), **config},
                   state=RecordDict(), run_config={})


@pytest.fixture
def hospital(tiny_cohort, tmp_path):
    tiny_cohort.select(site="ct-a").with_absolute_paths(tmp_path).save(tmp_path / "manifest.csv")
    return tmp_path


def test_the_client_app_logs_what_arrived_and_what_left(hospital, inside_a_run):
    state = task().build_model().state_dict()
    sent = request(state, server_round=3)
    reply = app(sent, _node(hospital))
    record = AuditLog(hospital).records()[-1]
    assert (record["type"], record["round"], record["task"]) == ("train", 3, "segmentation")
    arrays = sent.content["arrays"]
    assert record["global_model_sha256"] == digest_arrays({k: arrays[k].numpy() for k in arrays})
    out = reply.content["arrays"]
    assert record["update_sha256"] == digest_arrays({k: out[k].numpy() for k in out})
    assert record["samples"] == reply.content["metrics"]["num-examples"]
    assert AuditLog(hospital).verify() is None


def test_a_task_the_node_does_not_accept_is_refused_and_logged(hospital, inside_a_run):
    reply = app(request(task().build_model().state_dict()),
                _node(hospital, **{"accept-tasks": "cobb, grading"}))
    assert reply.has_error()
    assert "does not accept task 'segmentation'" in reply.error.reason
    assert "accepts: cobb, grading" in reply.error.reason
    record = AuditLog(hospital).records()[-1]
    assert "does not accept task" in record["refused"] and "update_sha256" not in record


def test_audit_command_verifies_and_names_a_broken_line(tmp_path):
    log = _log(tmp_path)
    done = spinefl("hospital", "audit", "--data", str(tmp_path), "--verify")
    assert done.returncode == 0, done.stderr
    assert "4 record(s), chain intact" in done.stdout
    _rewrite(log, lambda lines: [lines[0], lines[1].replace('"run": "7"', '"run": "8"'),
                                 *lines[2:]])
    assert_one_line_error(spinefl("hospital", "audit", "--data", str(tmp_path), "--verify"),
                          "audit log broken", "line 2: its content does not match its hash")
