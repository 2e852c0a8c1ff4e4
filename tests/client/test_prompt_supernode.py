"""The SuperNode's clock: after a reply it looks again within a fraction of a second, then
backs off to Flower's own wait, and looks finely around when a message is due from the
waits it remembers; the names it replaces are the installed Flower's."""

from __future__ import annotations

import inspect
import itertools
import re
import sys

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


class Loop:
    """Flower's SuperNode loop on a fake clock: look (5 ms); no message, sleep 3 s (as the
    clock makes it); a message, wait for its reply in 0.5 s sleeps, then push it (0.3 s)."""

    def __init__(self) -> None:
        self.time = FakeTime()
        self.clock = PromptClock(self.time.sleep, self.time.monotonic)
        self.due = 0.0  # when the next message reaches the SuperLink
        self.look = self.clock.told(self._pull)

    def _pull(self) -> int | None:
        self.time.now += 0.005
        return 1 if self.time.now >= self.due else None

    def message_after(self, seconds: float, answer: float = 5.0) -> list[float]:
        """The node's looks (seconds from now) until it finds a message that comes
        ``seconds`` from now; then its ClientApp answers in ``answer`` s (0: a refusal,
        sent at once without a wait for the reply)."""
        start, looks = self.time.now, []
        self.due = start + seconds
        while True:
            found = self.look()
            looks.append(self.time.now - start)
            if found is not None:
                break
            self.clock.sleep(IDLE)
        for _ in range(round(answer / LOCAL_LOOK)):
            self.clock.sleep(LOCAL)
        self.time.now += 0.3  # the reply pushed
        return looks


def test_after_a_message_the_node_looks_promptly_then_backs_off_to_flowers_wait():
    loop = Loop()
    loop.message_after(0.0)
    looks = loop.message_after(40.0)  # the first 40 s wait: nothing to go by
    gaps = [later - earlier for earlier, later in itertools.pairwise(looks)]
    assert gaps[:3] == pytest.approx([FIRST + 0.005, FIRST * GROWTH + 0.005,
                                      FIRST * GROWTH ** 2 + 0.005])
    assert max(gaps) == pytest.approx(IDLE + 0.005)
    assert all(later >= earlier - 1e-9 for earlier, later in itertools.pairwise(gaps))
    assert sum(1 for look in looks if look < 10.0) <= 10  # where Flower makes 4
    assert LOCAL_LOOK in loop.time.slept and LOCAL not in loop.time.slept
    loop.clock.sleep(0.25)  # any other wait is Flower's
    assert loop.time.slept[-1] == 0.25


@pytest.mark.parametrize("wait", [1.5, 6.0, 60.0])
def test_the_node_looks_finely_around_when_the_next_message_is_due(wait):
    """Having waited ``wait`` s for the previous message, the node sleeps at most ``FIRST``
    s past ``DUE`` of that wait and then looks every ``RESOLUTION`` of it (every ``FIRST``
    s at least, Flower's 3 s at most), so a message as late as the last is seen within
    that resolution, where the back-off alone would see it up to 3 s late."""
    loop = Loop()
    loop.message_after(600.0)  # the first message of the run
    step = min(IDLE, max(FIRST, RESOLUTION * wait))
    for late in (0.0, 0.1, 0.25):  # the message comes as late as the last, or a bit later
        last = loop.message_after(wait)[-1]  # what the node waited the last time
        looks = loop.message_after(last * (1 + late))
        assert looks[-1] - last * (1 + late) <= step + 0.02, looks  # and a look's 5 ms
        assert min(t for t in looks if t > DUE * last) <= DUE * last + step + 0.02, looks
    # the back-off to Flower's wait until due, then the window (every 0.2 s: 5 a second)
    assert len(looks) <= 10 + DUE * wait / IDLE + (1 + 0.25 - DUE) * wait / step, looks


def test_short_and_long_waits_in_turn_are_each_looked_for_around_their_time():
    """SecAgg+'s stages: a short wait (another hospital's keys), then a long one (every
    hospital's training), in turn. The long one is still seen within its resolution."""
    loop = Loop()
    for _ in range(2):
        loop.message_after(0.5, answer=0.1)
        loop.message_after(30.0, answer=0.1)
    short = loop.message_after(0.5, answer=0.1)
    looks = loop.message_after(30.0, answer=0.1)
    assert looks[-1] - 30.0 <= RESOLUTION * 30.0 + 0.2 and short[-1] - 0.5 <= FIRST + 0.01


def test_a_message_much_later_than_the_last_is_waited_for_with_flowers_wait():
    loop = Loop()
    loop.message_after(2.0)
    loop.message_after(2.0)
    looks = loop.message_after(60.0)
    gaps = [later - earlier for earlier, later in itertools.pairwise(looks)
            if earlier > LATE * 2.2 + IDLE]
    assert gaps and all(gap == pytest.approx(IDLE + 0.005) for gap in gaps), looks


def test_a_refusal_answered_at_once_counts_as_a_message():
    """A message the node answers without waiting for a reply (a refused bundle): the next
    message is looked for at once, and its wait is remembered."""
    loop = Loop()
    loop.message_after(0.0)
    loop.message_after(8.0, answer=0.0)
    looks = loop.message_after(8.0)
    assert looks[1] == pytest.approx(FIRST + 0.01)
    assert looks[-1] - 8.0 <= max(FIRST, RESOLUTION * 8.0) + 0.01


def test_the_names_replaced_are_the_installed_flowers():
    """An upgrade of flwr that changes the SuperNode's loop fails here, not silently."""
    import flwr.supernode.start_client_internal as loop

    source = inspect.getsource(loop)
    assert "import time\n" in source
    assert source.count(f"time.sleep({IDLE:g})") == 1
    assert source.count(f"time.sleep({LOCAL:g})") == 2
    assert len(re.findall(r"\btime\.\w", source)) == 3  # nothing else of ``time`` is used
    # the loop's one look, whose result says whether it found a message
    assert source.count("_pull_and_store_message(") == 2  # its definition and its call
    assert "run_id = _pull_and_store_message(" in source
    assert "if run_id is None:" in source


def test_the_supernode_starts_with_the_clock_and_the_looks_it_learns_from(monkeypatch):
    import flwr.supernode.cli.flower_supernode  # noqa: F401 (the module, for its name)
    import flwr.supernode.start_client_internal as loop

    from client import prompt_supernode

    cli = sys.modules["flwr.supernode.cli.flower_supernode"]
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    for name in ("time", "_pull_and_store_message", "pull_objects"):
        monkeypatch.setattr(loop, name, getattr(loop, name))
    original = loop._pull_and_store_message
    seen = []
    monkeypatch.setattr(cli, "flower_supernode",
                        lambda: seen.append((loop.time, loop._pull_and_store_message)))
    prompt_supernode.main()
    [(clock, look)] = seen
    assert isinstance(clock, PromptClock) and look is not original
    assert look.__closure__ and original in [cell.cell_contents for cell in look.__closure__]
