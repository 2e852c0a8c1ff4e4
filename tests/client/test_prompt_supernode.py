"""The SuperNode's clock: after a reply it looks again within a fraction of a second, then
backs off to Flower's own wait; the waits it replaces are the installed Flower's."""

from __future__ import annotations

import inspect
import re

import pytest

from client.prompt_supernode import FIRST, GROWTH, IDLE, LOCAL, LOCAL_LOOK, PromptClock


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


def test_the_waits_replaced_are_the_installed_flowers():
    """An upgrade of flwr that changes the SuperNode's loop fails here, not silently."""
    import flwr.supernode.start_client_internal as loop

    source = inspect.getsource(loop)
    assert "import time\n" in source
    assert source.count(f"time.sleep({IDLE:g})") == 1
    assert source.count(f"time.sleep({LOCAL:g})") == 2
    assert len(re.findall(r"\btime\.\w", source)) == 3  # nothing else of ``time`` is used
