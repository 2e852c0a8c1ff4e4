"""A strategy wrapper that records what each hospital replied, round by round.

It wraps any strategy (configure/aggregate are delegated unchanged) and keeps,
per round and hospital, the training and evaluation metrics that came back,
or the error a hospital replied with. A train reply's validation of the global
model it started from (keys prefixed ``global-val-``: the previous round's
aggregate) is kept as the previous round's ``val`` metrics, the validation of a
hospital's own model (``personal-val-``: Ditto's after this round, or what the
final fine-tuning kept) as this round's ``personal_val``; both are taken out of the
reply before the strategy aggregates it (hospitals that did not validate, over
their evaluation limit, send no such keys). The ServerApp's
round-end callback turns these into rows of the run's metrics table.
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

from server.wrapper import StrategyWrapper
from tasks.protocol import GLOBAL_VAL, PERSONAL_VAL

_EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Interrupt): ", re.MULTILINE)


def concise(reason: str, limit: int = 400) -> str:
    """The exception a node's error reason ends with, on one line (no remote traceback)."""
    starts = list(_EXCEPTION_LINE.finditer(reason))
    tail = reason[starts[-1].start():] if starts else reason
    line = " / ".join(part.strip() for part in tail.splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class HospitalRecorder(StrategyWrapper):
    """Delegate to ``inner``; remember each hospital's reply per round.

    ``names`` maps Flower node ids to hospital names (learned when the run
    starts); ``round_offset`` numbers rounds of a resumed run after the
    rounds already done.
    """

    def __init__(self, inner: Strategy, names: dict[int, str], round_offset: int = 0) -> None:
        super().__init__(inner)
        self.names = names
        self.round_offset = round_offset
        self.replies: dict[int, dict[str, dict[str, Any]]] = {}
        self.sampled: dict[str, list[int]] = {}

    def name_of(self, node_id: int) -> str:
        """The hospital name of a node (its id where the name is not known)."""
        return self.names.get(node_id, f"node-{node_id}")

    def _row(self, server_round: int, node_id: int) -> dict[str, Any]:
        hospital = self.name_of(node_id)
        rows = self.replies.setdefault(server_round + self.round_offset, {})
        return rows.setdefault(hospital, {"hospital": hospital})

    def record_metrics(self, server_round: int, node_id: int, prefix: str,
                       metrics: dict[str, Any]) -> None:
        """Keep a hospital's metrics of a (local) round as ``<prefix>_<name>``."""
        self._row(server_round, node_id).update({f"{prefix}_{k}": v for k, v in metrics.items()})

    def record_reply(self, server_round: int, node_id: int, prefix: str,
                     metrics: dict[str, Any]) -> None:
        """Keep a hospital's train (``prefix`` "train") or evaluate ("val") reply: its own
        metrics under this round; in a train reply, its validation of the global model it
        started from under the round before; its personal model's validation under this
        round."""
        parts: dict[str, dict[str, Any]] = {"own": {}, GLOBAL_VAL: {}, PERSONAL_VAL: {}}
        for key, value in metrics.items():
            marker = next((m for m in (GLOBAL_VAL, PERSONAL_VAL) if key.startswith(m)), "own")
            parts[marker][key[len(marker):] if marker != "own" else key] = value
        self.record_metrics(server_round, node_id, prefix, parts["own"])
        if parts[GLOBAL_VAL]:
            self.record_metrics(server_round - 1, node_id, "val", parts[GLOBAL_VAL])
        if parts[PERSONAL_VAL]:
            self.record_metrics(server_round, node_id, "personal_val", parts[PERSONAL_VAL])

    def record_train(self, server_round: int, node_id: int, metrics: dict[str, Any]) -> None:
        """Keep a hospital's train reply (``record_reply``)."""
        self.record_reply(server_round, node_id, "train", metrics)

    def record_error(self, server_round: int, node_id: int, prefix: str, reason: str) -> None:
        """Keep (and log) why a hospital did not reply in a (local) round, on one line."""
        reason = concise(reason)
        self._row(server_round, node_id)[f"{prefix}_error"] = reason
        log(WARNING, "round %s: hospital %s failed in %s: %s",
            server_round + self.round_offset, self.name_of(node_id), prefix, reason)

    def _record(self, server_round: int, replies: Iterable[Message], prefix: str) -> list[Message]:
        """Record each reply under its hospital. An error the SuperLink made for a node that
        went away carries no hospital's id: it is put down to a sampled hospital without a
        reply; sampled hospitals with no reply at all are recorded as such."""
        replies = list(replies)
        sampled = self.sampled.pop(prefix, [])
        silent = self.silent(sampled, {reply.metadata.src_node_id for reply in replies})
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                if node not in sampled and silent:
                    node = silent.pop(0)
                self.record_error(server_round, node, prefix, reply.error.reason)
                continue
            for record in reply.content.metric_records.values():
                self.record_reply(server_round, node, prefix, dict(record))
                for key in [k for k in record if k.startswith((GLOBAL_VAL, PERSONAL_VAL))]:
                    del record[key]  # the strategy aggregates the hospitals' own metrics
        self.record_silent(server_round, silent, prefix, "no reply within the round timeout")
        return replies

    @staticmethod
    def silent(sampled: Iterable[int], answered: set[int]) -> list[int]:
        """The sampled nodes that did not answer, in sampling order."""
        return [node for node in sampled if node not in answered]

    def record_silent(self, server_round: int, nodes: Iterable[int], prefix: str,
                      reason: str) -> None:
        """Record the same reason for every node that sent nothing usable."""
        for node in nodes:
            self.record_error(server_round, node, prefix, reason)

    def _sample(self, messages: Iterable[Message], prefix: str) -> list[Message]:
        messages = list(messages)
        self.sampled[prefix] = [message.metadata.dst_node_id for message in messages]
        return messages

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self._sample(self.inner.configure_train(server_round, arrays, config, grid),
                            "train")

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._sample(self.inner.configure_evaluate(server_round, arrays, config, grid),
                            "val")

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        recorded = self._record(server_round, replies, "train")
        return self.inner.aggregate_train(server_round, recorded)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round,
                                             self._record(server_round, replies, "val"))

    def rows(self, server_round: int) -> list[dict[str, Any]]:
        """One row per hospital for a (local) round number: train_* and val_* metrics."""
        recorded = self.replies.get(server_round + self.round_offset, {})
        return [{"round": server_round + self.round_offset, **row} for row in recorded.values()]
