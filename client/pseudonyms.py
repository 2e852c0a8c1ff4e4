"""The hospital's pseudonym key: stable, secret, one-way identifiers.

Every identifier that leaves the PACS export (patient ID, study and series
UIDs, DICOM UIDs, per-patient date offsets) is derived from it with
HMAC-SHA256. The same input gives the same pseudonym on every run; without
the key nobody can link a pseudonym back, or test a guessed patient ID
against it. The key is 32 random bytes, created once, in a file only its
owner can read; it never leaves the hospital.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes, hmac

from tasks.errors import UserError

KEY_BYTES = 32
# Dates are shifted back by 1 to this many days, fixed per patient.
MAX_DATE_SHIFT_DAYS = 3650


class PseudonymKeyError(UserError):
    """The key file is missing, unreadable or readable by others."""


class PseudonymKey:
    """HMAC-SHA256 pseudonyms under one hospital's secret key."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError(f"a pseudonym key is {KEY_BYTES} bytes, got {len(secret)}")
        self._secret = secret

    @classmethod
    def load_or_create(cls, path: Path, create: bool, hint: str = "") -> PseudonymKey:
        """The key in ``path``; when there is none, created there (owner read/write only) if
        ``create``, else PseudonymKeyError (with ``hint``): creating a key is always asked
        for, since a mistyped path would give every patient new pseudonyms."""
        path = Path(path)
        if not path.exists():
            if not create:
                raise PseudonymKeyError(f"{path}: no pseudonym key there{hint}")
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(secrets.token_bytes(KEY_BYTES))
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise PseudonymKeyError(f"{path}: pseudonym key is readable by others (mode {mode:o}); "
                            f"run: chmod 600 {path}")
        secret = path.read_bytes()
        if len(secret) != KEY_BYTES:
            raise PseudonymKeyError(f"{path}: not a pseudonym key ({len(secret)} bytes, expected "
                            f"{KEY_BYTES})")
        return cls(secret)

    def digest(self, kind: str, value: str) -> bytes:
        """HMAC-SHA256 of ``kind:value`` (the kind keeps namespaces apart)."""
        mac = hmac.HMAC(self._secret, hashes.SHA256())
        mac.update(f"{kind}:{value}".encode())
        return mac.finalize()

    def pseudonym(self, kind: str, value: str, prefix: str) -> str:
        """A readable pseudonym: ``prefix`` + 16 hex digits (64 bits) of the keyed hash."""
        return prefix + self.digest(kind, value).hex()[:16]

    def uid(self, value: str) -> str:
        """A DICOM UID for ``value``: '2.25.' + a 128-bit integer (PS3.5 B.2), same every run."""
        return "2.25." + str(int.from_bytes(self.digest("uid", value)[:16], "big"))

    def date_shift_days(self, patient: str) -> int:
        """Days (1 .. MAX_DATE_SHIFT_DAYS) this patient's dates move back; same every run."""
        return 1 + int.from_bytes(self.digest("date", patient)[:4], "big") % MAX_DATE_SHIFT_DAYS
