"""A message's objects pushed after the message itself are pulled within a fraction of a
second of their arrival, with Flower's own ``pull_objects``; the processes that pull
install it in place of the name the installed Flower calls."""

from __future__ import annotations

import inspect
import sys
import threading
import time

import pytest
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

from tasks.object_pulls import CAP, FIRST, TRIES, prompt_pulls


class LateObjects:
    """A sender's store whose objects arrive ``after`` s from now."""

    def __init__(self, after: float) -> None:
        self.ready = time.monotonic() + after
        self.tries = 0
        self.lock = threading.Lock()

    def pull(self, object_id: str) -> bytes:
        with self.lock:
            self.tries += 1
        if time.monotonic() < self.ready:
            raise ObjectUnavailableError(object_id)
        return object_id.encode()


@pytest.mark.parametrize("pulls", ["flower", "prompt"])
def test_objects_pushed_late_are_pulled_promptly(pulls):
    """Objects pushed 0.3 s after the message: Flower's own retries see them after 1 s,
    the prompt ones within a tenth of a second (a few tries more)."""
    store = LateObjects(0.3)
    pull = inflatable_utils.pull_objects if pulls == "flower" else prompt_pulls(
        inflatable_utils.pull_objects)
    started = time.monotonic()
    contents = pull(["a", "b", "c"], pull_object_fn=store.pull)
    took = time.monotonic() - started
    assert contents == {"a": b"a", "b": b"b", "c": b"c"}
    if pulls == "flower":
        assert took >= 0.7
    else:
        assert 0.3 <= took < 0.3 + 0.1 + 0.2  # one doubled retry, and a loaded machine
        assert store.tries <= 3 * 6


def test_prompt_retries_double_up_to_the_cap():
    """An object that never comes is asked for about every ``CAP`` s, not every ``FIRST``."""
    store = LateObjects(1e9)
    with pytest.raises(inflatable_utils.ObjectPullError):
        prompt_pulls(inflatable_utils.pull_objects)(["a"], pull_object_fn=store.pull,
                                                    max_time=3.0)
    expected = 1 + sum(1 for k in range(20) if sum(
        min(FIRST * 2 ** i, CAP) for i in range(k + 1)) < 3.0 * 1.2)
    assert store.tries <= expected


def test_an_object_that_never_comes_is_given_up_no_sooner_than_flower_gives_it_up():
    """The tries' back-off sums to at least Flower's (500 tries, 1 s doubling to 10 s)."""
    defaults = inspect.signature(inflatable_utils.pull_objects).parameters

    def horizon(first: float, cap: float, tries: int) -> float:
        waited, delay = 0.0, first
        for _ in range(tries - 1):  # a wait after every try but the last
            waited, delay = waited + delay, min(delay * 2, cap)
        return waited

    flower = horizon(defaults["initial_backoff"].default, defaults["backoff_cap"].default,
                     defaults["max_tries_per_object"].default)
    assert flower <= horizon(FIRST, CAP, TRIES) <= 1.1 * flower


def test_the_names_replaced_are_the_installed_flowers():
    """The SuperNode and the ServerApp's deployed grid call ``pull_objects`` by the name
    they import, with Flower's back-off (1 s, doubling to 10 s): an upgrade that changes
    either fails here."""
    import flwr.superlink.grid.http_grid as http_grid
    import flwr.supernode.start_client_internal as loop

    for module in (http_grid, loop):
        source = inspect.getsource(module)
        assert "    pull_objects,\n" in source or "import pull_objects" in source
        assert source.count("pull_objects(") == 1
        assert "initial_backoff" not in source and "backoff_cap" not in source
        assert "max_tries_per_object" not in source
    defaults = inspect.signature(inflatable_utils.pull_objects).parameters
    assert (defaults["initial_backoff"].default, defaults["backoff_cap"].default,
            defaults["max_tries_per_object"].default) == (1, 10, 500)


def test_the_supernode_and_the_coordinators_grid_install_the_prompt_pulls(monkeypatch):
    import flwr.superlink.grid.http_grid as http_grid
    import flwr.supernode.cli.flower_supernode  # noqa: F401 (the module, for its name)
    import flwr.supernode.start_client_internal as loop

    from client import prompt_supernode
    from server.polling import PromptGrid

    cli = sys.modules["flwr.supernode.cli.flower_supernode"]
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    for module in (loop, http_grid):
        monkeypatch.setattr(module, "pull_objects", module.pull_objects)
    monkeypatch.setattr(loop, "time", loop.time)
    seen = []
    monkeypatch.setattr(cli, "flower_supernode", lambda: seen.append(loop.pull_objects))
    prompt_supernode.main()
    PromptGrid(http_grid.HttpGrid.__new__(http_grid.HttpGrid))
    for pull in (seen[0], http_grid.pull_objects):
        assert pull.func is inflatable_utils.pull_objects
        assert pull.keywords == {"initial_backoff": FIRST, "backoff_cap": CAP,
                                 "max_tries_per_object": TRIES}
