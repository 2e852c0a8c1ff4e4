"""The ClientApp driven with real Flower messages: FedBN, FedProx and a hospital's data."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client.app import app
from client.model_state import norm_state_keys, proximal_penalty
from client.trainer import cosine_lr
from tasks.config import ConfigError, validate
from tasks.packing import pack, unpack
from tasks.segmentation import SegmentationTask

SETTINGS = {"channels": [8, 16], "norm_affine": True, "spacing": [4.0, 4.0, 4.0],
            "patch_size": [32, 32, 32]}
TRAIN = {"batch_size": 4, "lr": 0.0, "weight_decay": 0.0, "seed": 0}


@pytest.fixture
def hospital(tiny_cohort, tmp_path):
    """A prepared hospital folder as a node's data-path (one site of the tiny cohort)."""
    tiny_cohort.select(site="ct-a").with_absolute_paths(tmp_path).save(tmp_path / "manifest.csv")
    return tmp_path


def task() -> SegmentationTask:
    return SegmentationTask(validate({"task": SETTINGS}, {"task": SegmentationTask.keys},
                                     "test")["task"])


def request(state: dict, **config) -> Message:
    content = RecordDict({
        "arrays": pack(state),
        "config": ConfigRecord({"task": json.dumps({"name": "segmentation",
                                                    "settings": task().settings}),
                                "train": json.dumps({**TRAIN, **config.pop("train", {})}),
                                "local-epochs": 1, "local-steps": 1, **config}),
    })
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def weights(reply: Message) -> dict[str, torch.Tensor]:
    return unpack(reply.content["arrays"], task().build_model().state_dict())


def test_fedbn_keeps_each_hospitals_normalisation_and_takes_the_rest(hospital, inside_a_run):
    context = Context(run_id=1, node_id=1, node_config={"data-path": str(hospital)},
                      state=RecordDict(), run_config={})
    torch.manual_seed(0)
    model = task().build_model()
    norms = norm_state_keys(model)
    assert norms, "norm_affine gives the network normalisation parameters"
    first = app(request(model.state_dict(), **{"keep-local-norm": True},
                        train={"lr": 0.05}), context)
    trained = weights(first)
    # The next global model: everything different, as after averaging with other hospitals.
    incoming = {k: v + 1.0 if v.is_floating_point() else v for k, v in trained.items()}
    kept = app(request(incoming, **{"keep-local-norm": True}), context)
    state = weights(kept)  # lr 0: what the node loaded
    for key in state:
        expected = trained[key] if key in norms else incoming[key]
        torch.testing.assert_close(state[key], expected, msg=key)
    plain = weights(app(request(incoming), context))
    for key in norms:
        torch.testing.assert_close(plain[key], incoming[key])
    assert first.content["metrics"]["num-examples"] > 4


def test_fedprox_penalty_pulls_towards_the_global_weights():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    reference = {k: v.clone() for k, v in model.named_parameters()}
    penalty = proximal_penalty(model, reference, mu=0.5)
    assert float(penalty(model).detach()) == 0.0
    with torch.no_grad():
        model.weight += 2.0
    value = penalty(model)
    assert float(value) == pytest.approx(0.5 / 2 * 6 * 4.0)
    value.backward()
    torch.testing.assert_close(model.weight.grad, torch.full((2, 3), 0.5 * 2.0))


def test_a_node_without_data_says_how_to_give_it(inside_a_run):
    from tasks.errors import UserError

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(UserError, match="data-path"):
        app(request(task().build_model().state_dict()), context)


def test_a_hospital_without_training_images_says_so(tiny_cohort, tmp_path, inside_a_run):
    tiny_cohort.select(split="test").with_absolute_paths(tmp_path).save(
        tmp_path / "manifest.csv")
    context = Context(run_id=1, node_id=1, node_config={"data-path": str(tmp_path)},
                      state=RecordDict(), run_config={})
    reply = app(request(task().build_model().state_dict()), context)
    assert reply.has_error() and "has no training images" in reply.error.reason


def test_the_learning_rate_schedule_spans_the_federations_rounds(hospital, inside_a_run):
    context = Context(run_id=1, node_id=1, node_config={"data-path": str(hospital)},
                      state=RecordDict(), run_config={})
    state = task().build_model().state_dict()
    for server_round, share in ((1, 0.0), (3, 0.5), (4, 0.75)):
        reply = app(request(state, train={"lr": 0.01, "schedule": "cosine"},
                            **{"num-rounds": 4, "server-round": server_round}), context)
        assert reply.content["metrics"]["lr"] == pytest.approx(cosine_lr(0.01, share))


def test_the_coordinator_cannot_choose_a_hospitals_device(hospital, inside_a_run):
    context = Context(run_id=1, node_id=1, node_config={"data-path": str(hospital)},
                      state=RecordDict(), run_config={})
    with pytest.raises(ConfigError, match=r"train\.device"):
        app(request(task().build_model().state_dict(), train={"device": "cuda"}), context)


def test_a_train_request_that_validates_first_reports_the_global_models_own_metrics(
        hospital, inside_a_run):
    """One message a round: validating first gives exactly what an evaluate request of the
    same global model gives (under FedBN with the hospital's own norms), and what the node
    then trains is unchanged by it."""
    context = Context(run_id=1, node_id=1, node_config={"data-path": str(hospital)},
                      state=RecordDict(), run_config={})
    torch.manual_seed(0)
    state = task().build_model().state_dict()
    fedbn = {"keep-local-norm": True}
    app(request(state, **fedbn, train={"lr": 0.05}), context)  # the node now has own norms
    incoming = {k: v * 1.01 for k, v in state.items()}
    evaluated = app(Message(request(incoming, **fedbn).content, dst_node_id=1,
                            message_type=MessageType.EVALUATE), copy.deepcopy(context))
    both = app(request(incoming, **fedbn, **{"validate-global": True}, train={"lr": 0.05}),
               copy.deepcopy(context))
    alone = app(request(incoming, **fedbn, train={"lr": 0.05}), copy.deepcopy(context))
    metrics = dict(both.content["metrics"])
    validation = {k.removeprefix("global-val-"): v for k, v in metrics.items()
                  if k.startswith("global-val-")}
    expected = {k: v for k, v in evaluated.content["metrics"].items() if k != "seconds"}
    assert {k: v for k, v in validation.items() if k != "seconds"} == \
        pytest.approx(expected, nan_ok=True)
    assert 0 < validation["dice_mean"] < 1 and validation["num-examples"] > 0
    assert not any(k.startswith("global-val-") for k in alone.content["metrics"])
    for key, value in weights(alone).items():
        torch.testing.assert_close(weights(both)[key], value, msg=key)
