"""Under ``--dist loadgroup`` (``make test``) the groups tests/conftest.py gives reach
pytest-xdist's scheduler: a module's tests, and a running federation with them, stay on one
worker. pytest 9.2 broke this silently with pytest-xdist 3.8 (a module fixture set up on
each worker: minutes of CI); this test fails instead."""

from __future__ import annotations

import pytest


def test_the_tests_group_reaches_the_scheduler(request: pytest.FixtureRequest):
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run under pytest-xdist with --dist loadgroup")
    assert request.node.nodeid.endswith(f"@{request.node.module.__name__}"), \
        request.node.nodeid
