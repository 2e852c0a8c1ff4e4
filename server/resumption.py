"""A resumed run's requests carry the run's round numbers, not the new process's.

Flower's strategies number the rounds of each ``Strategy.start`` from 1 and write that
number into every request (``server-round``). A run resumed after round ``k`` would tell
the hospitals it is in round 1 again: their learning-rate schedule (which spans the run's
rounds) would start over, their batches would repeat round 1's draws, and their audit log
and privacy ledger would record the wrong round. ``GlobalRounds`` adds ``k``.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.wrapper import StrategyWrapper

SERVER_ROUND = "server-round"


class GlobalRounds(StrategyWrapper):
    """``inner``'s requests with ``server-round`` counted from ``offset`` rounds done."""

    def __init__(self, inner: Strategy, offset: int) -> None:
        super().__init__(inner)
        self.offset = offset

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self._renumbered(self.inner.configure_train(server_round, arrays, config, grid),
                                server_round)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._renumbered(
            self.inner.configure_evaluate(server_round, arrays, config, grid), server_round)

    def _renumbered(self, messages: Iterable[Message], server_round: int) -> list[Message]:
        messages = list(messages)
        for message in messages:
            message.content["config"][SERVER_ROUND] = server_round + self.offset
        return messages
