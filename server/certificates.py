"""The coordinator's TLS material: a certificate authority and the SuperLink's certificate.

``create_authority`` writes:

- ``ca.crt``: a self-signed CA (ECDSA P-384) that hospitals trust
  (``--root-certificates ca.crt`` on their SuperNodes);
- ``ca.key``: its private key, at a path of its own outside the coordinator
  folder (in an owner-only folder): it is needed only to issue a new server
  certificate, so it can go offline; nothing the SuperLink runs (a ServerApp)
  finds it in the folder it works in;
- ``server.pem`` / ``server.key``: the coordinator's certificate, signed by the
  CA, valid for every host name and IP address hospitals will connect to
  (subject alternative names) and for the loopback address the SuperLink itself
  listens on behind the proxy, for server authentication only.

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
FILES = ("ca.crt", "server.pem", "server.key")
# The names the loopback SuperLink is reached by, behind the proxy.
LOOPBACK = ["127.0.0.1", "localhost"]


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


def create_authority(out: Path, hosts: list[str], ca_key: Path,
                     name: str = "spinefl coordinator") -> dict:
    """Write the CA and the server certificate for ``hosts`` (and loopback) into ``out``,
    the CA's key to ``ca_key``; their paths."""
    if not hosts:
        raise UserError("--host: give at least one host name or IP address hospitals will use")
    existing = [str(out / f) for f in FILES if (out / f).exists()]
    existing += [str(ca_key)] if ca_key.exists() else []
    if existing:
        raise UserError(f"{existing[0]}: already exists; a new CA would make every "
                        "hospital's trust in the old one useless (remove it first)")
    if ca_key.resolve().is_relative_to(out.resolve()):
        raise UserError(f"--ca-key {ca_key}: must be outside the coordinator folder {out} "
                        "(where the SuperLink and its ServerApps work)")
    san = alternative_names(list(dict.fromkeys([*hosts, *LOOPBACK])))
    out.mkdir(parents=True, exist_ok=True)
    ca_key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.UTC)
    authority_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(authority_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=CA_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(authority_key.public_key()),
                         critical=False)
          .sign(authority_key, hashes.SHA384()))
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
                  authority_key.public_key()), critical=False)
              .sign(authority_key, hashes.SHA384()))
    pem = serialization.Encoding.PEM
    (out / "ca.crt").write_bytes(ca.public_bytes(pem))
    _write_key(authority_key, ca_key)
    (out / "server.pem").write_bytes(server.public_bytes(pem))
    _write_key(server_key, out / "server.key")
    return {**{f: out / f for f in FILES}, "ca.key": ca_key}
