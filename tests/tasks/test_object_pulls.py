"""A message's objects pushed after the message itself are pulled within a fraction of a
second of their arrival, with Flower's own pulls; the processes that pull install them in
place of the names the installed Flower calls."""

from __future__ import annotations

import inspect
import sys
import threading
import time

import pytest
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, ObjectUnavailableError

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


@pytest.fixture
def no_jitter(monkeypatch):
    """Flower's back-off without its random +-20%: tries at known times."""
    monkeypatch.setattr(inflatable_utils.random, "uniform", lambda low, high: 0.0)


def tries_within(first: float, cap: float, seconds: float) -> int:
    """How many tries of a missing object the back-off makes before giving up after
    ``seconds`` (Flower checks the time after each failed try)."""
    tries, now, delay = 0, 0.0, first
    while True:
        tries += 1
        if now >= seconds:
            return tries
        now, delay = now + delay, min(delay * 2, cap)


@pytest.mark.parametrize("pulls", ["flower", "prompt"])
def test_objects_pushed_late_are_pulled_promptly(pulls, no_jitter):
    """Objects pushed 0.3 s after the message: Flower's own retries see them after 1 s,
    the prompt ones at 0.35 s (tries at 0, 0.05, 0.15 and 0.35 s)."""
    store = LateObjects(0.3)
    pull = inflatable_utils.pull_objects if pulls == "flower" else prompt_pulls(
        inflatable_utils.pull_objects)
    started = time.monotonic()
    contents = pull(["a", "b", "c"], pull_object_fn=store.pull)
    took = time.monotonic() - started
    assert contents == {"a": b"a", "b": b"b", "c": b"c"}
    if pulls == "flower":
        assert took >= 0.95
    else:
        assert 0.3 <= took < 0.35 + 0.25  # a loaded machine's scheduling
        assert store.tries <= 3 * 5


def test_prompt_retries_double_up_to_the_cap(no_jitter):
    """An object that never comes is tried after 0.05 s, doubling to every ``CAP`` s: 8
    tries in 3 s, where Flower's back-off makes 3."""
    store = LateObjects(1e9)
    with pytest.raises(ObjectPullError):
        prompt_pulls(inflatable_utils.pull_objects)(["a"], pull_object_fn=store.pull,
                                                    max_time=3.0)
    expected = tries_within(FIRST, CAP, 3.0)
    assert expected == 8 and tries_within(1, 10, 3.0) == 3
    assert expected - 1 <= store.tries <= expected  # one fewer on a slow machine


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
    """The SuperNode and the ServerApp's deployed grid call ``pull_objects``, and a
    ClientApp's pull of its request ``pull_and_inflate_object_from_tree``, by the names
    they import, with Flower's back-off (1 s, doubling to 10 s, 500 tries): an upgrade
    that changes any of them fails here."""
    import flwr.superlink.grid.http_grid as http_grid
    import flwr.supernode.runtime.run_clientapp as run_clientapp
    import flwr.supernode.start_client_internal as loop

    for module, name in ((http_grid, "pull_objects"), (loop, "pull_objects"),
                         (run_clientapp, "pull_and_inflate_object_from_tree")):
        source = inspect.getsource(module)
        assert f"    {name},\n" in source or f"import {name}\n" in source
        assert source.count(f"{name}(") == 1
        for keyword in ("initial_backoff", "backoff_cap", "max_tries_per_object"):
            assert keyword not in source
    for pull in (inflatable_utils.pull_objects,
                 inflatable_utils.pull_and_inflate_object_from_tree):
        defaults = inspect.signature(pull).parameters
        assert (defaults["initial_backoff"].default, defaults["backoff_cap"].default,
                defaults["max_tries_per_object"].default) == (1, 10, 500)


def test_the_supernode_the_coordinator_and_a_request_install_the_prompt_pulls(monkeypatch):
    import flwr.superlink.grid.http_grid as http_grid
    import flwr.supernode.cli.flower_supernode  # noqa: F401 (the module, for its name)
    import flwr.supernode.runtime.run_clientapp as run_clientapp
    import flwr.supernode.start_client_internal as loop

    from client import prompt_supernode
    from client.runtime_request import prompt_request_pulls
    from server.polling import prompt_reply_pulls

    cli = sys.modules["flwr.supernode.cli.flower_supernode"]
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    for module, name in ((loop, "pull_objects"), (http_grid, "pull_objects"),
                         (run_clientapp, "pull_and_inflate_object_from_tree"),
                         (loop, "time"), (loop, "_pull_and_store_message")):
        monkeypatch.setattr(module, name, getattr(module, name))
    seen = []
    monkeypatch.setattr(cli, "flower_supernode", lambda: seen.append(loop.pull_objects))
    prompt_supernode.main()
    prompt_reply_pulls()
    prompt_request_pulls()
    for pull, flowers in ((seen[0], inflatable_utils.pull_objects),
                          (http_grid.pull_objects, inflatable_utils.pull_objects),
                          (run_clientapp.pull_and_inflate_object_from_tree,
                           inflatable_utils.pull_and_inflate_object_from_tree)):
        assert pull.func is flowers
        assert pull.keywords == {"initial_backoff": FIRST, "backoff_cap": CAP,
                                 "max_tries_per_object": TRIES}
