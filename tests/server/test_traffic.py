"""Bytes on the wire per hospital, read from the proxy's access log as nginx writes it."""

from __future__ import annotations

import base64
import hashlib
import json

import pandas as pd
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.admission import ADMITTED
from server.proxy import ACCESS_LOG, PROXY_DIR, TRAFFIC_FORMAT
from server.superlink import request_key_sha256
from server.traffic import REFUSED, UNKNOWN, traffic


def key_pair() -> tuple[bytes, bytes]:
    """A node key as `spinefl hospital keys` writes its node.pub (OpenSSH), and the header
    Flower's signed requests carry (base64 of the PEM public key)."""
    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    openssh = public.public_bytes(serialization.Encoding.OpenSSH,
                                  serialization.PublicFormat.OpenSSH) + b" hospital-a\n"
    pem = public.public_bytes(serialization.Encoding.PEM,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return openssh, base64.b64encode(pem)


def test_the_admitted_fingerprint_is_that_of_the_key_requests_name():
    openssh, header = key_pair()
    expected = hashlib.sha256(base64.b64decode(header)).hexdigest()
    assert request_key_sha256(openssh) == expected
    assert request_key_sha256(base64.b64decode(header)) == expected  # a PEM node.pub too


def test_bytes_are_summed_per_hospital_kind_and_time(tmp_path):
    assert TRAFFIC_FORMAT.split() == ["$time_iso8601", "$status", "$request_length",
                                      "$bytes_sent", "$http_flwr_public_key", "$uri"]
    a_key, a_header = key_pair()
    _, stranger = key_pair()
    (tmp_path / ADMITTED).write_text(json.dumps({"7": {
        "name": "hospital-a", "key_sha256": "x", "request_key_sha256": request_key_sha256(a_key)}}))
    a, other = a_header.decode(), stranger.decode()
    lines = [
        f"2026-11-30T10:00:00+00:00 200 900 1000 {a} /v1/fleet/get-fab",
        f"2026-11-30T10:00:01+00:00 200 950 800000 {a} /v1/fleet/pull-object",
        f"2026-11-30T10:00:02+00:00 200 700000 150 {a} /v1/fleet/push-object",
        f"2026-11-30T10:00:03+00:00 200 800 150 {a} /v1/fleet/send-node-heartbeat",
        f"2026-11-30T11:00:00+01:00 200 800 150 {a} /v1/fleet/pull-messages",  # 10:00 UTC
        "a line of an older format",
        f"2026-11-30T10:00:04+00:00 401 800 100 {a} /v1/fleet/activate-node",  # forged
        f"2026-11-30T10:00:05+00:00 200 300 100 {other} /v1/fleet/pull-messages",
        "2026-11-30T10:00:06+00:00 404 300 100 - /v1/control/list runs",
        f"2026-11-30T12:00:00+00:00 200 900 5000 {a} /v1/fleet/pull-object",  # later run
    ]
    (tmp_path / PROXY_DIR).mkdir()
    (tmp_path / PROXY_DIR / ACCESS_LOG).write_text("\n".join(lines) + "\n")
    table = traffic(tmp_path, until=pd.Timestamp("2026-11-30T10:30:00Z")).set_index("hospital")
    row = table.loc["hospital-a"]
    assert row.requests == 5
    assert row.received_bytes == 1000 + 800000 + 150 + 150 + 150
    assert row.sent_bytes == 900 + 950 + 700000 + 800 + 800
    assert (row.objects_received_bytes, row.objects_sent_bytes) == (800150, 700950)
    assert row.app_received_bytes == 1000
    assert row.control_bytes == 800 + 150 + 800 + 150
    assert table.loc[REFUSED, "requests"] == 2  # a refused request naming hospital-a's key
    assert table.loc[UNKNOWN, "requests"] == 1
    later = traffic(tmp_path, since=pd.Timestamp("2026-11-30T11:30:00Z"))
    assert later.set_index("hospital").loc["hospital-a", "received_bytes"] == 5000
