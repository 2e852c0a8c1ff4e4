"""Prepared training data on disk, so that a process started for one round (a deployed
hospital node runs each Flower message in a new process) reads it instead of decoding and
resampling every image again.

One ``.npz`` file per manifest row and recipe, named by a SHA-256 of the recipe (what the
preparation depends on: the preprocessing settings, the label table, what the target is
made from, a version of the preparation code and of the packages it runs on), the row's
values and the size and
modification time of each file the row names. Any change to one of these gives another
name, so a stale entry is never read; ``prune`` removes entries unused for a month.
Arrays only (read with ``allow_pickle=False``), written atomically; the
folder is owner-only. Deleting it is always safe: it is made again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time
import zipfile
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from tasks.errors import UserError
from tasks.files import atomic, sweep_temporaries
from tasks.manifest import Manifest

# Bump when the preparation code changes what it produces for the same recipe and row.
PREPARATION_VERSION = 1
Arrays = dict[str, np.ndarray]
T = TypeVar("T")


@functools.cache
def _versions() -> dict[str, str]:
    """The versions of what preparation runs on (a new release prepares again)."""
    found = {}
    for name in ("spinefl", "monai", "torch", "nibabel", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:  # run from a checkout that was never installed
            found[name] = "unknown"
    return found


class PreparedCache:
    """Prepared items of manifest rows, on disk under ``folder`` (created owner-only)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.hits = self.misses = 0
        self.writable = True

    def key(self, manifest: Manifest, row: Mapping[str, Any], recipe: Mapping[str, Any]) -> str:
        """The entry's name: a hash of ``recipe``, the row and its files' size and mtime."""
        files = []
        for column in manifest.path_columns():
            if row.get(column):
                stat = manifest.path(row, column).stat()
                files.append([column, stat.st_size, stat.st_mtime_ns])
        material = {"version": PREPARATION_VERSION, "packages": _versions(),
                    "recipe": recipe, "files": files,
                    "row": {k: str(v) for k, v in row.items()}}
        return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()
                              ).hexdigest()

    def get_or_make(self, key: str, make: Callable[[], Arrays]) -> Arrays:
        """The arrays stored under ``key``, or ``make()``'s, stored for next time. A cache
        that cannot be written (full disk, read-only) is left alone: the arrays are still
        returned."""
        path = self.folder / f"{key}.npz"
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
            self.hits += 1
            os.utime(path)  # last use, for prune
            return arrays
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # absent, or unreadable: made again
        arrays = make()
        self.misses += 1
        if self.writable:
            try:
                self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.chmod(self.folder, 0o700)
                with atomic(path) as temporary, temporary.open("wb") as handle:
                    np.savez(handle, **arrays)
            except (OSError, UserError):  # UserError: atomic's full disk, quota, read-only
                self.writable = False
        return arrays

    def prune(self, unused_days: float = 30.0) -> int:
        """Remove entries not read or written for ``unused_days`` and what dead writers left;
        how many entries were removed."""
        if not self.folder.is_dir():
            return 0
        sweep_temporaries(self.folder)
        cutoff = time.time() - unused_days * 86400
        removed = 0
        for path in self.folder.glob("*.npz"):
            with contextlib.suppress(FileNotFoundError):  # another process pruned it
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed


def cached(cache: PreparedCache | None, manifest: Manifest, row: Mapping[str, Any],
           recipe: Mapping[str, Any], make: Callable[[], T], encode: Callable[[T], Arrays],
           decode: Callable[[Arrays], T]) -> T:
    """``make()`` for a manifest row, or, with a cache, what it holds for the row and
    ``recipe`` (``make``'s result stored there, as ``encode``'s arrays, when it holds none)."""
    if cache is None:
        return make()
    return decode(cache.get_or_make(cache.key(manifest, row, recipe), lambda: encode(make())))
