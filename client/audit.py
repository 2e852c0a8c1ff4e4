"""The hospital's audit log: every request it answered, append-only and chained by a keyed MAC.

One JSON record per line in ``audit_log.jsonl`` in the hospital's data folder.
Each record says what arrived (run, round, message type, a hash of the
round's config, a hash of the global model, the SHA-256 of the app bundle the
run was submitted with), what left (a hash of the update, samples, epsilon)
or why the node refused, and which spinefl served it. It carries the MAC of
the previous record and its own: HMAC-SHA256 over its canonical JSON under the
node's audit key (``.spinefl/audit.key``, 32 random bytes, owner-only, made
with the first record). Any edit, insertion, reordering or deletion inside the
log, even one whose attacker recomputes every hash, breaks the chain unless
the attacker can read the key; ``verify`` names the first broken line.

What this holds against whom: someone who can write the log but not read the
key (another account, a backup or storage operator, the coordinator) cannot
change or remove records unseen. The node's own OS account and root can read
the key and so can rewrite everything; truncating records at the end is seen
only against a copy of ``records`` and the last MAC kept elsewhere (``spinefl
hospital audit`` prints both).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

AUDIT_FILE = "audit_log.jsonl"
KEY_FILE = Path(".spinefl") / "audit.key"
GENESIS = "0" * 64


class AuditBroken(Exception):
    """The audit log cannot be extended: its key or the log itself is missing or broken."""


def digest_arrays(arrays: Mapping[str, Any]) -> str:
    """SHA-256 over a model's weights (names, shapes, dtypes and bytes, in key order)."""
    hasher = hashlib.sha256()
    for key in arrays:
        value = np.ascontiguousarray(np.asarray(arrays[key]))
        hasher.update(f"{key}|{value.dtype}|{value.shape}|".encode())
        hasher.update(value.tobytes())
    return hasher.hexdigest()


def digest_config(config: Mapping[str, Any]) -> str:
    """SHA-256 over a config's canonical JSON."""
    return hashlib.sha256(json.dumps(dict(config), sort_keys=True, default=str)
                          .encode()).hexdigest()


def mac(key: bytes, record: Mapping[str, Any]) -> str:
    """HMAC-SHA256 of a record's canonical JSON (its own ``mac`` left out)."""
    body = {k: v for k, v in record.items() if k != "mac"}
    return hmac.new(key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()


class AuditLog:
    """Append to and verify a hospital's MAC-chained audit log."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / AUDIT_FILE
        self.key_path = self.folder / KEY_FILE

    def _key(self, create: bool) -> bytes:
        """The audit key; made (owner-only) when ``create`` and there is none yet."""
        if create and not self.key_path.exists():  # called under the log's lock
            self.key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            descriptor = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(os.urandom(32))
                stream.flush()
                os.fsync(stream.fileno())
        try:
            key = self.key_path.read_bytes()
        except OSError as e:
            raise AuditBroken(f"{self.key_path}: audit key unreadable ({e.strerror or e})"
                              ) from None
        if len(key) != 32:
            raise AuditBroken(f"{self.key_path}: not an audit key (32 bytes expected)")
        return key

    def append(self, event: dict[str, Any]) -> dict[str, Any]:
        """Add one record (under an exclusive lock), chained to the last; returns it.
        AuditBroken when the log cannot be extended honestly (its key is gone, or the log
        is while the key is there)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as stream:
            fcntl.flock(stream, fcntl.LOCK_EX)
            try:
                stream.seek(0)
                lines = [line for line in stream.read().splitlines() if line.strip()]
                if not lines and self.key_path.exists():
                    raise AuditBroken(self._deleted())
                key = self._key(create=not lines)
                previous = json.loads(lines[-1]).get("mac", "") if lines else GENESIS
                record = {"seq": len(lines) + 1, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                          **event, "prev": previous}
                record["mac"] = mac(key, record)
                stream.write(json.dumps(record, sort_keys=True) + "\n")
                stream.flush()
                os.fsync(stream.fileno())
            finally:
                fcntl.flock(stream, fcntl.LOCK_UN)
        return record

    def _deleted(self) -> str:
        return (f"{self.path}: missing or empty while its key {self.key_path} exists (made "
                "with the first record): the log was deleted or truncated; restore it from "
                "backup")

    def records(self) -> list[dict[str, Any]]:
        """Every record, in order (unparseable lines raise ValueError naming the line)."""
        if not self.path.is_file():
            return []
        records = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                raise ValueError(f"line {number} is not a JSON record") from None
        return records

    def verify(self) -> str | None:
        """None when the chain holds under the node's key; otherwise the first problem,
        naming its line."""
        try:
            records = self.records()
        except ValueError as e:
            return f"{self.path}: {e}"
        if not records:
            return self._deleted() if self.key_path.exists() else None
        try:
            key = self._key(create=False)
        except AuditBroken as e:
            return str(e)
        previous = GENESIS
        for number, record in enumerate(records, start=1):
            if record.get("seq") != number:
                return f"{self.path}: line {number}: sequence number {record.get('seq')} " \
                       f"(a record was removed, inserted or moved)"
            if record.get("prev") != previous:
                return f"{self.path}: line {number}: does not follow the previous record " \
                       "(a record before it was changed, removed or moved)"
            if not hmac.compare_digest(str(record.get("mac", "")), mac(key, record)):
                return f"{self.path}: line {number}: its MAC does not match (the record " \
                       "was edited, or written without this node's audit key)"
            previous = record["mac"]
        return None

    def served(self, kind: str) -> list[dict[str, Any]]:
        """The records of requests of ``kind`` (``train``, ``evaluate``; whatever handler
        name follows the dot: ``evaluate.default`` is an evaluation) this node answered."""
        return [r for r in self.records() if message_kind(str(r.get("type", ""))) == kind
                and "refused" not in r]

    def evaluations(self) -> int:
        """How many validations this node released: each record's ``validations`` (the
        global model's, in an evaluate request or first in a train request, and a personal
        model's); records written before that count, one per evaluate request and per
        ``validated`` train request."""
        return sum(int(r.get("validations", 1)) for r in self.served("evaluate")) + sum(
            int(r.get("validations", 1 if r.get("validated") else 0))
            for r in self.served("train"))


def message_kind(message_type: str) -> str:
    """``train``, ``evaluate`` or ``query`` of a Flower message type (``evaluate.default``
    reaches the same handler as ``evaluate``)."""
    return message_type.split(".", 1)[0]
