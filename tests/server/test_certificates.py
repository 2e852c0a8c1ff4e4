"""The coordinator's CA and SuperLink certificate, and the hospital's node keys: checked with
cryptography, with Flower's own key loaders, and by a real TLS SuperLink."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from simulation.federation import BIN, free_port, stop_tree
from tests.helpers.cli import assert_one_line_error, spinefl


@pytest.fixture
def authority(tmp_path):
    done = spinefl("coordinator", "init", "--out", str(tmp_path / "ca"), "--host",
                   "localhost,127.0.0.1")
    assert done.returncode == 0, done.stderr
    return tmp_path / "ca"


def _certificate(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_server_certificate_is_signed_by_the_ca_for_the_given_hosts(authority):
    ca, server = _certificate(authority / "ca.crt"), _certificate(authority / "server.pem")
    ca.public_key().verify(server.signature, server.tbs_certificate_bytes,
                           ec.ECDSA(server.signature_hash_algorithm))
    assert server.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ca_key = authority.parent / "ca-ca" / "ca.key"  # outside the coordinator folder
    assert not (authority / "ca.key").exists()
    for key in (ca_key, authority / "server.key"):
        assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert oct(ca_key.parent.stat().st_mode & 0o777) == "0o700"
    ca_key_pem = ca_key.read_bytes()
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    assert load_pem_private_key(ca_key_pem, None).public_key() == ca.public_key()


def test_the_ca_key_is_never_where_the_superlink_works(authority, tmp_path):
    assert_one_line_error(spinefl("coordinator", "init", "--out", str(tmp_path / "c"),
                                  "--host", "localhost", "--ca-key",
                                  str(tmp_path / "c" / "keys" / "ca.key")),
                          "must be outside the coordinator folder")
    (authority / "ca.key").write_bytes((authority.parent / "ca-ca" / "ca.key").read_bytes())
    assert_one_line_error(spinefl("coordinator", "start", "--dir", str(authority)),
                          "the CA key must not be in the folder the SuperLink")


def test_an_existing_authority_is_never_overwritten(authority):
    before = (authority / "ca.crt").read_bytes()
    assert_one_line_error(spinefl("coordinator", "init", "--out", str(authority), "--host",
                                  "localhost"), "already a coordinator folder")
    assert (authority / "ca.crt").read_bytes() == before


def _handshake(port: int, cafile, hostname: str) -> str:
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=hostname) as tls:
        return tls.version()


def test_a_real_superlink_serves_tls_that_only_the_right_ca_and_names_accept(authority,
                                                                            tmp_path):
    other = tmp_path / "other"
    assert spinefl("coordinator", "init", "--out", str(other), "--host", "localhost"
                   ).returncode == 0
    port = free_port()
    superlink = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(authority / "ca.crt"),
         "--ssl-certfile", str(authority / "server.pem"), "--ssl-keyfile",
         str(authority / "server.key"), "--host", "127.0.0.1", "--port", str(port),
         "--database", ":memory:", "--disable-runtime-dependency-installation"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "FLWR_HOME": str(tmp_path / "home"),
             "PATH": f"{BIN}:{os.environ['PATH']}"})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                version = _handshake(port, authority / "ca.crt", "localhost")
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the SuperLink did not start"
                time.sleep(0.5)
        assert version.startswith("TLS")
        assert _handshake(port, authority / "ca.crt", "127.0.0.1").startswith("TLS")
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(port, other / "ca.crt", "localhost")  # a node trusting another CA
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(port, authority / "ca.crt", "fl.example.org")  # a name not in the SAN
    finally:
        stop_tree(superlink)
    assert superlink.poll() is not None


def test_node_keys_are_what_flower_loads(tmp_path):
    from flwr.cli.supernode.register import try_load_public_key

    done = spinefl("hospital", "keys", "--out", str(tmp_path / "keys"), "--name", "hospital-a")
    assert done.returncode == 0, done.stderr
    private = load_ssh_private_key((tmp_path / "keys" / "node.key").read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)  # as flower-supernode loads it
    assert oct((tmp_path / "keys" / "node.key").stat().st_mode & 0o777) == "0o600"
    registered = try_load_public_key(tmp_path / "keys" / "node.pub")  # flwr supernode register
    assert registered and (tmp_path / "keys" / "node.pub").read_text().endswith(
        "hospital-a\n")
    assert_one_line_error(spinefl("hospital", "keys", "--out", str(tmp_path / "keys")),
                          "already holds a node key pair")


def test_the_superlink_and_nodes_start_with_tls_and_node_authentication(authority, tmp_path,
                                                                        tiny_cohort):
    from client.supernode import Membership, supernode_command
    from server.superlink import superlink_command

    command = superlink_command(authority)
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile",
                 "--enable-supernode-auth", "--disable-runtime-dependency-installation"):
        assert flag in command
    assert "--insecure" not in command
    assert command[command.index("--host") + 1] == "127.0.0.1"  # the proxy faces hospitals
    assert spinefl("hospital", "keys", "--out", str(tmp_path / "keys")).returncode == 0
    member = Membership("localhost:9093", tiny_cohort.root, tmp_path / "keys" / "node.key",
                        authority / "ca.crt", "a", 8.0, 1e-5, ("segmentation",))
    node = supernode_command(member)
    assert node[node.index("--root-certificates") + 1] == str((authority / "ca.crt").resolve())
    assert "--auth-supernode-private-key" in node and "--insecure" not in node
    written = (tiny_cohort.root / ".spinefl" / "node-config.toml").read_text()
    assert 'accept-tasks = "segmentation"' in written and "max-epsilon = 8.0" in written


def test_the_supernode_can_start_nothing_but_the_hospitals_launcher(tiny_cohort, tmp_path):
    """Every program Flower's SuperExec could start for a task (flwr-clientapp, and
    flwr-agentapp, flwr-serverapp, ... which would import the bundle's code) resolves on
    its PATH to the launcher or to a stub that refuses; the SuperNode's Runtime API is
    open only to holders of the node's secret, which the SuperExec holds."""
    import shutil

    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND

    from client.supernode import Membership, superexec_command, supernode_command, supernode_env

    assert spinefl("hospital", "keys", "--out", str(tmp_path / "keys")).returncode == 0
    authority = tmp_path / "ca"
    assert spinefl("coordinator", "init", "--out", str(authority), "--host", "localhost"
                   ).returncode == 0
    member = Membership("localhost:9093", tiny_cohort.root, tmp_path / "keys" / "node.key",
                        authority / "ca.crt")
    node, superexec = supernode_command(member), superexec_command(member)
    secret = Path(node[node.index("--superexec-auth-secret-file") + 1])
    assert node[node.index("--isolation") + 1] == "process"
    assert superexec[superexec.index("--superexec-auth-secret-file") + 1] == str(secret)
    assert oct(secret.stat().st_mode & 0o777) == "0o600" and len(secret.read_bytes()) == 32
    assert oct(secret.parent.stat().st_mode & 0o777) == "0o700"
    env = supernode_env(member, {"PATH": os.environ["PATH"]})
    folder = tiny_cohort.root.resolve() / ".spinefl" / "bin"
    assert env["PATH"] == str(folder) and Path(superexec[0]).is_absolute()
    for command in TASK_TYPE_TO_COMMAND.values():
        found = Path(shutil.which(command, path=env["PATH"]))
        assert found.parent == folder, command
        if command == "flwr-clientapp":
            assert found.resolve() == (BIN / "spinefl-clientapp").resolve()
            continue
        done = subprocess.run([str(found), "--token", "t"], capture_output=True, text=True,
                              env=env, timeout=30)
        assert done.returncode != 0 and f"{command} refused" in done.stderr


def test_a_data_folder_others_can_write_is_refused(tiny_cohort, tmp_path):
    assert spinefl("hospital", "keys", "--out", str(tmp_path / "keys")).returncode == 0
    mode = tiny_cohort.root.stat().st_mode
    tiny_cohort.root.chmod(0o777)
    try:
        assert_one_line_error(spinefl(
            "hospital", "join", "--superlink", "localhost:9093", "--ca",
            str(tmp_path / "keys" / "node.pub"), "--key", str(tmp_path / "keys" / "node.key"),
            "--data", str(tiny_cohort.root)), "writable by group or others", "chmod go-w")
    finally:
        tiny_cohort.root.chmod(mode & 0o777)


@pytest.mark.parametrize("problem, fragment", [
    ("no-ca", "--ca: the coordinator's ca.crt is needed"),
    ("open-key", "readable by others"),
    ("bad-address", "expected host:port"),
    ("no-manifest", "manifest"),
])
def test_joining_with_a_mistake_is_one_line(authority, tmp_path, tiny_cohort, problem,
                                            fragment):
    assert spinefl("hospital", "keys", "--out", str(tmp_path / "keys")).returncode == 0
    key = tmp_path / "keys" / "node.key"
    args = {"--superlink": "localhost:9093", "--ca": str(authority / "ca.crt"),
            "--key": str(key), "--data": str(tiny_cohort.root)}
    if problem == "no-ca":
        del args["--ca"]
    elif problem == "open-key":
        key.chmod(0o644)
    elif problem == "bad-address":
        args["--superlink"] = "localhost"
    else:
        args["--data"] = str(tmp_path)
    assert_one_line_error(spinefl("hospital", "join", *[x for pair in args.items()
                                                         for x in pair]), fragment)


@pytest.mark.slow  # three real commands against a coordinator folder
@pytest.mark.parametrize("command", [["status"], ["log", "1"], ["stop", "1"]])
def test_watching_a_coordinator_that_is_not_started_is_one_line(authority, command):
    """`coordinator status | log | stop` ask the SuperLink; when it is not running they say
    so in one line (they work on a running one: tests/e2e/test_deployment.py)."""
    done = spinefl("coordinator", *command, "--dir", str(authority))
    assert_one_line_error(done, str(authority), "is `spinefl coordinator start` running?")
