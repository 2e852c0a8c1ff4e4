"""``python -m client.prompt_supernode ARGS``: Flower's ``flower-supernode ARGS``, looking for
the coordinator's next message promptly after each reply.

flwr 1.42's SuperNode (``flwr/supernode/start_client_internal.py``) waits a fixed 3 s after
every look at the SuperLink that found no message, and 0.5 s between looks at its own
state for the ClientApp's reply. Once the last hospital has replied, the coordinator
aggregates and sends the next round within a second, and that hospital's node would see
it up to 3 s later: a wait on every round's critical path. Here that module's clock
(``PromptClock``) waits ``FIRST`` s after a reply, then ``GROWTH`` times longer after each
empty look, up to Flower's 3 s (a few looks more a round, each a request the SuperLink
serves); it looks at its own state every ``LOCAL_LOOK`` s. Everything else is Flower's.
The waits replaced are checked against the installed flwr (``tests/client``): an upgrade
that changes them fails the tests instead of silently waiting as before.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

IDLE = 3.0  # flwr's wait after a look that found no message
LOCAL = 0.5  # flwr's wait between looks at the node's own state
FIRST, GROWTH, LOCAL_LOOK = 0.2, 1.5, 0.1
BUSY = 1.0  # a loop that took longer than this since the last wait handled a message
# (one handled without a wait for its reply: a node that answers at once)


class PromptClock:
    """The ``time`` module as the SuperNode's loop sees it, with its two waits shortened."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sleep, self._clock = sleep, clock
        self.streak = 0  # empty looks since the last message
        self.woke = clock()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def wait(self, seconds: float) -> float:
        """What a wait of ``seconds`` in the loop becomes."""
        if seconds == LOCAL:  # only while a message is handled: look again soon after
            self.streak = 0
            return LOCAL_LOOK
        if seconds != IDLE:
            return seconds
        if self._clock() - self.woke > BUSY:
            self.streak = 0  # the loop handled a message since the last wait
        pause = min(IDLE, FIRST * GROWTH ** self.streak)
        self.streak += 1
        return pause

    def sleep(self, seconds: float) -> None:
        self._sleep(self.wait(seconds))
        self.woke = self._clock()


def main() -> None:
    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli.flower_supernode import flower_supernode

    loop.time = PromptClock()  # the module's name for ``time``; nothing else changes
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
