"""The coordinator's proxy, a real nginx started from the config spinefl writes: it speaks
TLS with the coordinator's certificate, forwards only the Fleet API and the health check,
answers 404 to every other path, and refuses addresses outside its allow-list. (Behind it
a real SuperLink, in tests/e2e/test_deployment.py.)"""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest

from server.proxy import proxy_command
from server.superlink import load_coordinator
from tasks.processes import free_port, stop_tree
from tests.helpers.cli import spinefl


@pytest.fixture
def coordinator(tmp_path):
    done = spinefl("coordinator", "init", "--out", str(tmp_path / "coordinator"), "--host",
                   "localhost", "--port", str(free_port()), "--superlink-port",
                   str(free_port()))
    assert done.returncode == 0, done.stderr
    return tmp_path / "coordinator"


def _serve(folder, **settings) -> tuple[subprocess.Popen, str]:
    merged = {**load_coordinator(folder), "bind": "127.0.0.1", **settings}
    proxy = subprocess.Popen(proxy_command(folder, merged), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    base = f"https://localhost:{merged['port']}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(base, verify=str(folder / "ca.crt"), timeout=1)
            return proxy, base
        except httpx.ConnectError:
            assert proxy.poll() is None, "nginx exited"
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.2)


def test_only_the_fleet_api_and_health_are_forwarded(coordinator):
    proxy, base = _serve(coordinator)
    try:
        with httpx.Client(verify=str(coordinator / "ca.crt"), timeout=10) as client:
            # No SuperLink behind it here: a forwarded path fails upstream (502), any other
            # is answered by nginx itself (404) and never reaches the SuperLink.
            assert client.post(f"{base}/v1/fleet/pull-messages").status_code == 502
            assert client.get(f"{base}/health").status_code == 502
            for path in ("/v1/control/start-run", "/v1/runtime/push-task-output",
                         "/v1/fleetx", "/docs", "/health/x", "/"):
                assert client.post(f"{base}{path}").status_code == 404, path
        plain = httpx.get(base.replace("https", "http") + "/health", timeout=5)
        assert plain.status_code == 400 and "HTTPS port" in plain.text  # TLS only
    finally:
        stop_tree(proxy)


def test_addresses_outside_the_allow_list_are_refused(coordinator):
    proxy, base = _serve(coordinator, allow=["10.0.0.0/8"])
    try:
        answer = httpx.post(f"{base}/v1/fleet/pull-messages",
                            verify=str(coordinator / "ca.crt"), timeout=10)
        assert answer.status_code == 403  # 127.0.0.1 is not in 10.0.0.0/8
    finally:
        stop_tree(proxy)


def test_a_coordinator_without_nginx_is_told_what_to_install(coordinator, monkeypatch,
                                                             tmp_path):
    from server import proxy
    from tasks.errors import UserError

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(proxy, "SBIN", str(tmp_path))
    with pytest.raises(UserError, match="apt-get install nginx-light"):
        proxy.nginx_binary()
