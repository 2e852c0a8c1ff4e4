"""Replies collected within a fraction of a second of their arrival.

Flower 1.42's deployed grid (``flwr/superlink/grid/http_grid.py``) looks for the replies
of ``send_and_receive`` every 3 s, so every message of a deployed round waits on
average 1.5 s after its last hospital replied. ``PromptGrid`` pushes through the
wrapped grid and looks every ``interval`` s instead; the looks go to the coordinator's
own SuperLink, on the same machine.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from server.wrapper import GridWrapper

POLL_INTERVAL = 0.2


class PromptGrid(GridWrapper):
    """``inner`` whose ``send_and_receive`` pulls replies every ``interval`` s."""

    def __init__(self, inner: Grid, interval: float = POLL_INTERVAL) -> None:
        super().__init__(inner)
        self.interval = interval

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        """Push ``messages``, then the replies that came within ``timeout`` s (all of them
        when None)."""
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            arrived = list(self.pull_messages(waiting))
            replies.extend(arrived)
            waiting -= {reply.metadata.reply_to_message_id for reply in arrived}
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.interval)
        return replies
