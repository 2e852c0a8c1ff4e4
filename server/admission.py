"""Only admitted hospitals take part: the coordinator's own list, checked at every sampling.

Flower's SuperLink lets any node whose public key was registered connect, and
registering needs only the Control API. ``coordinator admit`` registers a key
and adds its node id to the coordinator's ``admitted.json``; ``AdmittedGrid``
wraps the ServerApp's grid so that nodes missing from that list are never
sampled or sent anything (each is logged once, with its node id), whoever
registered them. Secure aggregation's neighbours, evaluation and the
hospital-name query all see the admitted nodes only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from logging import WARNING
from pathlib import Path

from flwr.app import Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from server.wrapper import GridWrapper
from tasks.errors import UserError

ADMITTED = "admitted.json"


def admitted_nodes(path: Path) -> dict[str, dict[str, str]]:
    """The coordinator's admitted list: node id -> name, key fingerprint, when (empty when
    there is no list yet)."""
    if not path.is_file():
        return {}
    try:
        listing = json.loads(path.read_text())
        return {str(int(node)): dict(entry) for node, entry in listing.items()}
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: unreadable admitted list ({e})") from None


class AdmittedGrid(GridWrapper):
    """``inner`` with the nodes outside ``admitted`` hidden and unreachable."""

    def __init__(self, inner: Grid, admitted: set[int]) -> None:
        super().__init__(inner)
        self.admitted = admitted
        self.ignored: set[int] = set()

    def get_node_ids(self) -> Iterable[int]:
        nodes = list(self.inner.get_node_ids())
        for node in set(nodes) - self.admitted - self.ignored:
            log(WARNING, "node %s is connected but not on the coordinator's admitted list; "
                "it is left out of every round", node)
            self.ignored.add(node)
        return [node for node in nodes if node in self.admitted]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(self._admitted(messages))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        return self.inner.send_and_receive(self._admitted(messages), timeout=timeout)

    def _admitted(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        outside = sorted({m.metadata.dst_node_id for m in messages} - self.admitted)
        if outside:
            raise UserError(f"refusing to send to node(s) {outside}: not admitted")
        return messages
