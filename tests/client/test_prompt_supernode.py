"""The SuperNode's clock: after a reply it looks again within a fraction of a second, then
backs off to Flower's own wait; the waits it replaces are the installed Flower's."""

from __future__ import annotations

import inspect
import itertools
import re

import pytest

from client.prompt_supernode import (
    DUE,
    FIRST,
    GROWTH,
    IDLE,
    LATE,
    LOCAL,
    LOCAL_LOOK,
    RESOLUTION,
    PromptClock,
)


class FakeTime:
    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


def test_after_a_message_the_node_looks_promptly_then_backs_off_to_flowers_wait():
    fake = FakeTime()
    clock = PromptClock(fake.sleep, fake.monotonic)
    for _ in range(10):  # empty looks, each a few ms apart
        clock.sleep(IDLE)
        fake.now += 0.01
    assert fake.slept[:3] == pytest.approx([FIRST, FIRST * GROWTH, FIRST * GROWTH ** 2])
    assert fake.slept[-1] == IDLE and sorted(fake.slept) == fake.slept
    for _ in range(300):  # a message: the loop looks for the ClientApp's reply meanwhile
        clock.sleep(LOCAL)
    assert fake.slept[-1] == LOCAL_LOOK
    fake.now += 0.3  # the reply pushed, then one empty look
    clock.sleep(IDLE)
    assert fake.slept[-1] == FIRST  # the next round's message is looked for at once
    fake.now += 40.0  # a message answered without waiting for a reply (a refusal)
    clock.sleep(IDLE)
    assert fake.slept[-1] == FIRST
    clock.sleep(0.25)  # any other wait is Flower's
    assert fake.slept[-1] == 0.25
    # the first 10 s after a reply: a handful of looks, where Flower makes 3 or 4
    fake.now += 40.0
    start, looks = fake.now, 0
    while fake.now - start < 10.0:
        clock.sleep(IDLE)
        looks += 1
    assert looks <= 10


def looks_for(clock: PromptClock, fake: FakeTime, seconds: float) -> list[float]:
    """The times (from now) of the node's looks while its message comes ``seconds`` after
    its reply, up to the look that finds it; then the node handles that message (its
    ClientApp replies 5 s later)."""
    start, looks = fake.now, []
    while not looks or looks[-1] < seconds:
        clock.sleep(IDLE)
        fake.now += 0.005  # the look itself
        looks.append(fake.now - start)
    for _ in range(50):
        clock.sleep(LOCAL)
    fake.now += 0.3  # the reply pushed
    return looks


@pytest.mark.parametrize("wait", [1.5, 6.0, 60.0])
def test_the_node_looks_finely_around_when_the_next_message_is_due(wait):
    """Having waited ``wait`` s for the previous message, the node never sleeps past
    ``DUE`` of that wait and then looks every ``RESOLUTION`` of it (every ``FIRST`` s at
    least, Flower's 3 s at most), so a message as late as the last is seen within that
    resolution, where the back-off alone would see it up to 3 s late."""
    fake = FakeTime()
    clock = PromptClock(fake.sleep, fake.monotonic)
    looks_for(clock, fake, 600.0)  # the first message of the run: nothing to go by
    step = min(IDLE, max(FIRST, RESOLUTION * wait))
    for late in (0.0, 0.1, 0.25):  # the message comes as late as the last, or a bit later
        last = looks_for(clock, fake, wait)[-1]  # what the node waited the last time
        looks = looks_for(clock, fake, last * (1 + late))
        assert looks[-1] - last * (1 + late) <= step + 0.01, looks
        window = [t for t in looks if t > DUE * last]
        assert min(window) <= DUE * last + step + 0.01, looks
    # the back-off to Flower's wait until due, then the window (every 0.2 s: 375 looks)
    assert len(looks) <= 10 + DUE * wait / IDLE + (1 + 0.25 - DUE) * wait / step, looks


def test_a_message_much_later_than_the_last_is_waited_for_with_flowers_wait():
    fake = FakeTime()
    clock = PromptClock(fake.sleep, fake.monotonic)
    looks_for(clock, fake, 2.0)
    looks_for(clock, fake, 2.0)
    looks = looks_for(clock, fake, 60.0)
    gaps = [later - earlier for earlier, later in itertools.pairwise(looks)
            if earlier > LATE * 2.0 + IDLE]
    assert gaps and all(gap == pytest.approx(IDLE + 0.005) for gap in gaps), looks


def test_the_waits_replaced_are_the_installed_flowers():
    """An upgrade of flwr that changes the SuperNode's loop fails here, not silently."""
    import flwr.supernode.start_client_internal as loop

    source = inspect.getsource(loop)
    assert "import time\n" in source
    assert source.count(f"time.sleep({IDLE:g})") == 1
    assert source.count(f"time.sleep({LOCAL:g})") == 2
    assert len(re.findall(r"\btime\.\w", source)) == 3  # nothing else of ``time`` is used
