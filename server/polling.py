"""Replies collected within a fraction of a second of their arrival, at a fraction of the
looks.

Flower 1.42's deployed grid (``flwr/superlink/grid/http_grid.py``) looks for the replies
of ``send_and_receive`` every 3 s, so every message of a deployed round waits on
average 1.5 s after its last hospital replied. ``PromptGrid`` pushes through the
wrapped grid and looks on its own schedule instead. Each look is a request that the
coordinator's SuperLink serves through its database (about 20 ms of CPU), so looking
every 0.2 s through a training round of minutes would keep a tenth of a core busy.
The schedule: every ``fast`` s once the replies are due (``DUE`` of the time the
previous call of the same kind, its message type and record names, waited for all of its
replies); before that, and for a kind never sent before, a tenth of the time waited so
far, between ``fast`` and ``slow`` s. A reply seen before the hospital has pushed all of
its arrays has them pulled within a fraction of a second, not Flower's 1 s and more
(``tasks.object_pulls``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import flwr.superlink.grid.http_grid as http_grid
from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore.inflatable import inflatable_utils

from server.wrapper import GridWrapper
from tasks.object_pulls import prompt_pulls

FAST = 0.2
SLOW = 2.0
DUE = 0.8


class PromptGrid(GridWrapper):
    """``inner`` whose ``send_and_receive`` pulls replies every ``fast`` s once they are
    due, and more rarely (up to every ``slow`` s) before."""

    def __init__(self, inner: Grid, fast: float = FAST, slow: float = SLOW) -> None:
        super().__init__(inner)
        self.fast, self.slow = fast, slow
        self.waits: dict[str, float] = {}  # by kind: the last whole call's wait (s)

    def next_look(self, waited: float, expected: float | None) -> float:
        """Seconds until the next look, ``waited`` s into a call whose replies are expected
        after ``expected`` s (None: not known)."""
        if expected is not None and waited >= DUE * expected:
            return self.fast
        return min(self.slow, max(self.fast, waited / 10))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        """Push ``messages``, then the replies that came within ``timeout`` s (all of them
        when None)."""
        messages = list(messages)
        kind = _kind(messages[0]) if messages else ""
        waiting = set(self.push_messages(messages))
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        replies: list[Message] = []
        while waiting:
            arrived = list(self.pull_messages(waiting))
            replies.extend(arrived)
            waiting -= {reply.metadata.reply_to_message_id for reply in arrived}
            now = time.monotonic()
            if not waiting or (deadline is not None and now >= deadline):
                break
            pause = self.next_look(now - started, self.waits.get(kind))
            if deadline is not None:
                pause = min(pause, max(deadline - now, 0.0))
            time.sleep(pause)
        if messages and not waiting:  # a call cut short by its timeout says nothing
            self.waits[kind] = time.monotonic() - started
        return replies


def prompt_reply_pulls() -> None:
    """Flower's deployed grid, in this process (the ServerApp's), retrying a reply's missing
    objects promptly (``tasks.object_pulls``): the name its ``pull_messages`` calls."""
    http_grid.pull_objects = prompt_pulls(inflatable_utils.pull_objects)


def _kind(message: Message) -> str:
    """What calls wait alike for: the message type and the names of its records (SecAgg+
    sends all four of its stages as train messages; only one carries the weights)."""
    return " ".join([message.metadata.message_type, *sorted(message.content.keys())])
