"""One message a round: the train request also validates the global model it carries.

A round of Flower's ``Strategy.start`` sends two messages to every hospital: train, then
evaluate the new aggregate. In a deployment each message is a full exchange (the
coordinator's and the node's polling, a process at the node, the model on the wire), so
``FoldedValidation`` asks each round's train request to validate the incoming global
model first (the previous round's aggregate, with the hospital's own normalisation layers
under FedBN) and sends a separate evaluation only after the last round. Every round's
aggregate is still validated by every hospital that trains in the next round; the
``HospitalRecorder`` files each validation under the round that produced the model.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.wrapper import StrategyWrapper
from tasks.protocol import VALIDATE_GLOBAL


def validates_global(server_round: int, resumed: bool) -> bool:
    """Whether a round's train requests validate the model they carry: every round but
    the first of a fresh run (the initial model, which no report asks for)."""
    return server_round > 1 or resumed


class FoldedValidation(StrategyWrapper):
    """Validation in the train requests; ``inner``'s evaluation only in ``last_round``
    (local round numbers; ``resumed``: the first round's model is a finished round's)."""

    def __init__(self, inner: Strategy, last_round: int, resumed: bool = False) -> None:
        super().__init__(inner)
        self.last_round = last_round
        self.resumed = resumed

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        marked = ConfigRecord({**config,
                               VALIDATE_GLOBAL: validates_global(server_round, self.resumed)})
        return self.inner.configure_train(server_round, arrays, marked, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if server_round < self.last_round:
            return []
        return self.inner.configure_evaluate(server_round, arrays, config, grid)
