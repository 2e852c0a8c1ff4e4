"""The hospital's audit log: every request it answered, append-only and hash-chained.

One JSON record per line in ``audit_log.jsonl`` in the hospital's data folder.
Each record says what arrived (run, round, message type, a hash of the
round's config, a hash of the global model) and what left (a hash of the
update, samples, epsilon) or why the node refused; it carries the hash of the
previous record and its own hash (SHA-256 over its canonical JSON), so any
edit, insertion, reordering or deletion inside the log breaks the chain and
``verify`` names the first broken line. Removing records at the end cannot be
seen from the log alone: compare ``records`` and the last hash with a copy
kept elsewhere (``spinefl hospital audit`` prints both).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

AUDIT_FILE = "audit_log.jsonl"
GENESIS = "0" * 64


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


def _hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class AuditLog:
    """Append to and verify a hospital's hash-chained audit log."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / AUDIT_FILE

    def append(self, event: dict[str, Any]) -> dict[str, Any]:
        """Add one record (under an exclusive lock), chained to the last; returns it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as stream:
            fcntl.flock(stream, fcntl.LOCK_EX)
            try:
                stream.seek(0)
                lines = [line for line in stream.read().splitlines() if line.strip()]
                previous = json.loads(lines[-1])["hash"] if lines else GENESIS
                record = {"seq": len(lines) + 1, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                          **event, "prev": previous}
                record["hash"] = _hash(record)
                stream.write(json.dumps(record, sort_keys=True) + "\n")
                stream.flush()
                os.fsync(stream.fileno())
            finally:
                fcntl.flock(stream, fcntl.LOCK_UN)
        return record

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
        """None when the chain holds; otherwise the first problem, naming its line."""
        try:
            records = self.records()
        except ValueError as e:
            return f"{self.path}: {e}"
        previous = GENESIS
        for number, record in enumerate(records, start=1):
            if record.get("seq") != number:
                return f"{self.path}: line {number}: sequence number {record.get('seq')} " \
                       f"(a record was removed, inserted or moved)"
            if record.get("prev") != previous:
                return f"{self.path}: line {number}: does not follow the previous record " \
                       "(a record before it was changed, removed or moved)"
            if record.get("hash") != _hash(record):
                return f"{self.path}: line {number}: its content does not match its hash " \
                       "(the record was edited)"
            previous = record["hash"]
        return None
