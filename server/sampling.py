"""Node sampling that cannot wait forever.

Flower's strategies sample nodes with ``sample_nodes``, which waits, without
end, until ``min_available_nodes`` are connected: a federation that lost
hospitals below the minimum would hang. ``SamplingGuard`` waits at most a
bounded time (``round_timeout``) before each round's sampling and otherwise stops
the run with ``TooFewHospitals``, naming the hospitals that are gone (the last
finished round stays checkpointed, to resume).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.wrapper import StrategyWrapper
from tasks.errors import UserError


class TooFewHospitals(UserError):
    """Fewer hospitals are connected than a round needs, for longer than it may wait."""


def wait_for_hospitals(grid: Grid, count: int, timeout: float,
                       names: Mapping[int, str] | None = None) -> list[int]:
    """Node ids once at least ``count`` nodes are connected; TooFewHospitals after
    ``timeout`` s, naming the hospitals of ``names`` (node id -> name: those the run began
    with) that are not connected."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            missing = sorted(name for node, name in (names or {}).items() if node not in nodes)
            gone = f"; not connected: {', '.join(missing)}" if missing else ""
            raise TooFewHospitals(f"only {len(nodes)} of the {count} hospitals the run needs "
                                  f"were connected within {timeout:g} s{gone}")
        time.sleep(0.5)


class SamplingGuard(StrategyWrapper):
    """Before each round's training and evaluation, wait at most ``timeout`` s for
    ``minimum`` connected hospitals, then let the wrapped strategy sample them."""

    def __init__(self, inner: Strategy, minimum: int, timeout: float,
                 names: Mapping[int, str] | None = None) -> None:
        super().__init__(inner)
        self.minimum = minimum
        self.timeout = timeout
        self.names = names

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        wait_for_hospitals(grid, self.minimum, self.timeout, self.names)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        wait_for_hospitals(grid, self.minimum, self.timeout, self.names)
        return self.inner.configure_evaluate(server_round, arrays, config, grid)
