"""The coordinator's TLS material: a certificate authority and the SuperLink's certificate.

``create_authority`` writes, in one folder:

- ``ca.crt`` / ``ca.key``: a self-signed CA (ECDSA P-384) that hospitals trust
  (``--root-certificates ca.crt`` on their SuperNodes); the key never leaves
  the coordinator;
- ``server.pem`` / ``server.key``: the SuperLink's certificate, signed by the
  CA, valid for every host name and IP address hospitals will connect to
  (subject alternative names), for server authentication only.

Private keys are written owner-only (0600); nothing is overwritten.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tasks.errors import UserError

CA_DAYS, SERVER_DAYS = 3650, 825
FILES = ("ca.crt", "ca.key", "server.pem", "server.key")


def alternative_names(hosts: list[str]) -> list[x509.GeneralName]:
    """Each host as an IP address entry when it is one, else as a DNS name."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or any(c.isspace() for c in host):
                raise UserError(f"--host: '{host}' is neither a host name nor an IP "
                                "address") from None
            names.append(x509.DNSName(host))
    return names


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def create_authority(out: Path, hosts: list[str], name: str = "spinefl coordinator") -> dict:
    """Write the CA and the SuperLink certificate for ``hosts`` into ``out``; their paths."""
    if not hosts:
        raise UserError("--host: give at least one host name or IP address hospitals will use")
    existing = [f for f in FILES if (out / f).exists()]
    if existing:
        raise UserError(f"{out}: already holds {', '.join(existing)}; a new CA would make "
                        "every hospital's trust in the old one useless (remove them first)")
    san = alternative_names(hosts)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=CA_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA384()))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
              .issuer_name(ca_name).public_key(server_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5))
              .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
              .add_extension(x509.SubjectAlternativeName(san), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                             critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                  ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA384()))
    pem = serialization.Encoding.PEM
    (out / "ca.crt").write_bytes(ca.public_bytes(pem))
    _write_key(ca_key, out / "ca.key")
    (out / "server.pem").write_bytes(server.public_bytes(pem))
    _write_key(server_key, out / "server.key")
    return {f: out / f for f in FILES}
