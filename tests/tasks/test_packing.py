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


def test_a_float16_update_adds_back_to_the_weights_and_what_does_not_fit_goes_whole():
    from tasks.packing import UPDATE, full_weights, pack_reply

    sent = pack(_model(0).state_dict())
    new = _model(0).state_dict()
    new["0.weight"] = new["0.weight"] + 1e-3
    reply = pack_reply(new, sent, "float16")
    assert list(reply.keys()) == ["1.num_batches_tracked", UPDATE]
    assert reply[UPDATE].numpy().dtype == np.float16
    rebuilt = full_weights(reply, sent)
    np.testing.assert_allclose(rebuilt[PACKED].numpy(), pack(new)[PACKED].numpy(),
                               rtol=0, atol=1e-3 * 2 ** -10)
    assert full_weights(pack(new), sent) is not None  # float32 weights pass through
    for bad in (float("nan"), 1e6):  # non-finite, or beyond float16's range
        broken = _model(0).state_dict()
        broken["2.bias"] = broken["2.bias"] + bad
        whole = pack_reply(broken, sent, "float16")
        assert PACKED in whole and UPDATE not in whole
    short = ArrayRecord({UPDATE: Array(np.zeros(5, np.float16))})
    with pytest.raises(ValueError, match="holds 5 values; the weights sent 52"):
        full_weights(short, sent)


def test_float16_updates_aggregate_as_their_weights_would(inside_a_run):
    """Behind ``FullWeights``, FedAvg over float16 updates gives the float32 weights'
    average to float16's precision; an update of another size is refused by name."""
    from server.recorder import HospitalRecorder
    from server.update_precision import FullWeights
    from server.validation import UpdateValidation
    from tasks.packing import pack_reply

    rng = np.random.default_rng(0)
    sent = ArrayRecord({PACKED: Array(rng.normal(size=52).astype(np.float32))})
    news = [sent[PACKED].numpy() + rng.normal(scale=0.01, size=52).astype(np.float32)
            for _ in range(3)]
    results = {}
    for precision in ("float32", "float16"):
        federation = validate({"federation": {}}, {"federation": FEDERATION_KEYS},
                              "test")["federation"]
        recorder = HospitalRecorder(build_strategy(federation), {i: f"h{i}" for i in range(1, 6)})
        strategy = FullWeights(UpdateValidation(recorder))
        list(strategy.configure_train(1, sent, ConfigRecord(), _Nodes()))
        records = [pack_reply({"w": torch.from_numpy(new)}, sent, precision) for new in news]
        records.append(ArrayRecord({"update-float16": Array(np.zeros(7, np.float16))}))
        arrays, _ = strategy.aggregate_train(1, _replies(records))
        results[precision] = arrays[PACKED].numpy()
        error = {row["hospital"]: row.get("train_error", "") for row in recorder.rows(1)}["h4"]
        assert "missing ['weights'], unexpected ['update-float16']" in error
    np.testing.assert_allclose(results["float16"], results["float32"], rtol=0, atol=2e-5)
    assert not np.array_equal(results["float16"], sent[PACKED].numpy())
