"""Every strategy's aggregation against a hand computation on small arrays."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)

from server.config import FEDERATION_KEYS
from server.optimiser_state import SERVER_OPTIMISER, optimiser_state, restore_optimiser
from server.recorder import HospitalRecorder
from server.strategies import build_strategy
from tasks.checkpoint import load_checkpoint, save_checkpoint
from tasks.config import validate
from tasks.protocol import KEEP_LOCAL_NORM, VALIDATE_GLOBAL
from tasks.segmentation.task import SegmentationTask

UPDATES = [np.array([1.0, 2.0, 10.0]), np.array([3.0, 4.0, -2.0]), np.array([2.0, 9.0, 4.0]),
           np.array([0.0, 1.0, 5.0]), np.array([8.0, 3.0, 1.0])]
SAMPLES = [1, 3, 2, 2, 2]


def federation(**settings):
    return validate({"federation": settings}, {"federation": FEDERATION_KEYS}, "test")[
        "federation"]


def reply(node: int, update: np.ndarray, samples: int, loss: float = 0.5, **metrics: float
          ) -> Message:
    metadata = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0,
                        reply_to_message_id="request", group_id="1", created_at=0.0, ttl=60.0,
                        message_type="train")
    content = RecordDict({"arrays": ArrayRecord({"w": Array(update)}),
                          "metrics": MetricRecord({"num-examples": samples, "loss": loss,
                                                   **metrics})})
    return Message(content, metadata=metadata)


def failed(node: int) -> Message:
    metadata = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0,
                        reply_to_message_id="request", group_id="1", created_at=0.0, ttl=60.0,
                        message_type="train")
    return Message(Error(code=0, reason="ClientApp raised: disk full"), metadata=metadata)


@pytest.fixture(autouse=True)
def _run_identity(inside_a_run):
    return inside_a_run


class TwoNodeGrid:
    """The part of a Grid that sampling reads: which nodes are connected."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def aggregate(strategy, count: int, initial: np.ndarray | None = None) -> np.ndarray:
    if initial is not None:
        strategy.configure_train(1, ArrayRecord({"w": Array(initial)}), ConfigRecord(),
                                 TwoNodeGrid(list(range(1, count + 1))))
    replies = [reply(i + 1, UPDATES[i], SAMPLES[i]) for i in range(count)]
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays["w"].numpy()


def test_fedavg_and_fedprox_weight_by_samples():
    expected = sum(u * n for u, n in zip(UPDATES[:3], SAMPLES[:3], strict=True)) / 6
    for name in ("fedavg", "fedprox", "fedbn"):
        np.testing.assert_allclose(aggregate(build_strategy(federation(strategy=name)), 3),
                                   expected)


def test_fedmedian_takes_the_elementwise_median():
    np.testing.assert_allclose(aggregate(build_strategy(federation(strategy="fedmedian")), 3),
                               [2.0, 4.0, 4.0])


def test_fedtrimmedavg_drops_the_extremes_then_averages():
    strategy = build_strategy(federation(strategy="fedtrimmedavg", trim_beta=0.2))
    # Five replies, 20% trimmed at each end: per coordinate, drop the min and the max.
    expected = [np.mean(sorted(column)[1:-1]) for column in np.stack(UPDATES).T]
    np.testing.assert_allclose(aggregate(strategy, 5), expected)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_server_optimisers_follow_their_update_rule(name):
    strategy = build_strategy(federation(strategy=name, server_lr=0.1))
    start = np.array([1.0, 1.0, 1.0])
    average = sum(u * n for u, n in zip(UPDATES[:2], SAMPLES[:2], strict=True)) / 4
    delta = average - start
    beta_1, beta_2, tau, eta, server_round = 0.9, 0.99, 1e-3, 0.1, 1
    m = (1 - beta_1) * delta
    v = (1 - beta_2) * delta**2  # Adam's and Yogi's second moments agree from v = 0
    # FedAdam corrects the moments' bias; Flower's FedYogi does not.
    eta_norm = eta * np.sqrt(1 - beta_2 ** (server_round + 1)) / (1 - beta_1 ** (server_round + 1))
    if name == "fedyogi":
        eta_norm = eta
    expected = start + eta_norm * m / (np.sqrt(v) + tau)
    np.testing.assert_allclose(aggregate(strategy, 2, initial=start), expected, rtol=1e-6)


def test_fedavgm_adds_server_momentum_to_the_average_update():
    strategy = build_strategy(federation(strategy="fedavgm", server_momentum=0.5))
    grid = TwoNodeGrid([1, 2])
    weights = np.array([1.0, 1.0, 1.0])
    momentum = np.zeros(3)
    for server_round, pair in ((1, (0, 1)), (2, (2, 3))):
        strategy.configure_train(server_round, ArrayRecord({"w": Array(weights)}),
                                 ConfigRecord(), grid)
        replies = [reply(i + 1, UPDATES[j], SAMPLES[j]) for i, j in enumerate(pair)]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        average = sum(UPDATES[j] * SAMPLES[j] for j in pair) / sum(SAMPLES[j] for j in pair)
        # Hsu et al. 2019: v = beta * v + (w - average); w = w - v (server learning rate 1)
        momentum = 0.5 * momentum + (weights - average) if server_round > 1 \
            else weights - average
        weights = weights - momentum
        np.testing.assert_allclose(arrays["w"].numpy(), weights, rtol=1e-6)
    assert not np.allclose(weights, average), "the second round moved past the plain average"


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi"])
def test_a_resumed_server_optimiser_takes_the_steps_an_uninterrupted_one_takes(name, tmp_path):
    """A run stopped after round 1 and resumed: the new process's Flower counts from round 1
    again; the checkpoint's optimiser state and GlobalRounds make its step the one an
    uninterrupted run takes in round 2 (FedAdam's bias correction counts rounds)."""
    from server.resumption import GlobalRounds

    settings = federation(strategy=name, server_momentum=0.5, server_lr=0.1)
    grid = TwoNodeGrid([1, 2])

    def step(strategy, server_round, weights, pair):
        strategy.configure_train(server_round, ArrayRecord({"w": Array(weights)}),
                                 ConfigRecord(), grid)
        replies = [reply(i + 1, UPDATES[j], SAMPLES[j]) for i, j in enumerate(pair)]
        return strategy.aggregate_train(server_round, replies)[0]["w"].numpy()

    start = np.array([1.0, 1.0, 1.0])
    through = build_strategy(settings)
    after_one = step(through, 1, start, (0, 1))
    expected = step(through, 2, after_one, (2, 3))
    # the first run stops after round 1; its checkpoint is all a resumed run has
    first = build_strategy(settings)
    step(first, 1, start, (0, 1))
    task = SegmentationTask(validate({"task": {}}, {"task": SegmentationTask.keys}, "t")["task"])
    path = save_checkpoint(tmp_path / "round.pt", task, task.build_model(),
                           **{SERVER_OPTIMISER: optimiser_state(first)})
    optimiser = build_strategy(settings)
    restore_optimiser(optimiser, load_checkpoint(path)[2][SERVER_OPTIMISER])
    resumed = GlobalRounds(optimiser, offset=1)
    np.testing.assert_allclose(step(resumed, 1, after_one, (2, 3)), expected, rtol=1e-6)
    fresh = GlobalRounds(build_strategy(settings), offset=1)
    assert not np.allclose(step(fresh, 1, after_one, (2, 3)), expected), \
        "without the state the second step differs"


def test_fedprox_and_fedbn_tell_the_hospitals_what_to_do():
    grid = TwoNodeGrid([1, 2])
    arrays = ArrayRecord({"w": Array(np.zeros(2))})
    config = ConfigRecord({"lr": 0.1})
    prox = build_strategy(federation(strategy="fedprox", proximal_mu=0.3))
    message = next(iter(prox.configure_train(1, arrays, ConfigRecord(config), grid)))
    assert message.content["config"]["proximal-mu"] == pytest.approx(0.3)
    fedbn = build_strategy(federation(strategy="fedbn"))
    for configure in (fedbn.configure_train, fedbn.configure_evaluate):
        message = next(iter(configure(1, arrays, config, grid)))
        assert message.content["config"][KEEP_LOCAL_NORM] is True
    assert KEEP_LOCAL_NORM not in config, "the caller's config is not modified"


def test_recorder_keeps_each_hospitals_reply_and_names_failures():
    recorder = HospitalRecorder(build_strategy(federation()), {1: "north", 2: "south"},
                                round_offset=4)
    arrays, _ = recorder.aggregate_train(1, [reply(1, UPDATES[0], 1, loss=0.7),
                                             reply(2, UPDATES[1], 3, loss=0.2), failed(3)])
    np.testing.assert_allclose(arrays["w"].numpy(), (UPDATES[0] + 3 * UPDATES[1]) / 4)
    rows = {row["hospital"]: row for row in recorder.rows(1)}
    assert rows["north"]["round"] == 5 and rows["north"]["train_loss"] == pytest.approx(0.7)
    assert rows["south"]["train_num-examples"] == 3
    assert "disk full" in rows["node-3"]["train_error"]


def test_a_remote_traceback_becomes_one_line():
    from server.recorder import concise

    reason = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::run()\n"
              '  File "client/app.py", line 89, in train\n    batches = _loader()\n'
              "tasks.manifest.ManifestError: m.csv: missing column 'split'\n"
              "m.csv: row 2, column 'modality': 'PET' is not one of CT, MR, XR'>")
    assert concise(reason) == ("tasks.manifest.ManifestError: m.csv: missing column 'split' / "
                               "m.csv: row 2, column 'modality': 'PET' is not one of CT, MR, "
                               "XR'>")


def test_invalid_updates_are_refused_by_name_and_the_rest_aggregated():
    from server.validation import UpdateValidation

    recorder = HospitalRecorder(build_strategy(federation()), {i: f"h{i}" for i in range(1, 7)})
    validated = UpdateValidation(recorder, max_update_norm=20.0)
    current = np.array([1.0, 1.0, 1.0])
    validated.configure_train(1, ArrayRecord({"w": Array(current)}), ConfigRecord(),
                              TwoNodeGrid([1, 2, 3, 4, 5, 6]))
    misshapen = reply(3, np.ones(4), 1)
    renamed = reply(4, UPDATES[0], 1)
    renamed.content["arrays"] = ArrayRecord({"v": Array(UPDATES[0])})
    arrays, _ = validated.aggregate_train(1, [
        reply(1, UPDATES[0], 1), reply(2, np.array([1.0, np.nan, 1.0]), 1), misshapen, renamed,
        reply(5, current + 100.0, 1), reply(6, current.copy(), 1), failed(7)])
    np.testing.assert_allclose(arrays["w"].numpy(), UPDATES[0])  # only h1 was valid
    rows = {row["hospital"]: row.get("train_error", "") for row in recorder.rows(1)}
    assert "non-finite" in rows["h2"]
    assert "has shape (4,)" in rows["h3"]
    assert "missing ['w'], unexpected ['v']" in rows["h4"]
    assert "above the bound 20" in rows["h5"]
    assert "exactly zero" in rows["h6"]
    assert rows["h1"] == "" and "disk full" in rows["node-7"]


def test_a_round_that_cannot_reach_its_minimum_ends_naming_who_is_missing():
    from server.sampling import TooFewHospitals, wait_for_hospitals

    grid = TwoNodeGrid([1, 3])  # node 2 (mr-b) has gone
    names = {1: "ct-a", 2: "mr-b", 3: "ct-c"}
    with pytest.raises(TooFewHospitals, match=r"only 2 of the 3 .* within 1 s; not connected: "
                                              r"mr-b$"):
        wait_for_hospitals(grid, 3, 1.0, names)
    assert wait_for_hospitals(grid, 2, 1.0, names) == [1, 3]


def test_one_message_a_round_validates_the_aggregate_it_carries():
    """Train requests validate the model they carry in every round but a fresh run's first;
    evaluation requests go out in the last round only; each validation is recorded under
    the round whose aggregate it validated."""
    from server.folded_validation import FoldedValidation

    grid = TwoNodeGrid([1, 2])
    arrays = ArrayRecord({"w": Array(np.zeros(3))})
    recorder = HospitalRecorder(build_strategy(federation()), {1: "north", 2: "south"},
                                round_offset=4)

    def asks(strategy, server_round):
        return [m.content["config"][VALIDATE_GLOBAL]
                for m in strategy.configure_train(server_round, arrays, ConfigRecord(), grid)]

    folded = FoldedValidation(recorder, last_round=3)
    assert [asks(folded, r) for r in (1, 2, 3)] == [[False, False], [True, True], [True, True]]
    assert asks(FoldedValidation(recorder, last_round=3, resumed=True), 1) == [True, True]
    evaluating = FoldedValidation(HospitalRecorder(build_strategy(federation()), {}), 3)
    assert [len(list(evaluating.configure_evaluate(r, arrays, ConfigRecord(), grid)))
            for r in (1, 2, 3)] == [0, 0, 2]

    # North also validated its personal model (Ditto) after this round; south did not (over
    # its evaluation limit), so the replies' keys differ until the recorder takes them out.
    folded.aggregate_train(2, [reply(1, UPDATES[0], 1, loss=0.7, **{"global-val-dice": 0.61,
                                                                    "personal-val-dice": 0.8}),
                               reply(2, UPDATES[1], 3, loss=0.2)])
    assert folded.aggregate_evaluate(2, []) is None  # no evaluation this round
    earlier = {row["hospital"]: row for row in recorder.rows(1)}
    assert earlier == {"north": {"round": 5, "hospital": "north", "val_dice": 0.61}}
    now = {row["hospital"]: row for row in recorder.rows(2)}
    assert now["north"]["train_loss"] == pytest.approx(0.7)
    assert now["north"]["personal_val_dice"] == pytest.approx(0.8)
    assert not any(k.startswith(("val", "train_global", "train_personal")) for k in now["north"])
    assert "personal_val_dice" not in now["south"]


class ClockGrid:
    """A grid whose replies arrive ``after`` s after each push; it counts the pulls."""

    def __init__(self, after: float) -> None:
        self.after, self.pulls, self.pushed = after, 0, 0.0

    def push_messages(self, messages):
        self.pushed = time.monotonic()
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        self.pulls += 1
        if time.monotonic() - self.pushed < self.after:
            return []
        return [Message(RecordDict(), metadata=Metadata(
            run_id=1, message_id="", src_node_id=1, dst_node_id=0, reply_to_message_id=answered,
            group_id="1", created_at=0.0, ttl=60.0, message_type="train"))
            for answered in message_ids]


def requests(count: int, kind: str = "train") -> list[Message]:
    return [Message(RecordDict(), dst_node_id=node, message_type=kind)
            for node in range(1, count + 1)]


def test_replies_are_collected_as_they_arrive_until_the_timeout():
    from server.polling import PromptGrid

    grid = PromptGrid(ClockGrid(after=0.3), fast=0.02, slow=0.1)
    started = time.monotonic()
    replies = grid.send_and_receive(requests(3), timeout=10)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert 0.3 <= time.monotonic() - started < 0.3 + 0.1 + 0.2
    late = PromptGrid(ClockGrid(after=1000), fast=0.02, slow=0.1)
    started = time.monotonic()
    assert late.send_and_receive(requests(3), timeout=0.3) == []
    assert 0.3 <= time.monotonic() - started < 0.6
    assert late.waits == {}  # a call cut short sets no expectation for the next


def test_looks_are_rare_until_the_replies_are_due_then_prompt():
    """Before its replies are due a call looks at most every ``slow`` s (a tenth of the time
    waited); once due (80% of the previous wait of that message type) every ``fast`` s."""
    from server.polling import PromptGrid

    grid = PromptGrid(ClockGrid(after=1.0), fast=0.01, slow=0.5)
    assert grid.next_look(0.2, None) == pytest.approx(0.02)
    assert grid.next_look(20.0, None) == 0.5 and grid.next_look(3.0, 10.0) == 0.3
    assert grid.next_look(8.0, 10.0) == 0.01 and grid.next_look(0.01, None) == 0.01
    grid.send_and_receive(requests(2), timeout=10)  # the first: no expected wait yet
    first, grid.inner.pulls = grid.inner.pulls, 0
    started = time.monotonic()
    grid.send_and_receive(requests(2), timeout=10)
    # due after 0.8 s, so seen a look (0.01 s) after it comes; the rest is a loaded machine
    assert time.monotonic() - started - 1.0 < 0.3
    assert first < 50 and grid.inner.pulls < 70  # every 0.01 s throughout: 100
    grid.inner.pulls, grid.inner.after = 0, 2.0
    grid.send_and_receive(requests(2, "evaluate"), timeout=10)  # a type of its own: with
    assert grid.inner.pulls < 80  # train's wait it would look every 0.01 s after 0.8 s (150)


def test_a_resumed_runs_requests_carry_the_runs_round_numbers():
    """After 4 rounds done, the new process's round 1 is round 5 at the hospitals (their
    learning-rate schedule and batch draws go on where they stopped)."""
    from server.resumption import GlobalRounds

    grid = TwoNodeGrid([1, 2])
    arrays = ArrayRecord({"w": Array(np.zeros(3))})
    for offset in (0, 4):
        strategy = GlobalRounds(build_strategy(federation(strategy="fedbn")), offset)
        for configure in (strategy.configure_train, strategy.configure_evaluate):
            sent = list(configure(1, arrays, ConfigRecord(), grid))
            assert [m.content["config"]["server-round"] for m in sent] == [1 + offset] * 2
            assert all(m.content["config"][KEEP_LOCAL_NORM] for m in sent)
