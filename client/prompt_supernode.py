"""``python -m client.prompt_supernode ARGS``: Flower's ``flower-supernode ARGS``, looking for
the coordinator's next message promptly after each reply.

flwr 1.42's SuperNode (``flwr/supernode/start_client_internal.py``) waits a fixed 3 s after
every look at the SuperLink that found no message, and 0.5 s between looks at its own
state for the ClientApp's reply. Once the last hospital has replied, the coordinator
aggregates and sends the next round within a second, and that hospital's node would see
it up to 3 s later: a wait on every round's critical path, and for the hospitals that
replied earlier, a late start that makes them the last of the next round. Here that
module's clock (``PromptClock``) waits ``FIRST`` s after a reply, then ``GROWTH`` times
longer after each empty look, up to Flower's 3 s; and it remembers how long the node
waited for each of its last ``HISTORY`` messages (SecAgg+ sends four a round, of two
kinds of wait), sleeps at most ``FIRST`` s past ``DUE`` of each, and from there until
``LATE`` of it looks every ``RESOLUTION`` of that wait (every ``FIRST`` s at least),
then backs off as before. A few looks more a round, each a request the SuperLink serves;
a hospital that waits long looks rarely, one that waits a second looks often. Which
looks found a message, the clock learns from the loop's own ``_pull_and_store_message``.
It looks at its own state every ``LOCAL_LOOK`` s. A message seen before the coordinator
has pushed all of its arrays has them pulled promptly (``tasks.object_pulls``).
Everything else is Flower's. The names replaced are checked against the installed flwr
(``tests/client``): an upgrade that changes them fails the tests instead of silently
waiting as before.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tasks.object_pulls import prompt_pulls

IDLE = 3.0  # flwr's wait after a look that found no message
LOCAL = 0.5  # flwr's wait between looks at the node's own state
FIRST, GROWTH, LOCAL_LOOK = 0.2, 1.5, 0.1
DUE, LATE, RESOLUTION = 0.8, 2.0, 0.02  # of an earlier wait for a message
HISTORY = 4  # earlier waits remembered


class PromptClock:
    """The ``time`` module as the SuperNode's loop sees it, with its two waits shortened."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sleep, self._clock = sleep, clock
        self.streak = 0  # empty looks since the last message
        self.idle_since: float | None = None  # when the node began waiting for a message
        self.waits: deque[float] = deque(maxlen=HISTORY)  # how long it waited for the last

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def wait(self, seconds: float) -> float:
        """What a wait of ``seconds`` in the loop becomes."""
        if seconds == LOCAL:  # only while a message is handled: look again soon after
            return LOCAL_LOOK
        if seconds != IDLE:
            return seconds
        now = self._clock()
        if self.idle_since is None:
            self.idle_since = now
        waited = now - self.idle_since
        pause = min(IDLE, FIRST * GROWTH ** self.streak)
        self.streak += 1
        for earlier in self.waits:
            if waited < DUE * earlier:  # wake by the time this one is due
                pause = min(pause, max(FIRST, DUE * earlier - waited))
            elif waited < LATE * earlier:  # and look finely until it is late
                pause = min(pause, max(FIRST, RESOLUTION * earlier))
        return pause

    def found(self, looked: float) -> None:
        """The look that began at ``looked`` (the clock's time) found a message."""
        if self.idle_since is not None:
            self.waits.append(looked - self.idle_since)
            self.idle_since = None
        self.streak = 0

    def sleep(self, seconds: float) -> None:
        self._sleep(self.wait(seconds))

    def told(self, pull: Callable[..., int | None]) -> Callable[..., int | None]:
        """The loop's ``_pull_and_store_message`` (the run's id, or None when the look found
        no message), telling this clock which looks found one."""
        def look(*args: Any, **kwargs: Any) -> int | None:
            looked = self._clock()
            run_id = pull(*args, **kwargs)
            if run_id is not None:
                self.found(looked)
            return run_id
        return look


def main() -> None:
    import flwr.supernode.start_client_internal as loop
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode.cli.flower_supernode import flower_supernode

    clock = PromptClock()  # the module's names for these three; nothing else changes
    loop.time = clock
    loop._pull_and_store_message = clock.told(loop._pull_and_store_message)
    loop.pull_objects = prompt_pulls(inflatable_utils.pull_objects)
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
