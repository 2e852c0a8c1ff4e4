"""The hospital's audit log: MAC-chained under the node's key, every edit found (one whose
hashes were all recomputed included); written by the real ClientApp for each request it serves
or refuses; the node's task policy and its limit on evaluations."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client.app import app
from client.audit import AuditLog, digest_arrays
from tests.helpers.cli import assert_one_line_error, spinefl
from tests.helpers.messages import evaluation, request, task


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
    assert all(b["prev"] == a["mac"] for a, b in pairwise(records))
    assert oct(log.key_path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(("change", "found"), [
    (lambda lines: [lines[0], lines[1].replace('"samples": 11', '"samples": 99'), *lines[2:]],
     "line 2: its MAC does not match"),
    (lambda lines: [lines[0], *lines[2:]], "line 2: sequence number 3"),
    (lambda lines: [lines[1], lines[0], *lines[2:]], "line 1: sequence number 2"),
    (lambda lines: [*lines[:2], "not json", *lines[2:]], "line 3 is not a JSON record"),
])
def test_every_edit_is_found_and_named(tmp_path, change, found):
    log = _log(tmp_path)
    _rewrite(log, change)
    assert found in log.verify()


def test_a_log_rewritten_with_recomputed_hashes_fails_without_the_key(tmp_path):
    """The attack an unkeyed hash chain cannot see: change a record and recompute every
    hash after it. Without the node's key the MACs cannot be recomputed."""
    import hashlib

    log = _log(tmp_path)
    records = log.records()
    records[1]["samples"] = 99
    previous = records[0]["mac"]
    for record in records[1:]:  # a forger's best: SHA-256 in the MAC's place, chain intact
        record["prev"] = previous
        body = {k: v for k, v in record.items() if k != "mac"}
        record["mac"] = previous = hashlib.sha256(
            json.dumps(body, sort_keys=True).encode()).hexdigest()
    log.path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    assert "line 2: its MAC does not match" in log.verify()
    other = AuditLog(tmp_path / "other")  # or a MAC under a key of the forger's own
    other.append({})
    key = other.key_path.read_bytes()
    from client.audit import mac

    previous = records[0]["mac"]
    for record in records[1:]:
        record["prev"] = previous
        record["mac"] = previous = mac(key, record)
    log.path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    assert "line 2: its MAC does not match" in log.verify()


def test_a_deleted_log_or_key_is_found_and_the_node_stops_logging(tmp_path):
    from client.audit import AuditBroken

    log = _log(tmp_path)
    log.path.unlink()
    assert "the log was deleted or truncated" in log.verify()
    with pytest.raises(AuditBroken, match="deleted or truncated"):
        log.append({"type": "train"})
    log = _log(tmp_path / "keyless")
    log.key_path.unlink()
    assert "audit key unreadable" in log.verify()
    with pytest.raises(AuditBroken, match="audit key unreadable"):
        log.append({"type": "train"})


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
                          "audit log broken", "line 2: its MAC does not match")


def test_evaluations_past_the_nodes_limit_are_refused_and_logged(hospital, inside_a_run):
    state = task().build_model().state_dict()
    limited = _node(hospital, **{"max-evaluations": 2})
    # Flower routes evaluate.default to the same handler: it counts as an evaluation too.
    answers = [app(evaluation(state, message_type=kind), limited)
               for kind in ("evaluate", "evaluate.default", "evaluate.default")]
    assert [a.has_error() for a in answers] == [False, False, True]
    assert "has answered its 2 evaluation(s)" in answers[2].error.reason
    assert not app(request(state), limited).has_error()  # training is not limited
    records = AuditLog(hospital).records()
    assert [r["type"] for r in records] == ["evaluate"] + ["evaluate.default"] * 2 + ["train"]
    assert "refused" in records[2] and AuditLog(hospital).verify() is None


def test_validations_in_train_requests_count_as_evaluations(hospital, inside_a_run):
    """Past the limit a train request that asks to validate the global model first is
    trained without it (the refusal in the log); an evaluate request is refused."""
    state = task().build_model().state_dict()
    limited = _node(hospital, **{"max-evaluations": 2})
    answers = [app(request(state, **{"validate-global": True}), limited) for _ in range(3)]
    assert not any(a.has_error() for a in answers)
    validated = ["global-val-dice_mean" in a.content["metrics"] for a in answers]
    assert validated == [True, True, False]
    assert app(evaluation(state), limited).has_error()
    records = AuditLog(hospital).records()
    assert [r.get("validated", False) for r in records[:3]] == validated
    assert "has answered its 2 evaluation(s)" in records[2]["validation_refused"]
    assert AuditLog(hospital).evaluations() == 2 and AuditLog(hospital).verify() is None


def test_each_validation_counts_a_personal_models_too(hospital, inside_a_run):
    """Under Ditto a train request releases two validations (the global model's, the
    personal model's): each counts. A request that starts under the limit is answered
    whole; the next is trained without either."""
    state = task().build_model().state_dict()
    limited = _node(hospital, **{"max-evaluations": 3})
    ditto = {"validate-global": True, "federation-id": "f" * 32,
             "personal": json.dumps({"personalisation": "ditto"})}
    answers = [app(request(state, server_round=r, **ditto), limited) for r in (1, 2, 3)]
    released = [sorted({k.split("-val-")[0] for k in a.content["metrics"] if "-val-" in k})
                for a in answers]
    assert released == [["global", "personal"], ["global", "personal"], []]
    records = AuditLog(hospital).records()
    assert [r.get("validations") for r in records] == [2, 2, None]
    assert "has answered its 3 evaluation(s)" in records[2]["validation_refused"]
    assert AuditLog(hospital).evaluations() == 4 and AuditLog(hospital).verify() is None


def test_a_node_with_a_budget_limits_evaluations_by_default(hospital):
    from client.hospital import DEFAULT_MAX_EVALUATIONS, resolve_hospital

    config = {"data-path": str(hospital)}
    assert resolve_hospital(config, {}).max_evaluations is None
    assert resolve_hospital({**config, "max-epsilon": 8.0}, {}).max_evaluations == \
        DEFAULT_MAX_EVALUATIONS
    assert resolve_hospital({**config, "max-epsilon": 8.0, "max-evaluations": -1}, {}
                            ).max_evaluations is None


def test_a_node_whose_log_was_tampered_with_serves_nothing(hospital, inside_a_run):
    state = task().build_model().state_dict()
    assert not app(request(state), _node(hospital)).has_error()
    log = AuditLog(hospital)
    _rewrite(log, lambda lines: [lines[0].replace('"round": 1', '"round": 5')])
    reply = app(request(state), _node(hospital))
    assert reply.has_error() and "serves nothing while its audit log is broken" in \
        reply.error.reason
    asked = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1,
                    message_type=MessageType.QUERY)
    assert app(asked, _node(hospital)).has_error()  # not even its name
