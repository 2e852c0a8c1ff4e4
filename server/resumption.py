"""A resumed run's strategy sees the run's round numbers, not the new process's.

Flower's strategies number the rounds of each ``Strategy.start`` from 1 and write that
number into every request (``server-round``). A run resumed after round ``k`` would tell
the hospitals it is in round 1 again: their learning-rate schedule (which spans the run's
rounds) would start over, their batches would repeat round 1's draws, and their audit log
and privacy ledger would record the wrong round; and a server optimiser that counts rounds
(FedAdam's bias correction) would step as in round 1. ``GlobalRounds`` adds ``k`` to the
round of every call it passes on.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.wrapper import StrategyWrapper

SERVER_ROUND = "server-round"  # what Flower's strategies name a request's round


class GlobalRounds(StrategyWrapper):
    """``inner`` called with rounds counted from ``offset`` rounds done (Flower's strategies
    write that number into their requests' ``server-round``)."""

    def __init__(self, inner: Strategy, offset: int) -> None:
        super().__init__(inner)
        self.offset = offset

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round + self.offset, replies)
