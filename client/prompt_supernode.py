"""``python -m client.prompt_supernode ARGS``: Flower's ``flower-supernode ARGS``, looking for
the coordinator's next message promptly after each reply.

flwr 1.42's SuperNode (``flwr/supernode/start_client_internal.py``) waits a fixed 3 s after
every look at the SuperLink that found no message, and 0.5 s between looks at its own
state for the ClientApp's reply. Once the last hospital has replied, the coordinator
aggregates and sends the next round within a second, and that hospital's node would see
it up to 3 s later: a wait on every round's critical path, and for the hospitals that
replied earlier, a late start that makes them the last of the next round. Here that
module's clock (``PromptClock``) waits ``FIRST`` s after a reply, then ``GROWTH`` times
longer after each empty look, up to Flower's 3 s; and once the node has waited
``DUE`` of the time it waited for the previous message, it looks every ``RESOLUTION`` of
that time (at least every ``FIRST`` s) until ``LATE`` of it, then backs off again. A few
looks more a round, each a request the SuperLink serves; a hospital that waits long looks
rarely, one that waits a second looks often. It looks at its own state every
``LOCAL_LOOK`` s. A message seen before the coordinator has pushed all of its arrays has
them pulled promptly (``tasks.object_pulls``). Everything else is Flower's. The names
replaced are checked against the installed flwr (``tests/client``): an upgrade that
changes them fails the tests instead of silently waiting as before.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from tasks.object_pulls import prompt_pulls

IDLE = 3.0  # flwr's wait after a look that found no message
LOCAL = 0.5  # flwr's wait between looks at the node's own state
FIRST, GROWTH, LOCAL_LOOK = 0.2, 1.5, 0.1
DUE, LATE, RESOLUTION = 0.8, 2.0, 0.02  # of the previous wait for a message
BUSY = 1.0  # a loop that took longer than this since the last wait handled a message
# (one handled without a wait for its reply: a node that answers at once)


class PromptClock:
    """The ``time`` module as the SuperNode's loop sees it, with its two waits shortened."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sleep, self._clock = sleep, clock
        self.streak = 0  # empty looks since the last message
        self.woke = clock()
        self.idle_since: float | None = None  # when the node began waiting for a message
        self.last_wait: float | None = None  # how long it waited for the previous one

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def wait(self, seconds: float) -> float:
        """What a wait of ``seconds`` in the loop becomes."""
        if seconds == LOCAL:  # only while a message is handled: look again soon after
            self._message_came()
            return LOCAL_LOOK
        if seconds != IDLE:
            return seconds
        now = self._clock()
        if now - self.woke > BUSY:
            self._message_came()  # the loop handled a message since the last wait
        if self.idle_since is None:
            self.idle_since = now
        pause = min(IDLE, FIRST * GROWTH ** self.streak)
        self.streak += 1
        if self.last_wait is None:
            return pause
        waited = now - self.idle_since
        if waited < DUE * self.last_wait:  # never sleep past the time it is due
            return min(pause, max(FIRST, DUE * self.last_wait - waited))
        if waited < LATE * self.last_wait:
            return min(pause, max(FIRST, RESOLUTION * self.last_wait))
        return pause

    def _message_came(self) -> None:
        """The look after the last wake found a message."""
        if self.idle_since is not None:
            self.last_wait = self.woke - self.idle_since
            self.idle_since = None
        self.streak = 0

    def sleep(self, seconds: float) -> None:
        self._sleep(self.wait(seconds))
        self.woke = self._clock()


def main() -> None:
    import flwr.supernode.start_client_internal as loop
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode.cli.flower_supernode import flower_supernode

    loop.time = PromptClock()  # the module's names for ``time`` and ``pull_objects``
    loop.pull_objects = prompt_pulls(inflatable_utils.pull_objects)
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
