"""The model on the wire as one array: exact round trips, clear refusals, and strategies
that aggregate the packed array exactly as they aggregated the named tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from torch import nn

from server.config import FEDERATION_KEYS
from server.strategies import build_strategy
from tasks.config import validate
from tasks.packing import PACKED, pack, unpack


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Linear(4, 2))
    model[1].num_batches_tracked += seed  # a non-float tensor
    with torch.no_grad():
        model[1].running_mean.uniform_()
    return model


def test_a_state_dict_round_trips_exactly_in_one_float_array_and_its_counters():
    state = _model(1).state_dict()
    record = pack(state)
    assert list(record.keys()) == [PACKED, "1.num_batches_tracked"]
    assert record[PACKED].numpy().dtype == np.float32
    restored = unpack(record, _model(2).state_dict())
    assert list(restored) == list(state)
    for key, value in state.items():
        assert restored[key].dtype == value.dtype and torch.equal(restored[key], value), key


def test_a_record_that_does_not_fit_the_model_is_refused_in_words():
    like = _model(0).state_dict()
    with pytest.raises(ValueError, match="hold 10 values; the model has 52"):
        unpack(ArrayRecord({PACKED: Array(np.zeros(10, np.float32))}), like)
    with pytest.raises(ValueError, match=r"not packed into 'weights' \(arrays: 0\.weight\)"):
        unpack(ArrayRecord({"0.weight": Array(np.zeros(3, np.float32))}), like)
    packed = pack(like)
    del packed["1.num_batches_tracked"]
    with pytest.raises(ValueError, match=r"'1\.num_batches_tracked' is missing"):
        unpack(packed, like)


class _Nodes:
    """The part of a Grid that sampling reads: five connected nodes."""

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3, 4, 5]


def _replies(records: list[ArrayRecord]) -> list[Message]:
    return [Message(RecordDict({"arrays": record,
                                "metrics": MetricRecord({"num-examples": node + 1})}),
                    metadata=Metadata(run_id=1, message_id="", src_node_id=node + 1,
                                      dst_node_id=0, reply_to_message_id="r", group_id="1",
                                      created_at=0.0, ttl=60.0, message_type="train"))
            for node, record in enumerate(records)]


@pytest.mark.parametrize("name", ["fedavg", "fedmedian", "fedtrimmedavg", "fedadam"])
def test_strategies_aggregate_the_packed_array_as_they_did_the_tensors(name, inside_a_run):
    federation = validate({"federation": {"strategy": name, "trim_beta": 0.2}},
                          {"federation": FEDERATION_KEYS}, "test")["federation"]
    states = [{k: v for k, v in _model(seed).state_dict().items() if v.is_floating_point()}
              for seed in range(5)]
    aggregated = []
    for records in ([ArrayRecord(s) for s in states], [pack(s) for s in states]):
        strategy = build_strategy(federation)
        # the server optimiser (FedAdam) starts from the current global model
        strategy.configure_train(1, records[0], ConfigRecord(), _Nodes())
        arrays, _ = strategy.aggregate_train(1, _replies(records))
        aggregated.append(arrays)
    named, packed = aggregated
    restored = unpack(packed, states[0])
    for key in states[0]:
        np.testing.assert_allclose(restored[key].numpy(), named[key].numpy(), rtol=1e-6,
                                   atol=1e-7, err_msg=key)


def test_a_float16_update_adds_back_to_the_weights_and_a_non_finite_one_goes_whole():
    from tasks.packing import UPDATE, UPDATE_SCALE, full_weights, pack_reply

    sent = pack(_model(0).state_dict())
    for size in (1e-3, 1e-7, 10.0):  # scaled: as precise whatever the update's size
        new = _model(0).state_dict()
        new["0.weight"] = new["0.weight"] + size * torch.linspace(-1, 1, 27).reshape(3, 1, 3, 3)
        reply = pack_reply(new, sent, "float16")
        assert list(reply.keys()) == [UPDATE, UPDATE_SCALE, "1.num_batches_tracked"]
        assert reply[UPDATE].numpy().dtype == np.float16
        rebuilt = full_weights(reply, sent)
        assert list(rebuilt.keys()) == list(sent.keys())  # pack's order
        exact = pack(new)[PACKED].numpy()
        update = exact - sent[PACKED].numpy()
        assert np.abs(update).max() > 0
        np.testing.assert_array_less(np.abs(rebuilt[PACKED].numpy() - exact),
                                     np.abs(update) * 2 ** -10 + 1e-7)
    assert full_weights(pack(new), sent) is not None  # float32 weights pass through
    for bad in (float("nan"), float("inf")):
        broken = _model(0).state_dict()
        broken["2.bias"] = broken["2.bias"] + bad
        whole = pack_reply(broken, sent, "float16")
        assert PACKED in whole and UPDATE not in whole
    short = ArrayRecord({UPDATE: Array(np.zeros(5, np.float16)),
                         UPDATE_SCALE: Array(np.ones(1, np.float32))})
    with pytest.raises(ValueError, match="holds 5 values; the weights sent 52"):
        full_weights(short, sent)
    unscaled = ArrayRecord({UPDATE: Array(np.zeros(52, np.float16))})
    with pytest.raises(ValueError, match="without its scale"):
        full_weights(unscaled, sent)


def test_float16_updates_aggregate_as_their_weights_would(inside_a_run):
    """Behind ``FullWeights``, FedAvg over float16 updates of a model with a BatchNorm counter
    gives the float32 weights' average to float16's precision; an update of another size is
    refused by name."""
    from server.recorder import HospitalRecorder
    from server.update_precision import FullWeights
    from server.validation import UpdateValidation
    from tasks.packing import pack_reply

    sent = pack(_model(0).state_dict())
    news = [_model(seed).state_dict() for seed in (1, 2, 3)]
    results = {}
    for precision in ("float32", "float16"):
        federation = validate({"federation": {}}, {"federation": FEDERATION_KEYS},
                              "test")["federation"]
        recorder = HospitalRecorder(build_strategy(federation), {i: f"h{i}" for i in range(1, 6)})
        strategy = FullWeights(UpdateValidation(recorder))
        list(strategy.configure_train(1, sent, ConfigRecord(), _Nodes()))
        records = [pack_reply(new, sent, precision) for new in news]
        wrong = pack_reply(news[0], sent, "float16")
        wrong["update-float16"] = Array(np.zeros(7, np.float16))
        arrays, _ = strategy.aggregate_train(1, _replies([*records, wrong]))
        results[precision] = arrays[PACKED].numpy()
        errors = {row["hospital"]: row.get("train_error", "") for row in recorder.rows(1)}
        assert "missing ['weights'], unexpected ['update-float16'" in errors["h4"]
        assert not any(errors[f"h{i}"] for i in (1, 2, 3)), errors
    np.testing.assert_allclose(results["float16"], results["float32"], rtol=0, atol=1e-3)
    assert not np.allclose(results["float16"], sent[PACKED].numpy(), atol=1e-2)
