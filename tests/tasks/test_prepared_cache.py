"""Prepared training data cached on disk: read back equal, never stale, never required."""

from __future__ import annotations

import os
import shutil
import stat
import time

import numpy as np
import pytest
import torch

from tasks.blocks.cache import PreparedCache
from tasks.manifest import Manifest
from tasks.registry import TASKS
from tests.helpers.task_defaults import default_task


@pytest.fixture
def cohort(request, tiny_cohort, tiny_xray):
    """The tiny cohort that has rows for the task under test (radiographs for Cobb)."""
    task = default_task(request.node.callspec.params["name"])
    return tiny_xray if len(task.select(tiny_xray)) else tiny_cohort


def first_batch(task, rows: Manifest, cache: PreparedCache | None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # grading's augmentation noise draws from torch's generator
    return next(iter(task.train_data(rows, batch_size=4, seed=0, cache=cache)))


def assert_same(batch: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert batch.keys() == expected.keys()
    for key in batch:
        assert batch[key].dtype == expected[key].dtype and torch.equal(batch[key], expected[key])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_reads_back_what_it_prepared(name, cohort, tmp_path):
    """The first pass prepares every row and stores it; a new cache on the same folder (a new
    process) reads every row back, and the batches are the uncached ones bit for bit."""
    task = default_task(name)
    rows = task.select(cohort.select(split="train"))
    expected = first_batch(task, rows, None)
    first = PreparedCache(tmp_path / "prepared")
    assert_same(first_batch(task, rows, first), expected)
    assert (first.misses, first.hits) == (len(rows), 0)
    assert stat.S_IMODE((tmp_path / "prepared").stat().st_mode) == 0o700
    again = PreparedCache(tmp_path / "prepared")
    assert_same(first_batch(task, rows, again), expected)
    assert (again.misses, again.hits) == (0, len(rows))


@pytest.fixture
def own_cohort(tiny_cohort, tmp_path) -> Manifest:
    """A copy of the tiny cohort's training rows that a test may change."""
    shutil.copytree(tiny_cohort.root, tmp_path / "cohort")
    return Manifest.load(tmp_path / "cohort" / "manifest.csv").select(split="train")


def test_a_hit_reads_no_image(own_cohort, tmp_path):
    """Every image overwritten with zeros, its size and time kept: the batch is still the
    original's, so nothing was decoded (the key is make's: size and time, not content)."""
    task = default_task("segmentation")
    rows = task.select(own_cohort)
    expected = first_batch(task, rows, PreparedCache(tmp_path / "prepared"))
    for row in rows.rows():  # same size and time, other bytes: only a hit gives the batch
        path = own_cohort.path(row)
        times = path.stat()
        path.write_bytes(b"\0" * times.st_size)
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    cache = PreparedCache(tmp_path / "prepared")
    assert_same(first_batch(task, rows, cache), expected)
    assert cache.misses == 0


def test_changes_to_settings_files_or_rows_miss(own_cohort, tmp_path):
    """A setting, a file's modification or a row's value each give a new entry; nothing
    else does."""
    task = default_task("segmentation")
    rows = task.select(own_cohort)
    folder = tmp_path / "prepared"
    first_batch(task, rows, PreparedCache(folder))

    def misses(task, rows) -> int:
        cache = PreparedCache(folder)
        first_batch(task, rows, cache)
        assert cache.hits + cache.misses == len(rows)
        return cache.misses

    assert misses(task, rows) == 0
    mask = rows.path(rows.rows()[0], "mask")
    os.utime(mask, ns=(time.time_ns(), mask.stat().st_mtime_ns + 10**9))
    assert misses(task, rows) == 1
    changed = Manifest(rows.table.copy(), rows.root)
    changed.table.loc[1, "site"] = "elsewhere"
    assert misses(task, changed) == 1
    coarser = type(task)({**task.settings, "spacing": [4.0, 4.0, 4.0]})
    assert misses(coarser, rows) == len(rows)
    wider = type(task)({**task.settings, "channels": [8, 16, 32, 64]})  # not preprocessing
    assert misses(wider, rows) == 0


def test_a_broken_entry_is_made_again_and_an_unwritable_cache_is_skipped(own_cohort, tmp_path):
    task = default_task("segmentation")
    rows = task.select(own_cohort)
    expected = first_batch(task, rows, None)
    folder = tmp_path / "prepared"
    first_batch(task, rows, PreparedCache(folder))
    broken = sorted(folder.glob("*.npz"))[0]
    broken.write_bytes(broken.read_bytes()[:100])  # a truncated copy, as a full disk leaves
    cache = PreparedCache(folder)
    assert_same(first_batch(task, rows, cache), expected)
    assert cache.misses == 1 and len(broken.read_bytes()) > 100

    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would be")
    cache = PreparedCache(blocked / "prepared")
    assert_same(first_batch(task, rows, cache), expected)
    assert not cache.writable and blocked.read_text().startswith("a file")


def test_prune_removes_what_nobody_used_for_a_month_and_dead_writers_leftovers(tmp_path):
    cache = PreparedCache(tmp_path)
    fresh = cache.get_or_make("fresh", lambda: {"a": np.zeros(2)})
    cache.get_or_make("old", lambda: {"a": np.ones(2)})
    month = time.time() - 31 * 86400
    os.utime(tmp_path / "old.npz", (month, month))
    (tmp_path / ".part-999999999-x.npz").write_bytes(b"half")
    assert cache.prune() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.npz"]
    assert np.array_equal(cache.get_or_make("fresh", lambda: {"a": np.ones(2)})["a"],
                          fresh["a"])
