"""The app bundles a hospital approved: the only runs its node takes part in.

A run reaches a SuperNode with its app bundle (a Flower FAB: a zip of the app's
files, built by ``flwr run`` from the coordinator's app folder). The node never
runs the bundle's code (``client.runtime_request`` runs the ClientApp installed at
the hospital), but it serves a run only when a person at the hospital approved
that exact bundle: its SHA-256 is in ``<data>/.spinefl/approvals.json`` with
the bundle's name and version, who approved it and when (``spinefl hospital
approve``). The same release gives the same hash: Flower builds a bundle with
fixed file order and timestamps, so a folder holding the release the
coordinator runs, or the ``.fab`` it sent, can be approved before any run.
"""

from __future__ import annotations

import getpass
import hashlib
import io
import json
import socket
import time
import tomllib
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.errors import UserError
from tasks.files import write_text

APPROVALS = Path(".spinefl") / "approvals.json"
# The node config key under which the launcher hands the served bundle's hash to the app.
BUNDLE_KEY = "bundle-sha256"


@dataclass(frozen=True)
class Approval:
    """One approved bundle: its hash, name and version, who approved it and when."""

    sha256: str
    name: str
    version: str
    approved_by: str
    approved_at: str
    source: str


def bundle_bytes(source: Path) -> bytes:
    """The bundle ``flwr run`` would send for an app folder, or the bytes of a ``.fab``."""
    if source.is_dir():
        if not (source / "pyproject.toml").is_file():
            raise UserError(f"{source}: not a Flower app folder (no pyproject.toml)")
        from flwr.cli.build import build_fab_from_disk

        try:
            return build_fab_from_disk(source)
        except Exception as e:  # Flower's build raises several kinds
            raise UserError(f"{source}: cannot build its app bundle: {e}") from None
    try:
        return source.read_bytes()
    except OSError as e:
        raise UserError(f"{source}: cannot read ({e.strerror or e})") from None


def bundle_identity(content: bytes, where: str) -> tuple[str, str]:
    """The name and version a bundle's ``pyproject.toml`` declares."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as bundle:
            project = tomllib.loads(bundle.read("pyproject.toml").decode())["project"]
        return str(project["name"]), str(project["version"])
    except (zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{where}: not a Flower app bundle ({e})") from None


def digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class Approvals:
    """A hospital's approved bundles (``<data>/.spinefl/approvals.json``)."""

    def __init__(self, data: Path) -> None:
        self.path = Path(data) / APPROVALS
        self.entries: list[Approval] = []
        if self.path.is_file():
            try:
                self.entries = [Approval(**entry) for entry in
                                json.loads(self.path.read_text())["approvals"]]
            except (ValueError, KeyError, TypeError) as e:
                raise UserError(f"{self.path}: unreadable approvals ({e})") from None

    def find(self, sha256: str) -> Approval | None:
        return next((a for a in self.entries if a.sha256 == sha256), None)

    def approve(self, source: Path, by: str | None = None) -> Approval:
        """Record the bundle of ``source`` (app folder or ``.fab``) as approved; returns its
        entry (the existing one when it was approved before)."""
        content = bundle_bytes(source)
        sha256 = digest(content)
        name, version = bundle_identity(content, str(source))
        if (known := self.find(sha256)) is not None:
            return known
        approval = Approval(sha256, name, version,
                            by or f"{getpass.getuser()}@{socket.gethostname()}",
                            time.strftime("%Y-%m-%dT%H:%M:%S%z"), str(source.resolve()))
        self.entries.append(approval)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.path, json.dumps({"approvals": [asdict(a) for a in self.entries]},
                                         indent=1) + "\n")
        return approval
