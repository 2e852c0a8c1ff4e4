"""Files written whole or not at all.

Everything spinefl writes for a person or a later run (images, masks, manifests,
checkpoints, tables, state files) is written to a temporary name beside its final
one and renamed over it once complete: an interruption, a full disk or a crash
leaves the previous file or none, never a truncated one under the final name. A
write that fails (disk full, permission, read-only file system) becomes one line
naming the path.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from tasks.errors import UserError

if TYPE_CHECKING:
    from pandas import DataFrame

# OSErrors that are the machine's state or the user's choice of folder, not a bug.
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
               errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}


def os_problem(path: Path | str, error: OSError) -> UserError:
    """A UserError naming ``path`` and what the system said, e.g. 'No space left on device'."""
    return UserError(f"{path}: cannot write ({error.strerror or error})")


def writable_folder(folder: Path) -> Path:
    """Create ``folder`` (and its parents) if needed; UserError when it is a file or
    cannot be created or written (a file in its place, or in a parent's)."""
    for place in (folder, *folder.parents):
        if place.exists():
            if not place.is_dir():
                raise UserError(f"{place}: exists and is not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_problem(folder, e) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{folder}: cannot write (permission denied)")
    return folder


def sweep_temporaries(folder: Path, name: str | None = None) -> int:
    """Remove the temporary files and folders that writers which have since died left under
    ``folder`` (a SIGKILL between writing and renaming), or only those of ``name`` directly
    in it; how many. Call with the folder (or ``name``) locked."""
    swept = 0
    for path in list(folder.glob(f".part-*-{name}") if name else folder.rglob(".part-*")):
        pid = path.name.split("-")[1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            if path.is_dir() and not path.is_symlink():  # a folder written whole (a bundle)
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            swept += 1
    return swept


def temporary_name(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: the same folder, a hidden
    name ending like ``path`` (so writers that read the format from the suffix still do)."""
    return path.with_name(f".part-{os.getpid()}-{path.name}")


@contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; once the block ends it is
    synced and renamed to ``path``; on any failure it is removed and ``path`` untouched."""
    temporary = temporary_name(path)
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        if e.errno in USER_ERRNOS:
            raise os_problem(path, e) from None
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def write_table(frame: DataFrame, path: Path) -> Path:
    """Write a table to ``path`` as CSV (no index) atomically."""
    with atomic(path) as temporary:
        frame.to_csv(temporary, index=False)
    return path
