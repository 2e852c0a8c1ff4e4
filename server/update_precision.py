"""Float16 updates back into weights: a strategy wrapper in front of update validation.

A hospital asked for ``federation.update_precision = "float16"`` replies with its update
(new weights minus the global weights it was sent) in float16, half the bytes of its
weights (``tasks.packing.pack_reply``). ``FullWeights`` adds each such update to the
weights this round sent, so that what it wraps (``UpdateValidation``, the recorder, any
Flower strategy) sees float32 weights, as from a float32 reply. A reply that does not fit
(an update of another size) is passed on as it came, and ``UpdateValidation`` refuses it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from server.wrapper import StrategyWrapper
from tasks.packing import full_weights


class FullWeights(StrategyWrapper):
    """Delegate to ``inner``, with replies' float16 updates turned into weights."""

    sent = ArrayRecord()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.sent = arrays
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for reply in replies:
            if reply.has_error():
                continue
            for name, record in list(reply.content.array_records.items()):
                # An update that does not fit stays: UpdateValidation refuses it, naming why.
                with contextlib.suppress(ValueError):
                    reply.content[name] = full_weights(record, self.sent)
        return self.inner.aggregate_train(server_round, replies)
