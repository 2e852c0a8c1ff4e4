"""Taking part in secure aggregation (Flower's SecAgg+), when the server runs it.

Flower 1.42 offers SecAgg+ only on its legacy path: the server's
``SecAggPlusWorkflow`` sends training requests in the legacy layout
(``fitins.*``: positional arrays, a flat config) with a ``secaggplus_configs``
record, and the node's ``secaggplus_mod`` answers the protocol's four stages.
``secure_aggregation`` is that mod for this ClientApp: messages without the
SecAgg+ record pass through untouched; in the stage that trains, the legacy
request is turned into the ordinary request (weights named by the config's
``weight-keys``), the ordinary handler (policy, DP, ledger, audit) trains, and
its reply goes back to SecAgg+ in the legacy layout, where it is clipped to the
protocol's range, quantised and masked before it leaves. Each hospital's
weight in the sum is 1 (a uniform average; see docs/deployment.md). The node
takes part only when the threshold the coordinator set is a majority of the
shares: fewer colluding hospitals (with the coordinator) could otherwise rebuild
its masks and read its update.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.compat.common import recorddict_compat as compat

from tasks.protocol import WEIGHT_KEYS

CLIPPED = "secagg-clipped"


class SecureAggregationRefused(RuntimeError):
    """The node's handler refused the round; SecAgg+ counts the node as dropped."""


def secure_aggregation(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Answer SecAgg+ stages when the message carries them; otherwise pass it on."""
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    if configs.get(Key.STAGE) == Stage.SETUP:
        shares, threshold = int(configs[Key.SHARE_NUMBER]), int(configs[Key.THRESHOLD])
        if 2 * threshold <= shares:
            return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION,
                                 f"secure aggregation refused: threshold {threshold} of "
                                 f"{shares} shares is not a majority, so a minority of "
                                 "hospitals could unmask this node's update"), reply_to=msg)

    def train(legacy: Message, ctx: Context) -> Message:
        request = from_legacy(legacy)
        reply = call_next(request, ctx)
        if reply.has_error():
            raise SecureAggregationRefused(reply.error.reason)
        clipping = float(ctx.state.config_records[RECORD_KEY_STATE]["clipping_range"])
        return Message(to_legacy(reply, request, clipping), reply_to=legacy)

    return secaggplus_mod(msg, context, train)


def from_legacy(legacy: Message) -> Message:
    """The ordinary training request inside a legacy one: named weights and the config."""
    fitins = compat.recorddict_to_fitins(legacy.content, keep_input=True)
    config = dict(fitins.config)
    keys = json.loads(str(config[WEIGHT_KEYS]))
    arrays = parameters_to_ndarrays(fitins.parameters)
    if len(keys) != len(arrays):
        raise ValueError(f"secure aggregation: {len(arrays)} arrays for {len(keys)} weights")
    weights = ArrayRecord({key: Array(array) for key, array in zip(keys, arrays, strict=True)})
    return Message(RecordDict({"arrays": weights, "config": ConfigRecord(config)}),
                   metadata=legacy.metadata)


def to_legacy(reply: Message, request: Message, clipping_range: float) -> RecordDict:
    """The ordinary reply in the legacy layout SecAgg+ masks: positional arrays, weight 1,
    metrics (plus the fraction of values outside the protocol's clipping range)."""
    keys = json.loads(str(request.content["config"][WEIGHT_KEYS]))
    arrays = [reply.content["arrays"][key].numpy() for key in keys]
    outside = sum(int(np.sum(np.abs(a) > clipping_range)) for a in arrays)
    metrics = {**dict(reply.content["metrics"]),
               CLIPPED: outside / max(1, sum(a.size for a in arrays))}
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 1, metrics)
    return compat.fitres_to_recorddict(fitres, keep_input=False)
