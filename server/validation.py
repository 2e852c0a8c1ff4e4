"""Update validation before aggregation: a strategy wrapper that turns bad updates into errors.

A hospital's reply is aggregated only when its weights have exactly the global
model's keys and shapes, every value is finite, its update (new weights minus
the global ones) is not exactly zero, and, when a bound is set, the update's
L2 norm is within it. Anything else is replaced by an error reply naming the
problem: the recorder (inside this wrapper) logs it under the hospital's name,
the metrics table shows it, and the round goes on with the other hospitals.
Wrap it outermost: ``UpdateValidation(HospitalRecorder(DP(FedAvg)), bound)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.wrapper import StrategyWrapper


def update_problem(reply: ArrayRecord, current: ArrayRecord, bound: float) -> str | None:
    """Why an update cannot be aggregated, or None when it can."""
    expected, got = list(current.keys()), list(reply.keys())
    if got != expected:
        missing = sorted(set(expected) - set(got))[:3]
        extra = sorted(set(got) - set(expected))[:3]
        return f"weights do not match the model (missing {missing}, unexpected {extra})"
    squared = 0.0
    for key in expected:
        new, old = reply[key].numpy(), current[key].numpy()
        if new.shape != old.shape:
            return f"'{key}' has shape {new.shape}, the model's is {old.shape}"
        if not np.all(np.isfinite(new)):
            return f"'{key}' holds non-finite values"
        squared += float(np.sum((new.astype(np.float64) - old) ** 2))
    norm = squared ** 0.5
    if norm == 0.0:
        return "the update is exactly zero (the global weights sent back unchanged)"
    if bound > 0 and norm > bound:
        return f"update norm {norm:.4g} is above the bound {bound:g}"
    return None


class UpdateValidation(StrategyWrapper):
    """Delegate to ``inner``; replace replies whose update is invalid by error replies."""

    def __init__(self, inner: Strategy, max_update_norm: float = 0.0) -> None:
        super().__init__(inner)
        self.max_update_norm = max_update_norm
        self.current = ArrayRecord()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current = arrays
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        checked = []
        for reply in replies:
            problem = None
            if not reply.has_error():
                records = list(reply.content.array_records.values())
                problem = ("expected one set of weights, got "
                           f"{len(records)}") if len(records) != 1 else update_problem(
                    records[0], self.current, self.max_update_norm)
            if problem:
                reply = Message(Error(ErrorCode.UNKNOWN, f"update refused by the server: "
                                                         f"{problem}"), metadata=reply.metadata)
            checked.append(reply)
        return self.inner.aggregate_train(server_round, checked)
