"""Flower's pulls of a message's objects, retried within a fraction of a second.

flwr 1.42 sends a message's content (the model's arrays) as objects pushed after the
message itself, and a receiver can see the message before the sender has pushed them all:
a SuperNode that looks while the coordinator's ServerApp is still pushing a round's
messages, the ServerApp that looks while a SuperNode is still pushing its reply. Flower's
``pull_objects`` then tries a missing object again after 1 s, doubling up to 10 s
(``PULL_INITIAL_BACKOFF``, ``PULL_BACKOFF_CAP``), where pushing the rest takes a few
tenths of a second: a second on a round's critical path each time. The same happens one
hop later, when a hospital's ClientApp is handed a request whose arrays its SuperNode is
still pulling. ``prompt_pulls`` gives the same function (``pull_objects``, or
``pull_and_inflate_object_from_tree``, which takes the same keywords) retrying after
``FIRST`` s, doubling up to ``CAP`` s (a missing object costs the sender's server a lookup
per try), and giving up on an object that never comes after ``TRIES`` tries, no sooner
than Flower's 500 (about 80 minutes: a large model pushed over a slow link still
arrives). Each process that pulls replaces the name in the Flower module that calls it
(``client.prompt_supernode``, ``client.runtime_request``, ``server.polling``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

FIRST = 0.05  # s before the first retry of a missing object
CAP = 1.0  # s between retries at most
TRIES = 5000  # tries of one object before the pull fails


def prompt_pulls(pull: Callable[..., T]) -> Callable[..., T]:
    """Flower's ``pull`` retrying a missing object after ``FIRST`` s, up to every ``CAP`` s,
    at most ``TRIES`` times."""
    return functools.partial(pull, initial_backoff=FIRST, backoff_cap=CAP,
                             max_tries_per_object=TRIES)
