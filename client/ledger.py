"""The hospital's privacy ledger: every DP release it made, composed by the accountant.

One JSON file in the hospital's data folder (``privacy_ledger.json``) lists,
per run and round, what the hospital released: noise multiplier, sample rate
and steps (what the accountant composes), clipping norm, delta, the
accountant's epsilon for that run so far and over everything ever recorded,
and the accountant's state. It is rewritten atomically after each round, so
it survives restarts and crashes (a round is recorded before its weights are
sent: a crash in between over-counts, never under-counts).

The budget is the node's own (``max-epsilon``, ``delta`` in its node config):
a round whose release would take the total past ``max-epsilon`` is refused
before any training, whatever the run config asks. A ledger holding fewer
rounds than the audit log records (deleted, or replaced by an older copy)
refuses every DP round instead of starting again from zero.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from client.audit import AuditLog
from client.hospital import Budget
from client.privacy import Release, accountant_state, epsilon
from tasks.errors import UserError

LEDGER_FILE = "privacy_ledger.json"
LOCK_FILE = ".privacy_ledger.lock"


class PrivacyRefusal(Exception):
    """A DP round the node refuses before training (the message says why)."""


class BudgetExceeded(PrivacyRefusal):
    """A round would spend more privacy than the hospital allows (the message says how much)."""


class LedgerMissing(PrivacyRefusal):
    """The ledger holds fewer rounds than the audit log records: it was deleted or replaced."""


class PrivacyLedger:
    """Read, check against a budget, and append to a hospital's ledger."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LEDGER_FILE
        self.entries: list[dict[str, Any]] = []
        self._read()

    @classmethod
    @contextmanager
    def locked(cls, folder: Path) -> Iterator[PrivacyLedger]:
        """The ledger, held exclusively (an OS file lock) from check to record, so that two
        runs training at one node at once cannot both spend the same remaining budget."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / LOCK_FILE, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield cls(folder)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> None:
        if self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())["entries"]
            except (ValueError, KeyError, TypeError) as e:
                raise UserError(f"{self.path}: unreadable privacy ledger ({e}); it is the "
                                "hospital's record of privacy spent, restore it from backup"
                                ) from None

    def releases(self, run: str | None = None) -> list[Release]:
        """The recorded releases (of one run, or all)."""
        chosen = [e for e in self.entries if run is None or e["run"] == run]
        return [Release(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in chosen]

    def spent(self, delta: float, accountant: str, run: str | None = None) -> float:
        """Epsilon of everything recorded (or of one run) at ``delta``."""
        return epsilon(self.releases(run), delta, accountant)

    def check_against(self, log: AuditLog) -> None:
        """LedgerMissing when the audit log records more DP rounds than this ledger holds
        (a round is recorded here before its audit record, so never the other way round)."""
        audited = sum(1 for record in log.served("train") if "epsilon" in record)
        if audited > len(self.entries):
            state = "missing" if not self.path.is_file() else \
                f"holds {len(self.entries)} round(s)"
            raise LedgerMissing(
                f"privacy ledger {self.path} is {state} but the audit log records {audited} "
                "DP round(s): the ledger was deleted or replaced, so the privacy spent is "
                "unknown; DP rounds are refused until it is restored from backup")

    def check(self, planned: Release, budget: Budget, accountant: str) -> float:
        """Epsilon after ``planned``; raises BudgetExceeded when it would pass the budget."""
        after = epsilon([*self.releases(), planned], budget.delta, accountant)
        if budget.max_epsilon is not None and after > budget.max_epsilon:
            before = self.spent(budget.delta, accountant)
            raise BudgetExceeded(
                f"privacy budget: this round would take epsilon from {before:.3g} to "
                f"{after:.3g} at delta {budget.delta:g}, past this hospital's max-epsilon "
                f"{budget.max_epsilon:g}; round refused")
        return after

    def record(self, run: str, server_round: int, release: Release, max_grad_norm: float,
               delta: float, accountant: str) -> dict[str, Any]:
        """Append one round and rewrite the file atomically; returns the new entry."""
        entry = {"run": run, "round": server_round, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "noise_multiplier": release.noise_multiplier,
                 "sample_rate": release.sample_rate, "steps": release.steps,
                 "max_grad_norm": max_grad_norm, "delta": delta, "accountant": accountant}
        self.entries.append(entry)
        entry["epsilon_run"] = self.spent(delta, accountant, run)
        entry["epsilon_total"] = self.spent(delta, accountant)
        entry["accountant_state"] = accountant_state(self.releases(), accountant)
        self._write()
        return entry

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".ledger-")
        with os.fdopen(handle, "w") as stream:
            json.dump({"entries": self.entries}, stream, indent=1)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, self.path)
