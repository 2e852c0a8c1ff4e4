"""A strategy wrapper that records what each hospital replied, round by round.

It wraps any strategy (configure/aggregate are delegated unchanged) and keeps,
per round and hospital, the training and evaluation metrics that came back,
or the error a hospital replied with. The ServerApp's round-end callback turns
these into rows of the run's metrics table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

_EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Interrupt): ", re.MULTILINE)


def concise(reason: str, limit: int = 400) -> str:
    """The exception a node's error reason ends with, on one line (no remote traceback)."""
    starts = list(_EXCEPTION_LINE.finditer(reason))
    tail = reason[starts[-1].start():] if starts else reason
    line = " / ".join(part.strip() for part in tail.splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class HospitalRecorder(Strategy):
    """Delegate to ``inner``; remember each hospital's reply per round.

    ``names`` maps Flower node ids to hospital names (learned when the run
    starts); ``round_offset`` numbers rounds of a resumed run after the
    rounds already done.
    """

    def __init__(self, inner: Strategy, names: dict[int, str], round_offset: int = 0) -> None:
        self.inner = inner
        self.names = names
        self.round_offset = round_offset
        self.replies: dict[int, dict[str, dict[str, Any]]] = {}

    def name_of(self, node_id: int) -> str:
        """The hospital name of a node (its id where the name is not known)."""
        return self.names.get(node_id, f"node-{node_id}")

    def summary(self) -> None:
        self.inner.summary()

    def _record(self, server_round: int, replies: Iterable[Message], prefix: str) -> list[Message]:
        replies = list(replies)
        rows = self.replies.setdefault(server_round + self.round_offset, {})
        for reply in replies:
            hospital = self.name_of(reply.metadata.src_node_id)
            row = rows.setdefault(hospital, {"hospital": hospital})
            if reply.has_error():
                reason = concise(reply.error.reason)
                row[f"{prefix}_error"] = reason
                log(WARNING, "round %s: hospital %s failed in %s: %s",
                    server_round + self.round_offset, hospital, prefix, reason)
                continue
            for record in reply.content.metric_records.values():
                row.update({f"{prefix}_{k}": v for k, v in record.items()})
        return replies

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        recorded = self._record(server_round, replies, "train")
        return self.inner.aggregate_train(server_round, recorded)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round,
                                             self._record(server_round, replies, "val"))

    def rows(self, server_round: int) -> list[dict[str, Any]]:
        """One row per hospital for a (local) round number: train_* and val_* metrics."""
        recorded = self.replies.get(server_round + self.round_offset, {})
        return [{"round": server_round + self.round_offset, **row} for row in recorded.values()]
