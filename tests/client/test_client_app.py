"""The ClientApp driven with real Flower messages: FedBN, FedProx, personalisation (Ditto,
gated fine-tuning) and a hospital's data."""

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


FEDERATION = "0123456789abcdef0123456789abcdef"


def personalised(method: str, federation: str = FEDERATION, **settings) -> dict:
    """A request's personalisation: the method and its settings, and the run's identity."""
    return {"personal": json.dumps({"personalisation": method, **settings}),
            "federation-id": federation}


def node(hospital) -> Context:
    """A node as it starts: nothing in memory, its data folder on disk."""
    from client import hospital as hospitals

    hospitals._MANIFESTS.clear()
    return Context(run_id=1, node_id=1, node_config={"data-path": str(hospital)},
                   state=RecordDict(), run_config={})


def stored(hospital, federation: str = FEDERATION) -> tuple[dict, dict]:
    """The hospital's personal model of the run: its weights and checkpoint payload."""
    from tasks.checkpoint import load_checkpoint

    _, model, payload = load_checkpoint(hospital / ".spinefl" / "personal" / federation
                                        / "model.pt")
    return model.state_dict(), payload


def shifted(state: dict, by: float) -> dict:
    return {k: v + by if v.is_floating_point() else v for k, v in state.items()}


def test_dittos_personal_model_survives_a_node_restart(hospital, inside_a_run):
    """Round 1 trains and stores the personal model; a restarted node (nothing in memory)
    starts round 2 from it, not from round 2's global model (lr 0 in round 2: what it stores
    is what it started from); the update it sends is the global model's training alone."""
    import stat

    torch.manual_seed(0)
    start = task().build_model().state_dict()
    first = app(request(start, **personalised("ditto"), train={"lr": 0.05},
                        **{"server-round": 1, "local-steps": 2}), node(hospital))
    after_first, payload = stored(hospital)
    assert payload["round"] == 1 and payload["personalisation"] == "ditto"
    assert any(not torch.equal(after_first[k], start[k]) for k in start), "it trained"
    assert stat.S_IMODE((hospital / ".spinefl" / "personal").stat().st_mode) == 0o700
    metrics = first.content["metrics"]
    assert 0 <= metrics["personal-val-dice_mean"] <= 1 and metrics["personal-seconds"] > 0
    plain = app(request(start, train={"lr": 0.05}, **{"server-round": 1, "local-steps": 2}),
                node(hospital))
    for key, value in weights(plain).items():
        torch.testing.assert_close(weights(first)[key], value, msg=key)

    app(request(shifted(start, 1.0), **personalised("ditto"), **{"server-round": 2}),
        node(hospital))
    after_second, payload = stored(hospital)
    assert payload["round"] == 2
    for key, value in after_first.items():
        torch.testing.assert_close(after_second[key], value, msg=key)

    # A resumed run repeating round 2 (its coordinator stopped before checkpointing it):
    # the personal model does not take round 2 twice.
    again = app(request(shifted(start, 1.0), **personalised("ditto"), train={"lr": 0.05},
                        **{"server-round": 2}), node(hospital))
    assert again.content["metrics"]["personal-steps"] == 0
    for key, value in stored(hospital)[0].items():
        torch.testing.assert_close(value, after_second[key], msg=key)


def test_dittos_pull_keeps_the_personal_model_near_the_global_one(hospital, inside_a_run):
    torch.manual_seed(0)
    start = task().build_model().state_dict()
    distances = {}
    for pull, federation in ((0.0, "a" * 32), (50.0, "b" * 32)):
        app(request(start, **personalised("ditto", federation, personal_lambda=pull),
                    train={"lr": 0.05}, **{"server-round": 1, "local-steps": 4}),
            node(hospital))
        personal, _ = stored(hospital, federation)
        distances[pull] = sum(float(((personal[k] - start[k]) ** 2).sum())
                              for k in start if start[k].is_floating_point()) ** 0.5
    assert 0 < distances[50.0] < 0.5 * distances[0.0], distances


def evaluation(state: dict, **config) -> Message:
    return Message(request(state, **config).content, dst_node_id=1,
                   message_type=MessageType.EVALUATE)


@pytest.mark.parametrize("lr", [5.0, 0.01])
def test_gated_fine_tuning_never_keeps_a_model_worse_on_val_than_the_global_one(
        hospital, inside_a_run, lr):
    """lr 5 wrecks the model, and the global one is kept; lr 0.01 for an epoch from an
    untrained model improves it, and the fine-tuned one is kept. Either way the kept
    model's val score is at least the global model's, and the stored model is the kept one."""
    torch.manual_seed(0)
    start = task().build_model().state_dict()
    reply = app(evaluation(start, **personalised("finetune"), train={"lr": lr},
                           **{"server-round": 3, "local-steps": 0}), node(hospital))
    metrics = reply.content["metrics"]
    kept = metrics["personal-val-kept-fine-tuned"]
    assert metrics["personal-val-dice_mean"] >= metrics["dice_mean"]
    personal, payload = stored(hospital)
    assert payload["personalisation"] == "finetune" and payload["round"] == 3
    same = all(torch.equal(personal[k], start[k]) for k in start)
    if lr == 5.0:
        assert kept == 0.0 and same
        assert metrics["personal-val-dice_mean"] == metrics["dice_mean"]
    else:
        assert kept == 1.0 and not same
        assert metrics["personal-val-dice_mean"] > metrics["dice_mean"]


def test_a_hospital_that_trains_only_with_dp_sends_nothing_of_its_personal_model(
        hospital, inside_a_run):
    """Its fine-tuned model (trained without noise) is kept at home; no metric of it leaves."""
    torch.manual_seed(0)
    start = task().build_model().state_dict()
    budgeted = node(hospital)
    budgeted.node_config["max-epsilon"] = 8.0
    reply = app(evaluation(start, **personalised("finetune"), train={"lr": 0.01},
                           **{"server-round": 3, "local-steps": 2}), budgeted)
    assert not reply.has_error()
    assert not any(k.startswith("personal") for k in reply.content["metrics"])
    assert stored(hospital)[1]["personalisation"] == "finetune"


def test_keeps_tuned_keeps_the_global_model_on_a_tie_or_without_a_score():
    from client.personal import keeps_tuned

    assert keeps_tuned(task(), {"dice_mean": 0.5}, {"dice_mean": 0.51})
    assert not keeps_tuned(task(), {"dice_mean": 0.5}, {"dice_mean": 0.5})
    assert not keeps_tuned(task(), {"dice_mean": 0.5}, {"dice_mean": float("nan")})
    assert not keeps_tuned(task(), {}, {})
    assert keeps_tuned(task(), {"dice_mean": float("nan")}, {"dice_mean": 0.1})


def test_under_fedbn_a_hospital_keeps_the_global_model_with_its_own_norms(hospital,
                                                                         inside_a_run):
    context = node(hospital)
    torch.manual_seed(0)
    start = task().build_model().state_dict()
    trained = weights(app(request(start, **{"keep-local-norm": True}, train={"lr": 0.05}),
                          context))
    final = shifted(trained, 1.0)
    reply = app(evaluation(final, **{"keep-local-norm": True}, **personalised("none"),
                           **{"server-round": 1}), context)  # the last of one round
    assert not any(k.startswith("personal-val-") for k in reply.content["metrics"])
    personal, payload = stored(hospital)
    assert payload["personalisation"] == "fedbn"
    norms = norm_state_keys(task().build_model())
    for key, value in personal.items():
        torch.testing.assert_close(value, trained[key] if key in norms else final[key])


def test_a_coordinator_cannot_choose_where_a_hospital_writes(hospital, tmp_path, inside_a_run):
    state = task().build_model().state_dict()
    reply = app(request(state, **personalised("ditto", "../../../outside"),
                        **{"server-round": 1}), node(hospital))
    assert reply.has_error() and "is not 32 hexadecimal digits" in reply.error.reason
    assert not list(tmp_path.parent.rglob("outside*"))


def test_a_float16_reply_carries_the_update_in_half_the_bytes(hospital, inside_a_run):
    """Asked for float16, the hospital sends its update (new weights minus those it was
    sent) in float16; added back, it gives the float32 reply's weights to float16's
    precision. A precision it does not know is refused."""
    from tasks.packing import UPDATE, full_weights

    state = task().build_model().state_dict()
    replies = {}
    for precision in ("float32", "float16"):
        context = Context(run_id=1, node_id=1, node_config={"data-path": str(hospital)},
                          state=RecordDict(), run_config={})
        sent = request(state, train={"lr": 0.01}, **{"update-precision": precision})
        replies[precision] = (sent, app(sent, context))
    sent, half = replies["float16"]
    assert UPDATE in half.content["arrays"] and "weights" not in half.content["arrays"]
    whole = replies["float32"][1].content["metrics"]["update-bytes"]
    # half the weights' bytes, plus the scale's array (4 bytes and its .npy header)
    assert half.content["metrics"]["update-bytes"] < whole / 2 + 256
    rebuilt = unpack(full_weights(half.content["arrays"], sent.content["arrays"]),
                     task().build_model().state_dict())
    exact, moved = weights(replies["float32"][1]), 0.0
    for key, value in exact.items():
        if value.is_floating_point():
            update = (value - state[key]).abs()
            assert torch.all((rebuilt[key] - value).abs() <= update * 2 ** -10 + 1e-7), key
            moved += float(update.sum())
        else:
            assert torch.equal(rebuilt[key], value), key
    assert moved > 0  # the step moved the weights: there was an update to carry
    context = Context(run_id=1, node_id=1, node_config={"data-path": str(hospital)},
                      state=RecordDict(), run_config={})
    refused = app(request(state, **{"update-precision": "int4"}), context)
    assert refused.has_error() and "update precision 'int4'" in refused.error.reason
