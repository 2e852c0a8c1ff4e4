"""Secure aggregation's plumbing: the legacy SecAgg+ layout and back, and the settings it
cannot go with (the protocol itself runs in tests/e2e/test_deployment.py with real nodes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.app.metadata import Metadata
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from client.secure_aggregation import CLIPPED, from_legacy, to_legacy
from server.config import validate_experiment
from tasks.config import ConfigError
from tasks.protocol import WEIGHT_KEYS


def _legacy_request(weights: dict[str, np.ndarray]) -> Message:
    config = {WEIGHT_KEYS: json.dumps(list(weights)), "local-steps": 4}
    content = compat.fitins_to_recorddict(
        FitIns(ndarrays_to_parameters(list(weights.values())), config), keep_input=True)
    metadata = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=7,
                        reply_to_message_id="", group_id="1", created_at=0.0, ttl=60.0,
                        message_type="train")
    return Message(content, metadata=metadata)


def test_legacy_requests_and_replies_keep_every_weight_by_name():
    rng = np.random.default_rng(0)
    weights = {"conv.weight": rng.normal(size=(4, 1, 3, 3)).astype(np.float32),
               "conv.bias": np.array([0.5, -9.5, 0.0, 1.0], dtype=np.float32)}
    request = from_legacy(_legacy_request(weights))
    assert list(request.content["arrays"].keys()) == list(weights)
    for key, value in weights.items():
        np.testing.assert_array_equal(request.content["arrays"][key].numpy(), value)
    assert request.content["config"]["local-steps"] == 4

    trained = {k: v + 1 for k, v in weights.items()}
    reply = Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in trained.items()}),
                                "metrics": MetricRecord({"loss": 0.5, "num-examples": 80})}),
                    reply_to=request)
    fitres = compat.recorddict_to_fitres(to_legacy(reply, request, clipping_range=8.0), True)
    back = parameters_to_ndarrays(fitres.parameters)
    for value, expected in zip(back, trained.values(), strict=True):
        np.testing.assert_array_equal(value, expected)
    assert fitres.num_examples == 1  # uniform weight in the secure sum
    assert fitres.metrics["loss"] == 0.5
    assert fitres.metrics[CLIPPED] == pytest.approx(1 / 40)  # -8.5 of 40 values is outside


@pytest.mark.parametrize("federation, fragment", [
    ({"strategy": "fedmedian"}, "needs each update"),
    ({"secagg_threshold": 0.5}, "secagg_threshold"),
    ({"central_dp": True}, "central_dp"),
    ({"max_update_norm": 10.0}, "max_update_norm"),
    ({"min_hospitals": 2}, "at least 3"),
    ({"update_precision": "float16"}, "quantises the weights itself"),
])
def test_secure_aggregation_refuses_what_needs_each_update(federation, fragment):
    with pytest.raises(ConfigError, match=fragment):
        validate_experiment({"task": {"name": "segmentation"},
                             "federation": {"secure_aggregation": True, "min_hospitals": 3,
                                            **federation}}, "x.toml")


@pytest.mark.parametrize("shares, threshold, refused", [(3, 1, True), (4, 2, True),
                                                        (3, 2, False), (5, 3, False)])
def test_a_node_takes_part_only_under_a_majority_threshold(shares, threshold, refused):
    """The coordinator sets SecAgg+'s threshold; a hospital's node refuses a setup in which
    fewer than a majority of the shares could rebuild its masks."""
    from flwr.app import ConfigRecord, Context
    from flwr.common.secure_aggregation.secaggplus_constants import (
        RECORD_KEY_CONFIGS,
        Key,
        Stage,
    )

    from client.secure_aggregation import secure_aggregation

    content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({
        Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: shares, Key.SHARE_NUMBER: shares,
        Key.THRESHOLD: threshold, Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 1 << 16,
        Key.MOD_RANGE: 1 << 24, Key.MAX_WEIGHT: 1.0})})
    metadata = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=7,
                        reply_to_message_id="", group_id="1", created_at=0.0, ttl=60.0,
                        message_type="train")
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    reply = secure_aggregation(Message(content, metadata=metadata), context,
                               lambda msg, ctx: pytest.fail("setup never trains"))
    assert reply.has_error() == refused
    if refused:
        assert f"threshold {threshold} of {shares} shares is not a majority" in \
            reply.error.reason


@pytest.mark.parametrize("fraction", [0.51, 0.6, 0.75, 1.0])
def test_the_coordinators_threshold_is_always_one_the_nodes_accept(fraction):
    """Flower rounds 0.6 of 4 shares to 2, which every node would refuse; the threshold
    spinefl asks for is the fraction rounded up and at least a majority."""
    from server.secure_aggregation import majority_threshold

    for shares in range(3, 16):
        threshold = majority_threshold(fraction, shares)
        assert 2 * threshold > shares and threshold <= shares
        assert threshold >= fraction * shares - 1e-9
    assert majority_threshold(0.6, 4) == 3 and majority_threshold(0.6, 3) == 2
