"""The node's warm worker, really started: it answers as the ClientApp would in the launcher,
only its own account reaches it, and a request whose launcher goes away or whose child dies
ends cleanly."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context

from client.app import app
from client.audit import AUDIT_FILE
from client.worker import WorkerFailed, ask, socket_path
from tasks.processes import descendants, stop_tree
from tests.helpers.cli import spinefl
from tests.helpers.messages import evaluation, node, request, task

pytestmark = pytest.mark.slow  # real worker processes, a few seconds each to import

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hospital(tiny_cohort, tmp_path_factory):
    """A prepared hospital folder (one site of the tiny cohort) and its running worker; it
    removes its socket when stopped."""
    folder = tmp_path_factory.mktemp("hospital")
    tiny_cohort.select(site="ct-a").with_absolute_paths(folder).save(folder / "manifest.csv")
    log = (folder / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "client.worker", "--data", str(folder)],
                              stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "Worker ready" not in (folder / "worker.log").read_text():
        assert worker.poll() is None and time.monotonic() < deadline, \
            (folder / "worker.log").read_text()
        time.sleep(0.2)
    yield folder, worker
    stop_tree(worker)
    log.close()
    assert worker.returncode == 128 + 15 and not socket_path(folder).exists()


def records(folder: Path) -> int:
    """How many records the hospital's audit log holds; its chain is intact."""
    if not (folder / AUDIT_FILE).exists():
        return 0
    audit = spinefl("hospital", "audit", "--data", str(folder), "--verify")
    shown = " ".join(audit.stdout.split())
    assert "chain intact" in shown, audit.stdout + audit.stderr
    return int(shown.split(" record(s)")[0].split()[-1])


def idle(worker: subprocess.Popen) -> None:
    """Wait until the worker has reaped the children of earlier requests (within a second)."""
    deadline = time.monotonic() + 10
    while descendants(worker.pid):
        assert time.monotonic() < deadline, "an earlier request's child is still there"
        time.sleep(0.1)


def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return task().build_model().state_dict()


def test_the_worker_answers_as_the_clientapp_does_in_process(hospital, inside_a_run):
    """The same train request answered in this process and by the worker: the same weights,
    metrics and state; the worker's answer is audited in the hospital's log; an evaluation
    too; only the hospital's account can reach the socket."""
    folder, worker = hospital
    assert stat.S_IMODE(socket_path(folder).stat().st_mode) == 0o600
    assert stat.S_IMODE(socket_path(folder).parent.stat().st_mode) == 0o700
    before, answers = records(folder), (folder / "worker.log").read_text().count("answered in")
    here = app(request(weights()), node(folder))
    answered = ask(folder, request(weights()), node(folder))
    assert answered is not None
    reply, context = answered
    assert not reply.has_error(), reply.error
    mine, theirs = here.content["arrays"], reply.content["arrays"]
    assert list(mine.keys()) == list(theirs.keys())
    assert all(np.array_equal(mine[k].numpy(), theirs[k].numpy()) for k in mine)
    assert here.content["metrics"]["steps"] == reply.content["metrics"]["steps"] == 2
    assert isinstance(context, Context)
    evaluated, _ = ask(folder, evaluation(weights()), node(folder))
    assert 0 <= evaluated.content["metrics"]["dice_mean"] <= 1
    assert (folder / "worker.log").read_text().count("answered in") == answers + 2
    assert worker.poll() is None and records(folder) == before + 3  # here, and the worker's


def test_a_refusal_comes_back_as_the_app_gave_it(hospital, inside_a_run):
    folder, _ = hospital
    refusing = node(folder, **{"accept-tasks": "grading"})
    here = app(request(weights()), refusing)
    reply, _ = ask(folder, request(weights()), refusing)
    assert reply.has_error() and reply.error.reason == here.error.reason
    assert "grading" in reply.error.reason


# A launcher: asks the worker for a long training request and waits for the answer.
LAUNCHER = """
import sys
from pathlib import Path
import torch
from flwr.supercore.task_identity import TaskIdentity
from client.worker import ask
from tests.helpers.cli import spinefl
from tests.helpers.messages import node, request, task
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
torch.manual_seed(0)
ask(Path(sys.argv[1]), request(task().build_model().state_dict(), **{"local-steps": 10_000}),
    node(sys.argv[1]))
"""


def test_a_launcher_that_goes_away_takes_its_request_with_it(hospital, inside_a_run):
    """A launcher killed mid-request (a stopped run, a SuperNode gone): the worker kills the
    child serving it within seconds, and serves the next request."""
    folder, worker = hospital
    idle(worker)
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(folder)], cwd=ROOT)
    deadline = time.monotonic() + 120
    while not descendants(worker.pid):
        assert launcher.poll() is None and time.monotonic() < deadline, "no child took it"
        time.sleep(0.1)
    (child,) = descendants(worker.pid)
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 10
    while child in descendants(worker.pid):
        assert time.monotonic() < deadline, "the abandoned request's child is still running"
        time.sleep(0.1)
    reply, _ = ask(folder, evaluation(weights()), node(folder))
    assert not reply.has_error()


def test_a_child_that_dies_is_a_failed_request_not_a_dead_worker(hospital, inside_a_run):
    folder, worker = hospital
    idle(worker)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(
        result=_swallow(ask, folder, request(weights(), **{"local-steps": 10_000}),
                        node(folder))))
    thread.start()
    deadline = time.monotonic() + 60
    while not descendants(worker.pid):
        assert time.monotonic() < deadline, "no child took the request"
        time.sleep(0.1)
    for pid in descendants(worker.pid):  # out of memory, as the kernel would end it
        subprocess.run(["kill", "-9", str(pid)], check=False)
    thread.join(timeout=30)
    assert isinstance(outcome["result"], WorkerFailed)
    assert "died while answering" in str(outcome["result"])
    assert worker.poll() is None
    reply, _ = ask(folder, evaluation(weights()), node(folder))
    assert not reply.has_error()


def test_without_a_worker_the_launcher_is_told_to_answer_itself(tmp_path, inside_a_run):
    assert ask(tmp_path, request(weights()), node(tmp_path)) is None


def _swallow(function, *args):
    try:
        return function(*args)
    except Exception as e:  # the test looks at what came back
        return e
